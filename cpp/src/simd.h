// One SIMD register of floats, written with GCC/Clang vector extensions so
// one source gives AVX-512, AVX2 or SSE for -march (gemm.cpp, face/yunet_ops.cpp).
#pragma once
#include <cstring>

namespace deepid2 {
namespace simd {

#if defined(__AVX512F__)
constexpr int VW = 16;
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
typedef float vf __attribute__((vector_size(VW * sizeof(float))));

// unaligned: memcpy compiles to one vector move
inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(vf));
    return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

}  // namespace simd
}  // namespace deepid2
