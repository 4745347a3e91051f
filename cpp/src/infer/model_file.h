// Reading a model file's bytes, for every reader (verifier, landmarks,
// detector): ModelIOError when it cannot be read, ModelFormatError naming
// the file when it is larger than `max_bytes` or when `parse` refuses it.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "deepid2/model.h"

namespace deepid2 {

template <class Parse>
auto load_model_file(const std::string& path, uint64_t max_bytes, const char* what, Parse&& parse)
    -> decltype(parse(static_cast<const uint8_t*>(nullptr), size_t(0))) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw ModelIOError("cannot open " + path);
    const std::streamoff end = in.tellg();
    if (end < 0) throw ModelIOError("cannot read the size of " + path);
    if (uint64_t(end) > max_bytes)
        throw ModelFormatError(path + ": " + std::to_string(end) + " bytes, more than " + what +
                               " may have (" + std::to_string(max_bytes) + ")");
    std::vector<uint8_t> bytes(static_cast<size_t>(end));
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(bytes.data()), end)) throw ModelIOError("cannot read " + path);
    try {
        return parse(bytes.data(), bytes.size());
    } catch (const ModelFormatError& e) {
        throw ModelFormatError(path + ": " + e.what());
    }
}

}  // namespace deepid2
