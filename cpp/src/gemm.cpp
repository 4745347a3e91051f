// Packed SGEMM after the BLIS loop order: pack a KC x NC block of B into
// NR-wide panels, an MC x KC block of A into MR-tall panels, then run an
// MR x NR register-tile micro-kernel written with GCC/Clang vector
// extensions, so one source gives AVX-512, AVX2 or SSE code for -march.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepid2 {
namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;
constexpr int MR = 8;
#elif defined(__AVX__)
constexpr int VW = 8;
constexpr int MR = 6;
#else
constexpr int VW = 4;
constexpr int MR = 4;
#endif
constexpr int NR = 2 * VW;
constexpr int KC = 256;
constexpr int MC = MR * 16;
constexpr int NC = 1024;

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(vf));
    return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }

// ap: kc x MR (panel), bp: kc x NR (panel). Writes an mr x nr corner of C.
void micro_kernel(int kc, const float* __restrict ap, const float* __restrict bp,
                  float* __restrict c, int64_t c_rs, int mr, int nr, bool accumulate) {
    vf acc0[MR], acc1[MR];
    for (int i = 0; i < MR; ++i) {
        acc0[i] = vf{};
        acc1[i] = vf{};
    }
    for (int p = 0; p < kc; ++p) {
        const vf b0 = load(bp + p * NR);
        const vf b1 = load(bp + p * NR + VW);
        const float* a = ap + p * MR;
        for (int i = 0; i < MR; ++i) {
            acc0[i] += a[i] * b0;
            acc1[i] += a[i] * b1;
        }
    }
    if (mr == MR && nr == NR) {
        for (int i = 0; i < MR; ++i) {
            float* ci = c + i * c_rs;
            if (accumulate) {
                store(ci, load(ci) + acc0[i]);
                store(ci + VW, load(ci + VW) + acc1[i]);
            } else {
                store(ci, acc0[i]);
                store(ci + VW, acc1[i]);
            }
        }
        return;
    }
    alignas(64) float tile[MR * NR];
    for (int i = 0; i < MR; ++i) {
        store(tile + i * NR, acc0[i]);
        store(tile + i * NR + VW, acc1[i]);
    }
    for (int i = 0; i < mr; ++i) {
        float* ci = c + i * c_rs;
        const float* ti = tile + i * NR;
        if (accumulate)
            for (int j = 0; j < nr; ++j) ci[j] += ti[j];
        else
            for (int j = 0; j < nr; ++j) ci[j] = ti[j];
    }
}

void pack_a(int mc, int kc, const float* a, int64_t rs, int64_t cs, float* out) {
    for (int i0 = 0; i0 < mc; i0 += MR) {
        const int mr = std::min(MR, mc - i0);
        for (int p = 0; p < kc; ++p) {
            float* o = out + p * MR;
            int i = 0;
            for (; i < mr; ++i) o[i] = a[(i0 + i) * rs + p * cs];
            for (; i < MR; ++i) o[i] = 0.0f;
        }
        out += kc * MR;
    }
}

void pack_b(int kc, int nc, const float* b, int64_t rs, int64_t cs, float* out) {
    for (int j0 = 0; j0 < nc; j0 += NR) {
        const int nr = std::min(NR, nc - j0);
        for (int p = 0; p < kc; ++p) {
            float* o = out + p * NR;
            const float* bp = b + p * rs + j0 * cs;
            int j = 0;
            if (cs == 1)
                for (; j < nr; ++j) o[j] = bp[j];
            else
                for (; j < nr; ++j) o[j] = bp[j * cs];
            for (; j < NR; ++j) o[j] = 0.0f;
        }
        out += kc * NR;
    }
}

float* scratch(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

}  // namespace

void sgemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs,
           const float* b, int64_t b_rs, int64_t b_cs, bool accumulate,
           float* c, int64_t c_rs) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate)
            for (int i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.0f);
        return;
    }
    static thread_local std::vector<float> abuf, bbuf;
    float* ap = scratch(abuf, size_t(MC) * KC);
    float* bp = scratch(bbuf, size_t(KC) * ((NC + NR - 1) / NR * NR));
    for (int jc = 0; jc < n; jc += NC) {
        const int nc = std::min(NC, n - jc);
        for (int pc = 0; pc < k; pc += KC) {
            const int kc = std::min(KC, k - pc);
            const bool acc = accumulate || pc > 0;
            pack_b(kc, nc, b + pc * b_rs + jc * b_cs, b_rs, b_cs, bp);
            for (int ic = 0; ic < m; ic += MC) {
                const int mc = std::min(MC, m - ic);
                pack_a(mc, kc, a + ic * a_rs + pc * a_cs, a_rs, a_cs, ap);
                for (int jr = 0; jr < nc; jr += NR) {
                    const int nr = std::min(NR, nc - jr);
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int mr = std::min(MR, mc - ir);
                        micro_kernel(kc, ap + ir * kc, bp + jr * kc,
                                     c + (ic + ir) * c_rs + jc + jr, c_rs, mr, nr, acc);
                    }
                }
            }
        }
    }
}

void sgemm_parallel(int m, int n, int k, const float* a, int64_t a_rs,
                    int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs,
                    bool accumulate, float* c, int64_t c_rs) {
    // Tiles of MC rows x 4*NR columns at least; more tiles than threads so
    // dynamic scheduling balances. Tile bounds do not change any element's
    // arithmetic, so the result is the same for any thread count.
    const int tm = MC, tn = std::max(4 * NR, (n + 7) / 8 / NR * NR);
    const int gm = (m + tm - 1) / tm, gn = (n + tn - 1) / tn;
#pragma omp parallel for schedule(dynamic) if (gm * gn > 1)
    for (int t = 0; t < gm * gn; ++t) {
        const int i0 = (t / gn) * tm, j0 = (t % gn) * tn;
        sgemm(std::min(tm, m - i0), std::min(tn, n - j0), k, a + i0 * a_rs, a_rs, a_cs,
              b + j0 * b_cs, b_rs, b_cs, accumulate, c + i0 * c_rs + j0, c_rs);
    }
}

}  // namespace deepid2
