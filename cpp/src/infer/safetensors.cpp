#include "safetensors.h"

#include <algorithm>
#include <tuple>

#include "deepid2/model.h"
#include "json.h"
#include "sha256.h"

namespace deepid2 {
namespace safetensors {

namespace {

[[noreturn]] void bad(const std::string& what) { throw ModelFormatError("safetensors: " + what); }

// A JSON integer in [0, limit], else an error naming the field.
uint64_t non_negative(const json::Value& v, uint64_t limit, const std::string& what) {
    if (v.type != json::Value::Type::Number || !v.is_integer || v.integer < 0 ||
        uint64_t(v.integer) > limit)
        bad(what + " must be an integer in 0.." + std::to_string(limit));
    return uint64_t(v.integer);
}

Tensor read_entry(const std::string& name, const json::Value& e, uint64_t data_size) {
    if (e.type != json::Value::Type::Object) bad("entry \"" + name + "\" is not an object");
    const json::Value *dt = e.find("dtype"), *sh = e.find("shape"), *off = e.find("data_offsets");
    if (!dt || !sh || !off || e.object.size() != 3)
        bad("entry \"" + name + "\" must have exactly dtype, shape and data_offsets");
    Tensor t;
    if (dt->type != json::Value::Type::String || !dtype_size(dt->string))
        bad("entry \"" + name + "\" has an unknown dtype");
    t.dtype = dt->string;
    if (sh->type != json::Value::Type::Array || sh->array.size() > 8)
        bad("entry \"" + name + "\": shape must be an array of at most 8 dimensions");
    // The element count may not exceed what the data section could hold,
    // which also keeps the product far from overflowing.
    const uint64_t max_count = data_size / uint64_t(dtype_size(t.dtype));
    uint64_t count = 1;
    for (const auto& d : sh->array) {
        const uint64_t dim = non_negative(d, uint64_t(1) << 40, "a dimension of \"" + name + "\"");
        t.shape.push_back(int64_t(dim));
        if (dim == 0) count = 0;
        else if (count > max_count / dim) bad("\"" + name + "\" is larger than the data section");
        else count *= dim;
    }
    if (off->type != json::Value::Type::Array || off->array.size() != 2)
        bad("entry \"" + name + "\": data_offsets must be [begin, end]");
    t.begin = non_negative(off->array[0], data_size, "begin offset of \"" + name + "\"");
    t.end = non_negative(off->array[1], data_size, "end offset of \"" + name + "\"");
    if (t.end < t.begin || t.end - t.begin != count * uint64_t(dtype_size(t.dtype)))
        bad("\"" + name + "\": data_offsets do not match dtype x shape");
    return t;
}

bool is_hex64(const std::string& s) {
    if (s.size() != 64) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
    return true;
}

// The "sha256" metadata against the data section's bytes (a file without
// one is accepted: written before checksums; see File::checksum).
void check_sum(File& f) {
    auto it = f.metadata.find(kChecksumKey);
    if (it == f.metadata.end()) return;
    std::string stored = it->second;
    if (!is_hex64(stored))
        bad(std::string("metadata ") + kChecksumKey + " is not a hex SHA-256 (64 hex digits): \"" +
            stored.substr(0, 80) + "\"");
    for (char& c : stored)
        if (c >= 'A' && c <= 'F') c = char(c - 'A' + 'a');
#ifdef DEEPID2_FUZZ_SKIP_CHECKSUM
    // fuzz builds only: a mutated weight reaches the parser and the forward behind it
    return;
#endif
    const std::string computed = sha256_hex(f.data, size_t(f.data_size));
    if (computed != stored)
        bad(std::string("tensor data damaged (") + kChecksumKey + " mismatch: stored " +
            stored.substr(0, 16) + "..., computed " + computed.substr(0, 16) + "...)");
    f.checksum = File::Checksum::Verified;
}

}  // namespace

int64_t Tensor::count() const {
    int64_t c = 1;
    for (int64_t d : shape) c *= d;  // bounded by parse()
    return c;
}

int dtype_size(const std::string& dtype) {
    if (dtype == "F64" || dtype == "I64") return 8;
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F16" || dtype == "BF16") return 2;
    if (dtype == "U8" || dtype == "I8") return 1;
    return 0;
}

File parse(const uint8_t* bytes, uint64_t size) {
    if (!bytes || size < 8) bad("file too short for the 8-byte header length");
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | bytes[k];  // little-endian
    if (n > kMaxHeaderBytes)
        bad("header length " + std::to_string(n) + " exceeds the cap of " +
            std::to_string(kMaxHeaderBytes) + " bytes");
    if (n > size - 8)
        bad("header length " + std::to_string(n) + " does not fit the file (" +
            std::to_string(size) + " bytes): truncated?");
    json::Value header;
    try {
        header = json::parse(reinterpret_cast<const char*>(bytes + 8), n);
    } catch (const json::JsonError& e) {
        bad(std::string("corrupt header: ") + e.what());
    }
    if (header.type != json::Value::Type::Object) bad("header is not a JSON object");
    File f;
    f.data = bytes + 8 + n;
    f.data_size = size - 8 - n;
    std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;
    for (const auto& kv : header.object) {
        if (kv.first == "__metadata__") {
            if (kv.second.type != json::Value::Type::Object) bad("__metadata__ is not an object");
            for (const auto& m : kv.second.object) {
                if (m.second.type != json::Value::Type::String)
                    bad("metadata \"" + m.first + "\" is not a string");
                f.metadata[m.first] = m.second.string;
            }
            continue;
        }
        Tensor t = read_entry(kv.first, kv.second, f.data_size);
        spans.emplace_back(t.begin, t.end, kv.first);
        f.tensors.emplace(kv.first, std::move(t));
    }
    std::sort(spans.begin(), spans.end());
    uint64_t covered = 0;  // the data section must be tiled exactly, in order
    for (const auto& s : spans) {
        if (std::get<0>(s) < covered) bad("tensor \"" + std::get<2>(s) + "\" overlaps another");
        if (std::get<0>(s) > covered)
            bad("gap in the data section before tensor \"" + std::get<2>(s) + "\"");
        covered = std::get<1>(s);
    }
    if (covered != f.data_size)
        bad(std::to_string(f.data_size - covered) + " bytes after the last tensor");
    check_sum(f);
    return f;
}

}  // namespace safetensors
}  // namespace deepid2
