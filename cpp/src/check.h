// Argument checks shared by the ops: every op validates before it touches
// memory and throws std::invalid_argument with the op and argument named.
#pragma once
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

namespace deepid2 {
namespace detail {

inline void require_positive(const char* op,
                             std::initializer_list<std::pair<const char*, long long>> dims) {
    for (const auto& d : dims)
        if (d.second <= 0)
            throw std::invalid_argument(std::string(op) + ": " + d.first +
                                        " must be positive, got " + std::to_string(d.second));
}

inline void require_pointer(const char* op, const void* p, const char* name) {
    if (!p) throw std::invalid_argument(std::string(op) + ": " + name + " is null");
}

}  // namespace detail
}  // namespace deepid2
