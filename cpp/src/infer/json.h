// A small strict JSON reader for safetensors headers and their metadata.
// Input may be hostile: depth, length and numbers are bounded, every error
// throws JsonError naming what was wrong and where (byte offset).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace deepid2 {
namespace json {

struct JsonError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Value {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    // Numbers: the double value, and whether the text was a plain integer
    // (no fraction/exponent) that fits int64 exactly (then `integer` holds it).
    double number = 0;
    bool is_integer = false;
    int64_t integer = 0;
    std::string string;
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;  // keys unique, in file order

    const Value* find(const std::string& key) const;  // object member or nullptr
};

// Parses one JSON document (surrounding whitespace allowed, nothing else).
// Duplicate object keys are rejected: two readers could pick different ones.
Value parse(const char* text, size_t size, int max_depth = 32);
inline Value parse(const std::string& s) { return parse(s.data(), s.size()); }

const char* type_name(Value::Type t);

}  // namespace json
}  // namespace deepid2
