// Packed SGEMM after BLIS: B is packed into NR-wide panels and A into
// MR-tall panels, KC x NC and MC x KC blocks at a time so they stay in cache,
// then an MR x NR register-tile micro-kernel written with GCC/Clang vector
// extensions sweeps them: one source gives AVX-512, AVX2 or SSE for -march.
#include "gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepid2 {
namespace {

using simd::VW;
using simd::vf;
using simd::load;
using simd::store;

#if defined(__AVX512F__)
constexpr int MR = 10;  // 20 of 32 zmm registers hold the C tile
#elif defined(__AVX__)
constexpr int MR = 6;
#else
constexpr int MR = 4;
#endif
constexpr int NR = 2 * VW;
constexpr int KC = 256;
constexpr int MC = MR * 12;
constexpr int NC = 512;

// ap: kc x MR (panel); bp: kc rows of NR floats, b_rs apart. Writes an
// mr x nr corner of C.
void micro_kernel(int kc, const float* __restrict ap, const float* __restrict bp, int64_t b_rs,
                  float* __restrict c, int64_t c_rs, int mr, int nr, bool accumulate) {
    vf acc0[MR], acc1[MR];
    for (int i = 0; i < MR; ++i) {
        acc0[i] = vf{};
        acc1[i] = vf{};
    }
    for (int p = 0; p < kc; ++p) {
        const vf b0 = load(bp + p * b_rs);
        const vf b1 = load(bp + p * b_rs + VW);
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

float* scratch(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

}  // namespace

int gemm_mr() { return MR; }
int gemm_nr() { return NR; }

// The packers walk the source along whichever of its strides is 1: walking
// across rows of a large power-of-two stride would map every read to the
// same cache set.
void pack_a(int m, int k, const float* a, int64_t rs, int64_t cs, float* out) {
    for (int i0 = 0; i0 < m; i0 += MR) {
        const int mr = std::min(MR, m - i0);
        if (cs == 1 && rs != 1) {
            for (int i = 0; i < mr; ++i) {
                const float* ai = a + (i0 + i) * rs;
                for (int p = 0; p < k; ++p) out[p * MR + i] = ai[p];
            }
            for (int i = mr; i < MR; ++i)
                for (int p = 0; p < k; ++p) out[p * MR + i] = 0.0f;
        } else {
            for (int p = 0; p < k; ++p) {
                float* o = out + p * MR;
                const float* ap = a + i0 * rs + p * cs;
                int i = 0;
                for (; i < mr; ++i) o[i] = ap[i * rs];
                for (; i < MR; ++i) o[i] = 0.0f;
            }
        }
        out += int64_t(k) * MR;
    }
}

namespace {

// r[i] (row i of a VW x VW block) becomes column i, by log2(VW) stages of
// two-source shuffles: stage D pairs rows i and i + D and swaps the D x D
// sub-blocks between them. __builtin_shufflevector: clang, and GCC >= 12.
#if defined(__clang__) || __GNUC__ >= 12
template <int D, bool HI, int... L>
inline vf shuffle_stage(vf a, vf b, std::integer_sequence<int, L...>) {
    return __builtin_shufflevector(a, b, ((L & D) ? (HI ? VW + L : VW + L - D)
                                                  : (HI ? L + D : L))...);
}

template <int D>
inline void transpose_stage(vf* r) {
    constexpr auto lanes = std::make_integer_sequence<int, VW>{};
    for (int i = 0; i < VW; ++i)
        if (!(i & D)) {
            const vf a = r[i], b = r[i + D];
            r[i] = shuffle_stage<D, false>(a, b, lanes);
            r[i + D] = shuffle_stage<D, true>(a, b, lanes);
        }
    if constexpr (D > 1) transpose_stage<D / 2>(r);
}

inline void transpose_block(vf* r) { transpose_stage<VW / 2>(r); }
#else
inline void transpose_block(vf* r) {
    float t[VW][VW];
    for (int i = 0; i < VW; ++i) store(t[i], r[i]);
    for (int i = 0; i < VW; ++i)
        for (int j = 0; j < VW; ++j) r[i][j] = t[j][i];
}
#endif

// One NR-column panel of B from columns that are contiguous in memory (rs ==
// 1): a transpose, done in VW x VW register blocks where whole.
void pack_b_transposing(int k, int nr, const float* b, int64_t cs, float* out) {
    int p0 = 0;
    for (; p0 + VW <= k; p0 += VW)
        for (int jb = 0; jb < NR; jb += VW) {
            vf r[VW];
            for (int i = 0; i < VW; ++i)
                r[i] = jb + i < nr ? load(b + (jb + i) * cs + p0) : vf{};
            transpose_block(r);
            for (int i = 0; i < VW; ++i) store(out + (p0 + i) * NR + jb, r[i]);
        }
    for (int p = p0; p < k; ++p)
        for (int j = 0; j < NR; ++j) out[p * NR + j] = j < nr ? b[j * cs + p] : 0.0f;
}

}  // namespace

void transpose(int m, int n, const float* src, int64_t src_ld, float* dst, int64_t dst_ld) {
    int i0 = 0;
    for (; i0 + VW <= m; i0 += VW) {
        int j0 = 0;
        for (; j0 + VW <= n; j0 += VW) {
            vf r[VW];
            for (int i = 0; i < VW; ++i) r[i] = load(src + (i0 + i) * src_ld + j0);
            transpose_block(r);
            for (int j = 0; j < VW; ++j) store(dst + (j0 + j) * dst_ld + i0, r[j]);
        }
        for (int j = j0; j < n; ++j)
            for (int i = i0; i < i0 + VW; ++i) dst[j * dst_ld + i] = src[i * src_ld + j];
    }
    for (int j = 0; j < n; ++j)
        for (int i = i0; i < m; ++i) dst[j * dst_ld + i] = src[i * src_ld + j];
}

void pack_b(int k, int n, const float* b, int64_t rs, int64_t cs, float* out) {
    for (int j0 = 0; j0 < n; j0 += NR) {
        const int nr = std::min(NR, n - j0);
        if (rs == 1 && cs != 1) {
            pack_b_transposing(k, nr, b + j0 * cs, cs, out);
        } else {
            for (int p = 0; p < k; ++p) {
                float* o = out + p * NR;
                const float* bp = b + p * rs + j0 * cs;
                int j = 0;
                if (cs == 1)
                    for (; j < nr; ++j) o[j] = bp[j];
                else
                    for (; j < nr; ++j) o[j] = bp[j * cs];
                for (; j < NR; ++j) o[j] = 0.0f;
            }
        }
        out += int64_t(k) * NR;
    }
}

void sgemm_packed(int m, int n, int k, const float* ap, const float* bp, bool accumulate,
                  float* c, int64_t c_rs) {
    sgemm_panels(m, n, k, ap, bp, NR, int64_t(k) * NR, accumulate, c, c_rs);
}

void sgemm_panels(int m, int n, int k, const float* ap, const float* b, int64_t b_rs,
                  int64_t b_panel, bool accumulate, float* c, int64_t c_rs) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate)
            for (int i = 0; i < m; ++i) std::fill(c + i * c_rs, c + i * c_rs + n, 0.0f);
        return;
    }
    for (int pc = 0; pc < k; pc += KC) {
        const int kc = std::min(KC, k - pc);
        const bool acc = accumulate || pc > 0;
        for (int jr = 0; jr < n; jr += NR) {
            const float* bpanel = b + int64_t(jr / NR) * b_panel + pc * b_rs;
            for (int ir = 0; ir < m; ir += MR)
                micro_kernel(kc, ap + int64_t(ir / MR) * k * MR + pc * MR, bpanel, b_rs,
                             c + ir * c_rs + jr, c_rs, std::min(MR, m - ir),
                             std::min(NR, n - jr), acc);
        }
    }
}


void sgemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs,
           const float* b, int64_t b_rs, int64_t b_cs, bool accumulate,
           float* c, int64_t c_rs) {
    if (m <= 0 || n <= 0) return;
    static thread_local std::vector<float> abuf, bbuf;
    float* bp = scratch(bbuf, packed_b_size(KC, NC));
    float* ap = scratch(abuf, packed_a_size(MC, KC));
    // KC x NC blocks of B and MC x KC blocks of A stay in cache while used.
    for (int jc = 0; jc < n; jc += NC) {
        const int nc = std::min(NC, n - jc);
        for (int pc = 0; pc < std::max(k, 1); pc += KC) {
            const int kc = std::min(KC, k - pc);
            pack_b(kc, nc, b + pc * b_rs + jc * b_cs, b_rs, b_cs, bp);
            for (int ic = 0; ic < m; ic += MC) {
                const int mc = std::min(MC, m - ic);
                pack_a(mc, kc, a + ic * a_rs + pc * a_cs, a_rs, a_cs, ap);
                sgemm_packed(mc, nc, kc, ap, bp, accumulate || pc > 0, c + ic * c_rs + jc, c_rs);
            }
        }
    }
}

void sgemm_parallel(int m, int n, int k, const float* a, int64_t a_rs,
                    int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs,
                    bool accumulate, float* c, int64_t c_rs) {
    if (m <= 0 || n <= 0) return;
    // About 4 tiles per thread, cut along both axes in proportion to them, in
    // whole MR x NR register tiles. Tile bounds never change an element's
    // arithmetic, so the result is the same for any thread count.
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    const int64_t work = int64_t(m) * n * std::max(k, 1);
    const int want = work < (int64_t(1) << 18) ? 1 : 4 * threads;
    const int mt = (m + MR - 1) / MR, nt = (n + NR - 1) / NR;  // register tiles
    int gm = std::max(1, std::min(mt, int(std::lround(std::sqrt(double(want) * mt / nt)))));
    int gn = std::max(1, std::min(nt, (want + gm - 1) / gm));
    const int tm = (mt + gm - 1) / gm * MR, tn = (nt + gn - 1) / gn * NR;
    gm = (m + tm - 1) / tm;
    gn = (n + tn - 1) / tn;
#pragma omp parallel for schedule(dynamic) if (gm * gn > 1)
    for (int t = 0; t < gm * gn; ++t) {
        const int i0 = (t / gn) * tm, j0 = (t % gn) * tn;
        sgemm(std::min(tm, m - i0), std::min(tn, n - j0), k, a + i0 * a_rs, a_rs, a_cs,
              b + j0 * b_cs, b_rs, b_cs, accumulate, c + i0 * c_rs + j0, c_rs);
    }
}

}  // namespace deepid2
