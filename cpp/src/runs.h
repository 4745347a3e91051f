// Short runs of floats (1 to about 50 in DeepID2: im2col rows, pooling
// rows, the forward's epilogue), with AVX-512 masks for the tail. GCC turns a
// plain copy loop, even one of vector loads and stores, into a call to
// memcpy, which costs more than the copy itself at these lengths, and leaves
// the epilogue's loop scalar.
#pragma once
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace deepid2 {

inline void copy_floats(const float* __restrict src, int n, float* __restrict dst) {
#if defined(__AVX512F__)
    if (n <= 2) {  // locally connected layers: runs of one column; masked moves cost more
        if (n > 0) dst[0] = src[0];
        if (n > 1) dst[1] = src[1];
        return;
    }
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
#else
    for (int i = 0; i < n; ++i) dst[i] = src[i];
#endif
}

// dst = src + bias, then ReLU when relu.
inline void add_bias_act(const float* __restrict src, int n, float bias, bool relu,
                         float* __restrict dst) {
#if defined(__AVX512F__)
    const __m512 b = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + i), b);
        if (relu) v = v < zero ? zero : v;  // as std::max(v, 0.0f): NaN and -0 kept
        _mm512_mask_storeu_ps(dst + i, m, v);
    }
#else
    for (int i = 0; i < n; ++i) {
        const float v = src[i] + bias;
        dst[i] = relu ? std::max(v, 0.0f) : v;
    }
#endif
}

}  // namespace deepid2
