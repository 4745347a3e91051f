// The inference forward of forward.h: plan and packing at load, then
// forward_block (one thread, a few images) and forward_split (one image,
// every thread).
#include "forward.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <utility>

#include "../gemm.h"

namespace deepid2 {
namespace infer {

namespace {

// The GEMM's K blocking (gemm.cpp's KC): each output's taps are summed in
// blocks of this many, each block from zero and then added to the running
// total. The small kernel below follows it so every path adds the same way.
constexpr int KC = 256;
constexpr int kMaxCols = 384;  // conv1/conv2 output columns per GEMM chunk, about
constexpr int kMaxSplitCols = 1536;  // the same in forward_split
constexpr int kRows3 = 160;    // conv3 GEMM rows (images x region positions) per call, about

#if defined(__AVX512F__)
constexpr int VW = 16;
constexpr int kMaxNV = 5;  // 4 x 5 accumulators + 5 of B: 25 of 32 registers
#elif defined(__AVX__)
constexpr int VW = 8;
constexpr int kMaxNV = 3;
#else
constexpr int VW = 4;
constexpr int kMaxNV = 3;
#endif
constexpr int kMaxM = 4;  // rows (images) of the small kernel

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf vload(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

int round_up(int v, int m) { return (v + m - 1) / m * m; }

inline float relu(float v) { return std::max(v, 0.0f); }

// pool2_forward's choice: the first maximum in row-major window order.
inline float max4(float a, float b, float c, float d) {
    float best = a;
    best = b > best ? b : best;
    best = c > best ? c : best;
    best = d > best ? d : best;
    return best;
}

// d[0 .. n) = s[0 .. n): whole vectors, the last one ending at n (it may
// overlap the one before), so rows of 20 or 44 floats need no scalar tail.
inline void copy_row(const float* __restrict s, int n, float* __restrict d) {
    if (n < VW) {
        for (int t = 0; t < n; ++t) d[t] = s[t];
        return;
    }
    // (written so that the compiler does not turn it into a memmove call)
    for (int t = 0; t < n; t += VW) {
        const int at = std::min(t, n - VW);
        vstore(d + at, vload(s + at));
    }
}

std::vector<int32_t> tap_offsets(const LsconvShape& s) {
    std::vector<int32_t> t;
    for (int c = 0; c < s.c; ++c)
        for (int i = 0; i < s.kh; ++i)
            for (int j = 0; j < s.kw; ++j) t.push_back(int32_t(c * s.h * s.w + i * s.w + j));
    return t;
}

// ---------------------------------------------------------------------------
// Small kernel: C[M x NV*VW] (=|+=) A[M x kc] * B[kc x NV*VW], A's row i
// read at a[i][p] (or a[i][idx[p]]), B's rows ldb floats apart. For few rows
// (images) against weights stored with the output maps contiguous.
template <int M, int NV, bool Indexed>
void small_kernel(int kc, const float* const* a, const int32_t* idx, const float* b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
    vf acc[M][NV];
    for (int i = 0; i < M; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = vf{};
    const float* ar[M];
    for (int i = 0; i < M; ++i) ar[i] = a[i];
    for (int p = 0; p < kc; ++p) {
        vf bv[NV];
        for (int v = 0; v < NV; ++v) bv[v] = vload(b + p * ldb + v * VW);
        const int o = Indexed ? idx[p] : p;
        for (int i = 0; i < M; ++i) {
            const float av = ar[i][o];
            for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
        }
    }
    for (int i = 0; i < M; ++i)
        for (int v = 0; v < NV; ++v) {
            float* ci = c + i * ldc + v * VW;
            vstore(ci, accumulate ? vload(ci) + acc[i][v] : acc[i][v]);
        }
}

typedef void (*SmallKernel)(int, const float* const*, const int32_t*, const float*, int64_t,
                            float*, int64_t, bool);

template <int M, bool Indexed, int... NV>
constexpr std::array<SmallKernel, sizeof...(NV)> kernels_for(std::integer_sequence<int, NV...>) {
    return {&small_kernel<M, NV + 1, Indexed>...};
}

template <bool Indexed>
SmallKernel pick(int m, int nv) {
    using Seq = std::make_integer_sequence<int, kMaxNV>;
    static const std::array<SmallKernel, kMaxNV> k1 = kernels_for<1, Indexed>(Seq{}),
                                                 k2 = kernels_for<2, Indexed>(Seq{}),
                                                 k3 = kernels_for<3, Indexed>(Seq{}),
                                                 k4 = kernels_for<4, Indexed>(Seq{});
    static_assert(kMaxM == 4, "one table per row count");
    switch (m) {
        case 1: return k1[nv - 1];
        case 2: return k2[nv - 1];
        case 3: return k3[nv - 1];
        default: return k4[nv - 1];
    }
}

// C[m x ncols] (=|+=) A[m x k] * B[k x ncols], m <= kMaxM, ncols a multiple
// of VW, in KC blocks. idx: A's row i is a[i][idx[p]] (im2col by table).
void small_gemm(int m, int k, const float* const* a, const int32_t* idx, const float* b,
                int64_t ldb, int ncols, float* c, int64_t ldc, bool accumulate) {
    const float* ap[kMaxM];
    for (int pc = 0; pc < k; pc += KC) {
        const int kc = std::min(KC, k - pc);
        for (int i = 0; i < m; ++i) ap[i] = idx ? a[i] : a[i] + pc;
        for (int g = 0; g < ncols; g += kMaxNV * VW) {
            const int nv = std::min(kMaxNV, (ncols - g) / VW);
            SmallKernel f = idx ? pick<true>(m, nv) : pick<false>(m, nv);
            f(kc, ap, idx ? idx + pc : nullptr, b + int64_t(pc) * ldb + g, ldb, c + g, ldc,
              accumulate || pc > 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Per-thread scratch, kept between calls.
float* grow(AlignedFloats& buf, size_t n) {
    if (buf.size() < n) buf.reset(n);
    return buf.data();
}
struct Scratch {
    AlignedFloats cols, tile;
};
Scratch& thread_scratch() {
    static thread_local Scratch s;
    return s;
}
float* thread_activations(size_t n) {
    static thread_local AlignedFloats buf;
    return grow(buf, n);
}

size_t cols_floats(const Plan& p) {
    size_t n = 0;
    for (const PooledConvPlan& L : p.conv) n = std::max(n, size_t(L.q) * L.max_ld);
    const int mr = gemm_mr();
    n = std::max(n, size_t(round_up(std::max(kRows3, p.conv3.max_positions), mr) + mr) * p.conv3.q);
    return n;
}
size_t tile_floats(const Plan& p) {
    size_t n = 0;
    for (const PooledConvPlan& L : p.conv) n = std::max(n, size_t(L.mpad) * L.max_ld);
    const int mr = gemm_mr();
    n = std::max(n, size_t(round_up(std::max(kRows3, p.conv3.max_positions), mr) + mr) * p.conv3.kn);
    n = std::max(n, size_t(kMaxM) * std::max(p.conv4.kp, p.fp));
    return n;
}

// ---------------------------------------------------------------------------
// The layers. Each works on given images and, where a layer is split over
// threads, on a given part of its output.

// conv1/conv2 + ReLU + pool, chunk c of one image.
void pooled_conv_chunk(const PooledConvPlan& L, const float* w, const float* bias,
                       const float* x, const PooledConvPlan::Chunk& c, float* pooled, float* cols,
                       float* tile) {
    const int OW = L.s.ow(), W = L.s.w;
    for (int p = 0; p < L.q; ++p) {
        float* row = cols + int64_t(p) * c.ld;
        const float* src = x + L.taps[p] + int64_t(c.oy0) * W;
        for (int r = 0; r < c.rows; ++r) copy_row(src + int64_t(r) * W, OW, row + r * OW);
        std::fill(row + c.cols, row + c.ld, 0.0f);
    }
    sgemm_panels(L.mpad, c.ld, L.q, w, cols, c.ld, gemm_nr(), false, tile, c.ld);
    const int plane = L.ph * L.pw;
    for (int k = 0; k < L.s.k; ++k) {
        const float* t = tile + int64_t(k) * c.ld;
        const float bk = bias[k];
        float* o = pooled + int64_t(k) * plane + (c.oy0 / 2) * L.pw;
        for (int rp = 0; rp < c.rows / 2; ++rp) {
            const float* t0 = t + 2 * rp * OW;
            const float* t1 = t0 + OW;
            float* orow = o + rp * L.pw;
            for (int px = 0; px < L.pw; ++px)
                orow[px] = max4(relu(t0[2 * px] + bk), relu(t0[2 * px + 1] + bk),
                                relu(t1[2 * px] + bk), relu(t1[2 * px + 1] + bk));
        }
    }
}

// conv3 + ReLU, region r of images xs[0 .. g) into y3s[...] (whole maps).
void region_conv(const RegionConvPlan& L, const float* w, const float* bias, int r, int g,
                 const float* const* xs, float* const* y3s, float* cols, float* tile) {
    const int MR = gemm_mr();
    const int npos = L.pos0[r + 1] - L.pos0[r], rows = g * npos, rows_pad = round_up(rows, MR);
    const int32_t* in_off = L.in_off.data() + L.pos0[r];
    const int32_t* out_off = L.out_off.data() + L.pos0[r];
    // im2col straight into MR-row panels: row i = (image i / npos, position i % npos)
    for (int ib = 0; ib < rows_pad; ib += MR) {
        const float* src[16];  // MR <= 16 (make_plan)
        const int mr = std::min(MR, rows - ib);
        for (int ii = 0; ii < mr; ++ii) src[ii] = xs[(ib + ii) / npos] + in_off[(ib + ii) % npos];
        float* o = cols + int64_t(ib) * L.q;
        for (int p = 0; p < L.q; ++p) {
            const int32_t t = L.taps[p];
            float* op = o + p * MR;
            int ii = 0;
            for (; ii < mr; ++ii) op[ii] = src[ii][t];
            for (; ii < MR; ++ii) op[ii] = 0.0f;
        }
    }
    sgemm_packed(rows_pad, L.kn, L.q, cols, w + int64_t(r) * L.kn * L.q, false, tile, L.kn);
    const int64_t plane = int64_t(L.s.oh()) * L.s.ow();
    const float* br = bias + int64_t(r) * L.s.k;
    for (int i = 0; i < rows; ++i) {
        float* y = y3s[i / npos] + out_off[i % npos];
        const float* ci = tile + int64_t(i) * L.kn;
        for (int k = 0; k < L.s.k; ++k) y[k * plane] = relu(ci[k] + br[k]);
    }
}

// pool3 of maps [k0, k1) of one image.
void pool_maps(const RegionConvPlan& L, const float* y3, int k0, int k1, float* p3) {
    const int OW = L.s.ow();
    for (int k = k0; k < k1; ++k) {
        const float* t = y3 + int64_t(k) * L.s.oh() * OW;
        float* o = p3 + int64_t(k) * L.ph * L.pw;
        for (int py = 0; py < L.ph; ++py) {
            const float* t0 = t + 2 * py * OW;
            const float* t1 = t0 + OW;
            for (int px = 0; px < L.pw; ++px)
                o[py * L.pw + px] = max4(t0[2 * px], t0[2 * px + 1], t1[2 * px], t1[2 * px + 1]);
        }
    }
}

// conv4 + ReLU at position r for images p3s[0 .. m) (m <= kMaxM).
void local_conv(const LocalConvPlan& L, const float* w, const float* bias, int r, int m,
                const float* const* p3s, float* const* y4s, float* tile) {
    const float* a[kMaxM];
    for (int i = 0; i < m; ++i) a[i] = p3s[i] + L.in_off[r];
    small_gemm(m, L.q, a, L.taps.data(), w + int64_t(r) * L.q * L.kp, L.kp, L.kp, tile, L.kp,
               false);
    const int npos = int(L.in_off.size());
    const float* br = bias + int64_t(r) * L.s.k;
    for (int i = 0; i < m; ++i)
        for (int k = 0; k < L.s.k; ++k) y4s[i][k * npos + r] = relu(tile[i * L.kp + k] + br[k]);
}

// deepid = relu([pool3, conv4] W + b), columns [j0, j1) (multiples of VW,
// j1 may be fp) of images 0 .. m (m <= kMaxM).
void dense(const Plan& P, const PackedNet& net, int m, const float* const* p3s,
           const float* const* y4s, int j0, int j1, float* const* outs, float* tile) {
    const float* w = net.dense_w.data() + j0;
    const int d0 = int(P.p3), d1 = int(P.y4);
    small_gemm(m, d0, p3s, nullptr, w, P.fp, j1 - j0, tile, P.fp, false);
    small_gemm(m, d1, y4s, nullptr, w + int64_t(d0) * P.fp, P.fp, j1 - j0, tile, P.fp, true);
    const float* b = net.dense_b.data();
    const int jend = std::min(j1, P.F);
    for (int i = 0; i < m; ++i)
        for (int j = j0; j < jend; ++j) outs[i][j] = relu(tile[i * P.fp + (j - j0)] + b[j]);
}

// Output row pairs 0 .. RP in chunks of `pairs` (the last may be smaller),
// at most max_cols columns unless one pair is wider. Chosen to finish first
// on `threads` threads taking chunks in turn (the largest on ties), each
// chunk costing its columns padded to whole NR panels.
std::vector<PooledConvPlan::Chunk> plan_chunks(int OW, int RP, int max_cols, int threads) {
    const int NR = gemm_nr();
    const int most = std::max(1, std::min(RP, max_cols / (2 * OW)));
    int best = 1;
    int64_t best_span = -1;
    for (int pairs = 1; pairs <= most; ++pairs) {
        std::vector<int64_t> load(size_t(threads), 0);
        for (int p0 = 0; p0 < RP; p0 += pairs)
            *std::min_element(load.begin(), load.end()) += round_up(std::min(pairs, RP - p0) * 2 * OW, NR);
        const int64_t span = *std::max_element(load.begin(), load.end());
        if (best_span < 0 || span <= best_span) best = pairs, best_span = span;
    }
    std::vector<PooledConvPlan::Chunk> chunks;
    for (int p0 = 0; p0 < RP; p0 += best) {
        const int rows = 2 * std::min(best, RP - p0), cols = rows * OW;
        chunks.push_back({2 * p0, rows, cols, round_up(cols, NR)});
    }
    return chunks;
}

}  // namespace

void AlignedFloats::reset(size_t n) {
    p_.reset();
    n_ = 0;
    if (n == 0) return;
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    p_.reset(static_cast<float*>(p));
    n_ = n;
}

Plan make_plan(int C, int H, int W, int F, const std::array<LsconvShape, 4>& convs) {
    Plan P;
    P.C = C, P.H = H, P.W = W, P.F = F, P.fp = round_up(F, VW);
    P.in_size = int64_t(C) * H * W;
    const int MR = gemm_mr(), NR = gemm_nr();
    if (MR > 16) throw std::logic_error("infer: region_conv assumes MR <= 16");
    for (int l = 0; l < 2; ++l) {
        PooledConvPlan& L = P.conv[l];
        L.s = convs[l];
        if (L.s.ry() != 1 || L.s.rx() != 1)
            throw std::logic_error("infer: conv1/conv2 must be one region");
        L.q = L.s.c * L.s.kh * L.s.kw;
        L.mpad = round_up(L.s.k, MR);
        L.ph = L.s.oh() / 2, L.pw = L.s.ow() / 2;
        L.taps = tap_offsets(L.s);
        L.chunks = plan_chunks(L.s.ow(), L.ph, kMaxCols, 1);
        L.split_chunks = plan_chunks(L.s.ow(), L.ph, kMaxSplitCols, kSplitThreads);
        for (const auto* list : {&L.chunks, &L.split_chunks})
            for (const PooledConvPlan::Chunk& c : *list) L.max_ld = std::max(L.max_ld, c.ld);
    }
    {
        RegionConvPlan& L = P.conv3;
        L.s = convs[2];
        L.q = L.s.c * L.s.kh * L.s.kw;
        L.kn = round_up(L.s.k, NR);
        L.ph = L.s.oh() / 2, L.pw = L.s.ow() / 2;
        L.taps = tap_offsets(L.s);
        L.pos0.push_back(0);
        for (int ry = 0; ry < L.s.ry(); ++ry)
            for (int rx = 0; rx < L.s.rx(); ++rx) {
                for (int oy = ry * L.s.rh; oy < std::min(L.s.oh(), (ry + 1) * L.s.rh); ++oy)
                    for (int ox = rx * L.s.rw; ox < std::min(L.s.ow(), (rx + 1) * L.s.rw); ++ox) {
                        L.out_off.push_back(oy * L.s.ow() + ox);
                        L.in_off.push_back(oy * L.s.w + ox);
                    }
                L.pos0.push_back(int32_t(L.out_off.size()));
                L.max_positions = std::max(L.max_positions, L.pos0.back() - L.pos0[L.pos0.size() - 2]);
            }
    }
    {
        LocalConvPlan& L = P.conv4;
        L.s = convs[3];
        if (L.s.rh != 1 || L.s.rw != 1) throw std::logic_error("infer: conv4 must be locally connected");
        L.q = L.s.c * L.s.kh * L.s.kw;
        L.kp = round_up(L.s.k, VW);
        L.taps = tap_offsets(L.s);
        for (int oy = 0; oy < L.s.oh(); ++oy)
            for (int ox = 0; ox < L.s.ow(); ++ox) L.in_off.push_back(oy * L.s.w + ox);
    }
    P.p1 = int64_t(P.conv[0].s.k) * P.conv[0].ph * P.conv[0].pw;
    P.p2 = int64_t(P.conv[1].s.k) * P.conv[1].ph * P.conv[1].pw;
    P.y3 = int64_t(P.conv3.s.k) * P.conv3.s.oh() * P.conv3.s.ow();
    P.p3 = int64_t(P.conv3.s.k) * P.conv3.ph * P.conv3.pw;
    P.y4 = int64_t(P.conv4.s.k) * P.conv4.s.oh() * P.conv4.s.ow();
    return P;
}

PackedNet pack_net(const Plan& P, const std::array<std::vector<float>, 4>& conv_w,
                   const std::array<std::vector<float>, 4>& conv_b, const std::vector<float>& dense_w,
                   const std::vector<float>& dense_b) {
    PackedNet n;
    for (int l = 0; l < 2; ++l) {
        const PooledConvPlan& L = P.conv[l];
        n.w[l].reset(size_t(packed_a_size(L.s.k, L.q)));
        pack_a(L.s.k, L.q, conv_w[l].data(), L.q, 1, n.w[l].data());
    }
    {
        const RegionConvPlan& L = P.conv3;
        const int R = L.s.ry() * L.s.rx();
        const int64_t each = packed_b_size(L.q, L.s.k);
        n.w[2].reset(size_t(R * each));
        for (int r = 0; r < R; ++r)
            pack_b(L.q, L.s.k, conv_w[2].data() + int64_t(r) * L.s.k * L.q, 1, L.q,
                   n.w[2].data() + r * each);
    }
    {
        const LocalConvPlan& L = P.conv4;
        const int R = int(L.in_off.size());
        n.w[3].reset(size_t(R) * L.q * L.kp);
        for (int r = 0; r < R; ++r) {
            const float* wr = conv_w[3].data() + int64_t(r) * L.s.k * L.q;
            float* o = n.w[3].data() + int64_t(r) * L.q * L.kp;
            for (int k = 0; k < L.s.k; ++k)
                for (int p = 0; p < L.q; ++p) o[int64_t(p) * L.kp + k] = wr[int64_t(k) * L.q + p];
        }
    }
    for (int l = 0; l < 4; ++l) {
        n.b[l].reset(conv_b[l].size());
        std::copy(conv_b[l].begin(), conv_b[l].end(), n.b[l].data());
    }
    const int64_t rows = P.p3 + P.y4;
    n.dense_w.reset(size_t(rows * P.fp));
    for (int64_t p = 0; p < rows; ++p)
        std::copy(dense_w.data() + p * P.F, dense_w.data() + (p + 1) * P.F, n.dense_w.data() + p * P.fp);
    n.dense_b.reset(size_t(P.F));
    std::copy(dense_b.begin(), dense_b.end(), n.dense_b.data());
    return n;
}

void forward_block(const Plan& P, const PackedNet& net, int nb, const float* const* xs,
                   float* const* outs) {
    if (nb <= 0) return;
    if (nb > kMaxBlock) throw std::logic_error("infer: forward_block takes at most kMaxBlock images");
    const int64_t per = P.p1 + P.p2 + P.y3 + P.p3 + P.y4;
    float* act = thread_activations(size_t(per) * nb);
    Scratch& s = thread_scratch();
    float* cols = grow(s.cols, cols_floats(P));
    float* tile = grow(s.tile, tile_floats(P));
    float *p1[kMaxBlock], *p2[kMaxBlock], *y3[kMaxBlock], *p3[kMaxBlock], *y4[kMaxBlock];
    for (int i = 0; i < nb; ++i) {
        float* a = act + per * i;
        p1[i] = a, p2[i] = a + P.p1, y3[i] = p2[i] + P.p2, p3[i] = y3[i] + P.y3, y4[i] = p3[i] + P.p3;
    }
    for (int i = 0; i < nb; ++i)
        for (const PooledConvPlan::Chunk& c : P.conv[0].chunks)
            pooled_conv_chunk(P.conv[0], net.w[0].data(), net.b[0].data(), xs[i], c, p1[i], cols, tile);
    for (int i = 0; i < nb; ++i)
        for (const PooledConvPlan::Chunk& c : P.conv[1].chunks)
            pooled_conv_chunk(P.conv[1], net.w[1].data(), net.b[1].data(), p1[i], c, p2[i], cols, tile);
    const RegionConvPlan& L3 = P.conv3;
    const int R3 = L3.s.ry() * L3.s.rx();
    const int g3 = std::max(1, kRows3 / L3.max_positions);
    for (int i0 = 0; i0 < nb; i0 += g3)
        for (int r = 0; r < R3; ++r)
            region_conv(L3, net.w[2].data(), net.b[2].data(), r, std::min(g3, nb - i0), p2 + i0,
                        y3 + i0, cols, tile);
    for (int i = 0; i < nb; ++i) pool_maps(L3, y3[i], 0, L3.s.k, p3[i]);
    const int R4 = int(P.conv4.in_off.size());
    for (int i0 = 0; i0 < nb; i0 += kMaxM) {
        const int m = std::min(kMaxM, nb - i0);
        for (int r = 0; r < R4; ++r)
            local_conv(P.conv4, net.w[3].data(), net.b[3].data(), r, m, p3 + i0, y4 + i0, tile);
        dense(P, net, m, p3 + i0, y4 + i0, 0, P.fp, outs + i0, tile);
    }
}

void forward_split(const Plan& P, const PackedNet& net, const float* x, float* out, int threads) {
    const int64_t per = P.p1 + P.p2 + P.y3 + P.p3 + P.y4;
    float* act = thread_activations(size_t(per));
    float* p1 = act;
    float* p2 = p1 + P.p1;
    float* y3 = p2 + P.p2;
    float* p3 = y3 + P.y3;
    float* y4 = p3 + P.p3;
    const RegionConvPlan& L3 = P.conv3;
    const int R3 = L3.s.ry() * L3.s.rx(), R4 = int(P.conv4.in_off.size());
    const auto& c1 = P.conv[0].split_chunks;
    const auto& c2 = P.conv[1].split_chunks;
    const int n1 = int(c1.size()), n2 = int(c2.size());
    const int groups = (P.fp + kMaxNV * VW - 1) / (kMaxNV * VW);
    std::exception_ptr error;
    (void)threads;  // without OpenMP
#pragma omp parallel num_threads(threads)
    {
        float *cols = nullptr, *tile = nullptr;
        try {
            Scratch& s = thread_scratch();
            cols = grow(s.cols, cols_floats(P));
            tile = grow(s.tile, tile_floats(P));
        } catch (...) {
#pragma omp critical(deepid2_forward_split_error)
            if (!error) error = std::current_exception();
        }
#pragma omp barrier
        if (!error) {
#pragma omp for schedule(dynamic)
            for (int c = 0; c < n1; ++c)
                pooled_conv_chunk(P.conv[0], net.w[0].data(), net.b[0].data(), x, c1[c], p1, cols, tile);
#pragma omp for schedule(dynamic)
            for (int c = 0; c < n2; ++c)
                pooled_conv_chunk(P.conv[1], net.w[1].data(), net.b[1].data(), p1, c2[c], p2, cols, tile);
#pragma omp for schedule(dynamic)
            for (int r = 0; r < R3; ++r)
                region_conv(L3, net.w[2].data(), net.b[2].data(), r, 1, &p2, &y3, cols, tile);
#pragma omp for schedule(static)
            for (int k = 0; k < L3.s.k; ++k) pool_maps(L3, y3, k, k + 1, p3);
#pragma omp for schedule(dynamic)
            for (int r = 0; r < R4; ++r)
                local_conv(P.conv4, net.w[3].data(), net.b[3].data(), r, 1, &p3, &y4, tile);
#pragma omp for schedule(dynamic)
            for (int g = 0; g < groups; ++g)
                dense(P, net, 1, &p3, &y4, g * kMaxNV * VW, std::min(P.fp, (g + 1) * kMaxNV * VW),
                      &out, tile + 0);
        }
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace infer
}  // namespace deepid2
