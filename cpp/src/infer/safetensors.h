// Validating reader of the safetensors container (the layout is in
// docs/verifier_model.md). Works on bytes already in memory; every length,
// offset and shape is checked before anything is read, so a truncated or
// hostile file throws ModelFormatError and never reads out of bounds.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace deepid2 {
namespace safetensors {

// Headers larger than this are refused (a verifier's header is a few KB).
constexpr uint64_t kMaxHeaderBytes = 16u << 20;
// Metadata key of the data section's checksum: lower-case hex SHA-256 of
// every byte after the header (deepid2_core/safetensors.py writes it).
constexpr const char* kChecksumKey = "sha256";

struct Tensor {
    std::string dtype;           // "F32", "F64", "I32", "I64", "U8", "I8", "F16", "BF16"
    std::vector<int64_t> shape;  // every dimension >= 0
    uint64_t begin = 0, end = 0; // byte offsets into the data section
    int64_t count() const;       // number of elements (shape product)
};

struct File {
    std::map<std::string, Tensor> tensors;
    std::map<std::string, std::string> metadata;  // "__metadata__", strings only
    const uint8_t* data = nullptr;  // data section (points into the caller's bytes)
    uint64_t data_size = 0;
    // Verified: "sha256" matched the data section. Absent: an older file
    // without one, accepted unchecked (this library has no warning channel;
    // metadata("sha256") is "" for such a file).
    enum class Checksum { Absent, Verified } checksum = Checksum::Absent;
};

// Checks: header length fits the file and the cap; the header is one JSON
// object; each entry has exactly dtype / shape / data_offsets of the right
// types; the byte span matches dtype x shape; spans do not overlap and cover
// the data section exactly (no gaps, no trailing bytes); a "sha256" in the
// metadata is 64 hex digits and equals the SHA-256 of the data section
// ("tensor data damaged (sha256 mismatch: ...)" otherwise).
File parse(const uint8_t* bytes, uint64_t size);

int dtype_size(const std::string& dtype);  // 0 when unknown

}  // namespace safetensors
}  // namespace deepid2
