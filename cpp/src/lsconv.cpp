// Locally-shared convolution as im2col + GEMM, one region at a time.
//
// Output columns j = (image, position in region) are processed in chunks of
// JC. colsT (q x jc, q = C*kh*kw taps, rows padded to ld) holds the inputs
// under each column; the weights are packed once per call.
//   forward:   Yt  [K x jc] = W_r [K x q] * colsT
//   backward:  dW_r [K x q] += dYt [K x jc] * colsT^T
//              dcolsT [q x jc] = W_r^T [q x K] * dYt  -> col2im into dx
// Consecutive columns usually sit side by side in x and y (one output row of
// a region), so copies between NCHW and the column matrices go by runs.
//
// Parallel split, chosen by shapes only so results never depend on the
// thread count:
// - forward: tasks of (image block, region), no reductions;
// - backward, small regions (locally connected): one task per region over
//   the whole batch owns dW_r/db_r; dx is scattered afterwards per image;
// - backward, wide regions (ordinary convolution): kGroups groups of images,
//   each with its own dW/db partial sums, added in group order.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "deepid2/ops.h"
#include "gemm.h"

namespace deepid2 {
namespace {

constexpr int JC = 256;  // output columns per GEMM chunk (a multiple of NR)
constexpr int kSmallRegion = 16;  // regions of at most this many neurons: per-region tasks
constexpr int kGroups = 16;       // image groups (dW partial sums) for wider regions
constexpr int kPackedWgradMaps = 32;  // weight gradient by packed GEMM from this many maps

// Scratch that lives as long as the thread: OpenMP's pool threads keep theirs
// between calls, so large buffers are not faulted in afresh every call.
float* thread_scratch(int slot, size_t n) {
    static thread_local std::vector<float> bufs[6];
    if (bufs[slot].size() < n) bufs[slot].resize(n);
    return bufs[slot].data();
}
float* thread_scratch_caller(size_t n) {
    static thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

struct Region {
    int oy0, oy1, ox0, ox1;
    int positions() const { return (oy1 - oy0) * (ox1 - ox0); }
};

Region region_of(const LsconvShape& s, int r) {
    const int ry = r / s.rx(), rx = r % s.rx();
    return {ry * s.rh, std::min(s.oh(), (ry + 1) * s.rh), rx * s.rw,
            std::min(s.ow(), (rx + 1) * s.rw)};
}

// Columns [j, j + len) of a chunk: inputs start at x + xoff (+ tap offset),
// outputs at y + yoff (+ k * OH*OW), both advancing by one per column.
struct Run {
    int j, len;
    int64_t xoff, yoff;
};

void chunk_runs(const LsconvShape& s, const Region& reg, int n0, int j0, int jc,
                std::vector<Run>& runs) {
    runs.clear();
    const int pw = reg.ox1 - reg.ox0, P = reg.positions();
    const int64_t ximage = int64_t(s.c) * s.h * s.w, yimage = int64_t(s.k) * s.oh() * s.ow();
    for (int j = 0; j < jc;) {
        const int jj = j0 + j, n = n0 + jj / P, p = jj % P;
        const int oy = reg.oy0 + p / pw, ox = reg.ox0 + p % pw;
        const int len = std::min(jc - j, pw - p % pw);
        runs.push_back({j, len, n * ximage + int64_t(oy) * s.w + ox,
                        n * yimage + int64_t(oy) * s.ow() + ox});
        j += len;
    }
}

// Offsets of the q kernel taps relative to an output's top-left input.
std::vector<int64_t> tap_offsets(const LsconvShape& s) {
    std::vector<int64_t> t;
    for (int c = 0; c < s.c; ++c)
        for (int i = 0; i < s.kh; ++i)
            for (int k = 0; k < s.kw; ++k) t.push_back(c * int64_t(s.h) * s.w + i * s.w + k);
    return t;
}

// out = dy where y > 0, else 0; loads both unconditionally so it vectorises.
void mask_relu(const float* __restrict y, const float* __restrict dy, int n,
               float* __restrict out) {
    for (int u = 0; u < n; ++u) {
        const float g = dy[u];
        out[u] = y[u] > 0.0f ? g : 0.0f;
    }
}

// Runs are short (4 to 44 floats in DeepID2): an inlined loop beats memmove.
void copy_run(const float* __restrict src, int n, float* __restrict dst) {
    for (int t = 0; t < n; ++t) dst[t] = src[t];
}

void im2col(const float* x, const std::vector<int64_t>& taps, const std::vector<Run>& runs,
            int jc, int ld, float* colsT) {
    for (size_t p = 0; p < taps.size(); ++p) {
        float* row = colsT + p * ld;
        for (const Run& r : runs) {
            copy_run(x + r.xoff + taps[p], r.len, row + r.j);
        }
        std::fill(row + jc, row + ld, 0.0f);
    }
}

void add_to(const float* __restrict src, int n, float* __restrict dst) {
    for (int t = 0; t < n; ++t) dst[t] += src[t];
}

void col2im_add(const float* dcolsT, int ld, const std::vector<int64_t>& taps,
                const std::vector<Run>& runs, float* dx) {
    for (size_t p = 0; p < taps.size(); ++p) {
        const float* row = dcolsT + p * ld;
        for (const Run& r : runs) {
            add_to(row + r.j, r.len, dx + r.xoff + taps[p]);
        }
    }
}

// Sum of n floats in 16 interleaved lanes: vectorises without -ffast-math
// and keeps a fixed order.
float lane_sum(const float* v, int n) {
    float lanes[16] = {};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += v[j + l];
    for (; j < n; ++j) lanes[0] += v[j];
    float sum = 0.0f;
    for (int l = 0; l < 16; ++l) sum += lanes[l];
    return sum;
}

int round_up(int v, int m) { return (v + m - 1) / m * m; }

// Weight gradient without packing: both dYt (K x ld) and colsT (q x ld) hold
// the columns contiguously, so dW_r[k][t] = sum_j dYt[k][j] colsT[t][j] is a
// dot product along rows of both. Lanes of 16 columns accumulate into vacc
// (K x q vectors, kept across chunks); wgrad_flush adds each vector's lanes,
// in a fixed order, into dW once per region/group. Tiles of 4 maps x 6 taps
// (24 accumulators, 10 loads per 24 FMAs); rows past K or q repeat the last
// row and their results are dropped.
constexpr int WV = 16;
typedef float wvec __attribute__((vector_size(WV * sizeof(float))));

inline wvec wload(const float* p) {
    wvec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline void wstore(float* p, wvec v) { std::memcpy(p, &v, sizeof(v)); }

void wgrad_accumulate(int K, int q, int ld, const float* dyt, const float* colsT, float* vacc) {
    constexpr int TK = 4, TT = 6;
    for (int k0 = 0; k0 < K; k0 += TK) {
        const float* g[TK];
        for (int a = 0; a < TK; ++a) g[a] = dyt + int64_t(std::min(k0 + a, K - 1)) * ld;
        for (int t0 = 0; t0 < q; t0 += TT) {
            const float* c[TT];
            for (int b = 0; b < TT; ++b) c[b] = colsT + int64_t(std::min(t0 + b, q - 1)) * ld;
            wvec acc[TK][TT];
            for (int a = 0; a < TK; ++a)
                for (int b = 0; b < TT; ++b) acc[a][b] = wvec{};
            for (int j = 0; j < ld; j += WV) {
                wvec gv[TK];
                for (int a = 0; a < TK; ++a) gv[a] = wload(g[a] + j);
                for (int b = 0; b < TT; ++b) {
                    const wvec cv = wload(c[b] + j);
                    for (int a = 0; a < TK; ++a) acc[a][b] += gv[a] * cv;
                }
            }
            for (int a = 0; a < TK && k0 + a < K; ++a)
                for (int b = 0; b < TT && t0 + b < q; ++b) {
                    float* v = vacc + (int64_t(k0 + a) * q + t0 + b) * WV;
                    wstore(v, wload(v) + acc[a][b]);
                }
        }
    }
}

// Row length of the backward's column matrices: whole GEMM panels and whole
// wgrad lanes (gemm_nr() is 8, 16 or 32 with the instruction set).
int col_ld(int jc) { return round_up(jc, std::max(gemm_nr(), WV)); }

// This thread's zeroed lane accumulators when the weight gradient of K maps
// goes by wgrad_accumulate (K < kPackedWgradMaps), else nullptr (packed GEMM).
float* wgrad_lanes(int K, int q) {
    if (K >= kPackedWgradMaps) return nullptr;
    float* vacc = thread_scratch(2, size_t(K) * q * WV);
    std::fill(vacc, vacc + size_t(K) * q * WV, 0.0f);
    return vacc;
}

// dw [K x q] += the lanes of vacc, summed in lane order; vacc is zeroed.
void wgrad_flush(int K, int q, float* vacc, float* dw) {
    for (int64_t e = 0; e < int64_t(K) * q; ++e) {
        float* v = vacc + e * WV;
        float sum = 0.0f;
        for (int l = 0; l < WV; ++l) sum += v[l];
        dw[e] += sum;
        std::fill(v, v + WV, 0.0f);
    }
}

// Every region's weights packed once per call as the GEMM's left operand:
// W_r (K x q) for the forward, or W_r^T (q x K) for the data gradient.
std::vector<float> pack_weights(const LsconvShape& s, const float* w, bool transpose) {
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx();
    const int64_t each = transpose ? packed_a_size(q, s.k) : packed_a_size(s.k, q);
    std::vector<float> out(size_t(R) * each);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; ++r) {
        const float* wr = w + int64_t(r) * s.k * q;
        if (transpose)
            pack_a(q, s.k, wr, 1, q, out.data() + r * each);
        else
            pack_a(s.k, q, wr, q, 1, out.data() + r * each);
    }
    return out;
}

void require(const void* p, const char* name) { detail::require_pointer("lsconv", p, name); }

}  // namespace

void LsconvShape::check() const {
    detail::require_positive("lsconv", {{"n", n}, {"c", c}, {"h", h}, {"w", w}, {"k", k},
                                        {"kh", kh}, {"kw", kw}, {"rh", rh}, {"rw", rw}});
    if (kh > h || kw > w)
        throw std::invalid_argument("lsconv: kernel " + std::to_string(kh) + "x" +
                                    std::to_string(kw) + " is larger than the input " +
                                    std::to_string(h) + "x" + std::to_string(w));
    if (rh > oh() || rw > ow())
        throw std::invalid_argument("lsconv: region " + std::to_string(rh) + "x" +
                                    std::to_string(rw) + " is larger than the output map " +
                                    std::to_string(oh()) + "x" + std::to_string(ow()));
}

void lsconv_forward(const LsconvShape& s, const float* x, const float* w, const float* b,
                    bool relu, float* y) {
    s.check();
    require(x, "x");
    require(w, "w");
    require(b, "b");
    require(y, "y");
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx();
    // No reduction here: blocks as big as a chunk; regions give parallelism.
    const int nb = std::max(1, std::min(s.n, JC / (s.rh * s.rw)));
    const int blocks = (s.n + nb - 1) / nb;
    const int64_t oplane = int64_t(s.oh()) * s.ow();
    const std::vector<int64_t> taps = tap_offsets(s);
    const std::vector<float> wpack = pack_weights(s, w, false);
    const int64_t wstride = packed_a_size(s.k, q);
#pragma omp parallel
    {
        float* colsT = thread_scratch(0, size_t(q) * JC);
        float* yt = thread_scratch(1, size_t(s.k) * JC);
        std::vector<Run> runs;
#pragma omp for schedule(dynamic) collapse(2)
        for (int blk = 0; blk < blocks; ++blk)
            for (int r = 0; r < R; ++r) {
                const Region reg = region_of(s, r);
                const int n0 = blk * nb, nimg = std::min(nb, s.n - n0);
                const int J = nimg * reg.positions();
                const float* br = b + int64_t(r) * s.k;
                for (int j0 = 0; j0 < J; j0 += JC) {
                    const int jc = std::min(JC, J - j0), ld = round_up(jc, gemm_nr());
                    chunk_runs(s, reg, n0, j0, jc, runs);
                    im2col(x, taps, runs, jc, ld, colsT);
                    sgemm_panels(s.k, jc, q, wpack.data() + r * wstride, colsT, ld, gemm_nr(),
                                 false, yt, ld);
                    for (int k = 0; k < s.k; ++k) {
                        const float* t = yt + int64_t(k) * ld;
                        const float bk = br[k];
                        for (const Run& run : runs) {
                            float* yk = y + run.yoff + k * oplane;
                            for (int u = 0; u < run.len; ++u) {
                                const float v = t[run.j + u] + bk;
                                yk[u] = relu ? std::max(v, 0.0f) : v;
                            }
                        }
                    }
                }
            }
    }
}

namespace {

// One chunk of the backward: columns [j0, j0 + jc) of region r over images
// [n0, ...). Adds into dw_r, db_r; writes dcolsT (q x ld) when wt_r is set.
struct BackwardChunk {
    const LsconvShape& s;
    const float *x, *y, *dy;
    bool relu;
    const std::vector<int64_t>& taps;

    void run(int r, int n0, int j0, int jc, float* dw_r, float* vacc, float* db_r,
             const float* wt_r,
             float* colsT, float* dyt, float* dcolsT, int64_t dcols_ld,
             std::vector<Run>& runs) const {
        const int q = int(taps.size()), ld = col_ld(jc);
        const int64_t oplane = int64_t(s.oh()) * s.ow();
        chunk_runs(s, region_of(s, r), n0, j0, jc, runs);
        // dYt: dy under the ReLU mask, zero-padded to ld columns.
        for (int k = 0; k < s.k; ++k) {
            float* d = dyt + int64_t(k) * ld;
            for (const Run& run : runs) {
                const float* dyk = dy + run.yoff + k * oplane;
                if (relu) {
                    mask_relu(y + run.yoff + k * oplane, dyk, run.len, d + run.j);
                } else {
                    std::copy(dyk, dyk + run.len, d + run.j);
                }
            }
            std::fill(d + jc, d + ld, 0.0f);
            db_r[k] += lane_sum(d, ld);
        }
        im2col(x, taps, runs, jc, ld, colsT);
        // dW_r [K x q] += dYt [K x jc] * colsT^T
        if (vacc) {  // few maps (wgrad_lanes): packing colsT would cost more than the product
            wgrad_accumulate(s.k, q, ld, dyt, colsT, vacc);
        } else {
            float* dya = thread_scratch(3, packed_a_size(s.k, JC));
            float* colsb = thread_scratch(5, packed_b_size(JC, q));
            pack_a(s.k, jc, dyt, ld, 1, dya);
            pack_b(jc, q, colsT, 1, ld, colsb);
            sgemm_packed(s.k, q, jc, dya, colsb, true, dw_r, q);
        }
        // dcolsT [q x jc] = W_r^T [q x K] * dYt [K x jc]
        if (wt_r)
            sgemm_panels(q, jc, s.k, wt_r, dyt, ld, gemm_nr(), false, dcolsT, dcols_ld);
    }
};

}  // namespace

void lsconv_backward(const LsconvShape& s, const float* x, const float* w, const float* y,
                     const float* dy, bool relu, float* dx, float* dw, float* db) {
    s.check();
    require(x, "x");
    require(w, "w");
    require(dy, "dy");
    require(dw, "dw");
    require(db, "db");
    if (relu) require(y, "y");
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx();
    const int64_t image = int64_t(s.c) * s.h * s.w;
    const std::vector<int64_t> taps = tap_offsets(s);
    const std::vector<float> wtpack = dx ? pack_weights(s, w, true) : std::vector<float>();
    const int64_t wtstride = packed_a_size(q, s.k);
    const BackwardChunk chunk{s, x, y, dy, relu, taps};

    if (s.rh * s.rw <= kSmallRegion) {
        // Small regions: one task per region over all N images owns dw_r and
        // db_r outright. dcolsT of every region is kept, then scattered into
        // dx image by image, so no two threads write the same dx element.
        std::vector<int64_t> col0(R + 1, 0);  // column offset of region r
        for (int r = 0; r < R; ++r)
            col0[r + 1] = col0[r] + col_ld(s.n * region_of(s, r).positions());
        float* dcols = dx ? thread_scratch_caller(size_t(q) * col0[R]) : nullptr;
#pragma omp parallel
        {
            float* colsT = thread_scratch(0, size_t(q) * JC);
            float* dyt = thread_scratch(1, size_t(s.k) * JC);
            float* vacc = wgrad_lanes(s.k, q);
            std::vector<Run> runs;
#pragma omp for schedule(dynamic)
            for (int r = 0; r < R; ++r) {
                const int J = s.n * region_of(s, r).positions();
                for (int j0 = 0; j0 < J; j0 += JC)
                    chunk.run(r, 0, j0, std::min(JC, J - j0), dw + int64_t(r) * s.k * q, vacc,
                              db + int64_t(r) * s.k,
                              dx ? wtpack.data() + r * wtstride : nullptr, colsT, dyt,
                              dx ? dcols + q * col0[r] + j0 : nullptr, col0[r + 1] - col0[r],
                              runs);
                if (vacc) wgrad_flush(s.k, q, vacc, dw + int64_t(r) * s.k * q);
            }
            if (dx) {
#pragma omp for schedule(static)
                for (int n = 0; n < s.n; ++n) {
                    std::fill(dx + n * image, dx + (n + 1) * image, 0.0f);
                    for (int r = 0; r < R; ++r) {
                        const int P = region_of(s, r).positions();
                        chunk_runs(s, region_of(s, r), n, 0, P, runs);
                        col2im_add(dcols + q * col0[r] + int64_t(n) * P,
                                   int(col0[r + 1] - col0[r]), taps, runs, dx);
                    }
                }
            }
        }
        return;
    }

    // Wide regions: G groups of consecutive images; a group's dW/db partial
    // sums are added in group order, so the thread count does not matter.
    const int G = std::min(s.n, kGroups);
    const int64_t wsize = int64_t(R) * s.k * q, bsize = int64_t(R) * s.k;
    float* part = thread_scratch_caller(size_t(G) * (wsize + bsize));
#pragma omp parallel
    {
        float* colsT = thread_scratch(0, size_t(q) * JC);
        float* dyt = thread_scratch(1, size_t(s.k) * JC);
        float* dcolsT = thread_scratch(4, size_t(q) * JC);
        float* vacc = wgrad_lanes(s.k, q);
        std::vector<Run> runs;
#pragma omp for schedule(dynamic)
        for (int g = 0; g < G; ++g) {
            const int n0 = int(int64_t(s.n) * g / G), n1 = int(int64_t(s.n) * (g + 1) / G);
            float* pw = part + g * (wsize + bsize);
            float* pb = pw + wsize;
            std::fill(pw, pw + wsize + bsize, 0.0f);
            if (dx) std::fill(dx + n0 * image, dx + n1 * image, 0.0f);
            for (int r = 0; r < R; ++r) {
                const int J = (n1 - n0) * region_of(s, r).positions();
                for (int j0 = 0; j0 < J; j0 += JC) {
                    const int jc = std::min(JC, J - j0);
                    chunk.run(r, n0, j0, jc, pw + int64_t(r) * s.k * q, vacc,
                              pb + int64_t(r) * s.k,
                              dx ? wtpack.data() + r * wtstride : nullptr, colsT, dyt, dcolsT,
                              col_ld(jc), runs);
                    if (dx) col2im_add(dcolsT, col_ld(jc), taps, runs, dx);
                }
                if (vacc) wgrad_flush(s.k, q, vacc, pw + int64_t(r) * s.k * q);
            }
        }
#pragma omp for schedule(static)
        for (int64_t e = 0; e < wsize + bsize; ++e) {
            float sum = 0.0f;
            for (int g = 0; g < G; ++g) sum += part[g * (wsize + bsize) + e];
            if (e < wsize)
                dw[e] += sum;
            else
                db[e - wsize] += sum;
        }
    }
}

}  // namespace deepid2
