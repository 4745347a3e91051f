// SHA-256 (FIPS 180-4), standard library only: the checksum a safetensors
// file carries in its metadata as "sha256" (docs/verifier_model.md).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace deepid2 {

class Sha256 {
public:
    Sha256();
    void update(const uint8_t* data, size_t size);
    std::array<uint8_t, 32> digest();  // finishes; the object is spent afterwards
    std::string hex_digest();          // lower-case, 64 characters

private:
    void block(const uint8_t* p);
    std::array<uint32_t, 8> h_;
    std::array<uint8_t, 64> buf_{};
    size_t used_ = 0;     // bytes in buf_
    uint64_t total_ = 0;  // bytes hashed so far
};

// Lower-case hex SHA-256 of size bytes.
std::string sha256_hex(const uint8_t* data, size_t size);

}  // namespace deepid2
