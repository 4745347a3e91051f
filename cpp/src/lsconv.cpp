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
//
// lsconv_pool_forward runs the forward of a block of images into this
// thread's scratch and pools it there. lsconv_pool_backward works from the
// pooled gradient's nonzero terms instead of GEMMs (see pool_backward).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "deepid2/ops.h"
#include "gemm.h"
#include "pool.h"
#include "runs.h"

namespace deepid2 {
namespace {

constexpr int JC = 256;  // output columns per GEMM chunk (a multiple of NR)
constexpr int kSmallRegion = 16;  // regions of at most this many neurons: per-region tasks
constexpr int kGroups = 16;       // image groups (dW partial sums) for wider regions
constexpr int kPackedWgradMaps = 32;  // weight gradient by packed GEMM from this many maps

// Scratch that lives as long as the thread: OpenMP's pool threads keep theirs
// between calls, so large buffers are not faulted in afresh every call.
float* thread_scratch(int slot, size_t n) {
    static thread_local std::vector<float> bufs[7];
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
// outputs at y + yoff (+ k * OH*OW), both advancing by one per column; yoff
// is image n's offset plus yin, the offset inside its K x OH x OW block.
struct Run {
    int j, len, n;
    int64_t xoff, yoff, yin;
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
        const int64_t yin = int64_t(oy) * s.ow() + ox;
        runs.push_back({j, len, n, n * ximage + int64_t(oy) * s.w + ox, n * yimage + yin, yin});
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

void im2col(const float* x, const std::vector<int64_t>& taps, const std::vector<Run>& runs,
            int jc, int ld, float* colsT) {
    for (size_t p = 0; p < taps.size(); ++p) {
        float* row = colsT + p * ld;
        for (const Run& r : runs) {
            copy_floats(x + r.xoff + taps[p], r.len, row + r.j);
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

// Locally connected layers (1 x 1 regions) have one column per image, so
// im2col and col2im would move one float per run. They work on x in
// batch-minor order instead (xt: C*H*W rows of N images), where a tap's row
// of colsT is a contiguous slice of a row of xt.
bool single_positions(const LsconvShape& s) { return s.rh == 1 && s.rw == 1; }

std::vector<float> batch_minor(const LsconvShape& s, const float* x) {
    const int64_t e = int64_t(s.c) * s.h * s.w;
    std::vector<float> xt(size_t(e) * s.n);
    transpose(s.n, int(e), x, e, xt.data(), s.n);
    return xt;
}

// colsT for the region whose input window starts at xpos, images [n0, n0 + jc).
void im2col_batch_minor(const float* xt, int n, const std::vector<int64_t>& taps, int64_t xpos,
                        int n0, int jc, int ld, float* colsT) {
    for (size_t p = 0; p < taps.size(); ++p) {
        float* row = colsT + p * ld;
        copy_floats(xt + (taps[p] + xpos) * n + n0, jc, row);
        std::fill(row + jc, row + ld, 0.0f);
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

namespace {

// The forward of region r over images [n0, n0 + nimg): image n's outputs go
// to ybase + (n - nbase) * K*OH*OW.
struct ForwardTask {
    const LsconvShape& s;
    const float *x, *b;
    bool relu;
    const std::vector<int64_t>& taps;
    const std::vector<float>& wpack;
    const float* xt;  // x in batch-minor order (1 x 1 regions), else null

    void run(int n0, int nimg, int r, float* ybase, int nbase, float* colsT, float* yt,
             std::vector<Run>& runs) const {
        const int q = int(taps.size());
        const Region reg = region_of(s, r);
        const int J = nimg * reg.positions();
        const int64_t oplane = int64_t(s.oh()) * s.ow(), yimage = s.k * oplane;
        const float* br = b + int64_t(r) * s.k;
        const float* wr = wpack.data() + r * packed_a_size(s.k, q);
        for (int j0 = 0; j0 < J; j0 += JC) {
            const int jc = std::min(JC, J - j0), ld = round_up(jc, gemm_nr());
            chunk_runs(s, reg, n0, j0, jc, runs);
            if (xt)
                im2col_batch_minor(xt, s.n, taps, int64_t(reg.oy0) * s.w + reg.ox0, n0 + j0, jc,
                                   ld, colsT);
            else
                im2col(x, taps, runs, jc, ld, colsT);
            sgemm_panels(s.k, jc, q, wr, colsT, ld, gemm_nr(), false, yt, ld);
            for (int k = 0; k < s.k; ++k) {
                const float* t = yt + int64_t(k) * ld;
                const float bk = br[k];
                for (const Run& run : runs)
                    add_bias_act(t + run.j, run.len, bk, relu,
                                 ybase + (run.n - nbase) * yimage + run.yin + k * oplane);
            }
        }
    }
};

void check_pool(const LsconvShape& s, int ps) {
    if (ps < 1 || ps > s.oh() || ps > s.ow())
        throw std::invalid_argument("lsconv_pool: pool window " + std::to_string(ps) +
                                    " must be at least 1 and fit the output map " +
                                    std::to_string(s.oh()) + "x" + std::to_string(s.ow()));
}

}  // namespace

void lsconv_forward(const LsconvShape& s, const float* x, const float* w, const float* b,
                    bool relu, float* y) {
    s.check();
    require(x, "x");
    require(w, "w");
    require(b, "b");
    require(y, "y");
    const int R = s.ry() * s.rx();
    // No reduction here: blocks as big as a chunk; regions give parallelism.
    const int nb = std::max(1, std::min(s.n, JC / (s.rh * s.rw)));
    const int blocks = (s.n + nb - 1) / nb;
    const std::vector<int64_t> taps = tap_offsets(s);
    const std::vector<float> wpack = pack_weights(s, w, false);
    const std::vector<float> xt = single_positions(s) ? batch_minor(s, x) : std::vector<float>();
    const ForwardTask task{s, x, b, relu, taps, wpack, xt.empty() ? nullptr : xt.data()};
#pragma omp parallel
    {
        float* colsT = thread_scratch(0, taps.size() * JC);
        float* yt = thread_scratch(1, size_t(s.k) * JC);
        std::vector<Run> runs;
#pragma omp for schedule(dynamic) collapse(2)
        for (int blk = 0; blk < blocks; ++blk)
            for (int r = 0; r < R; ++r) {
                const int n0 = blk * nb;
                task.run(n0, std::min(nb, s.n - n0), r, y, 0, colsT, yt, runs);
            }
    }
}

void lsconv_pool_forward(const LsconvShape& s, const float* x, const float* w, const float* b,
                         bool relu, int ps, float* yp, int32_t* argmax) {
    s.check();
    check_pool(s, ps);
    require(x, "x");
    require(w, "w");
    require(b, "b");
    require(yp, "y");
    require(argmax, "argmax");
    const int R = s.ry() * s.rx();
    const int64_t yimage = int64_t(s.k) * s.oh() * s.ow();
    const int64_t pimage = int64_t(s.k) * (s.oh() / ps) * (s.ow() / ps);
    // A task is a block of images, every region of it, then its pooling: the
    // convolution's output stays in this thread's cache. Blocks are cut for
    // the threads' sake only; they never change a result.
    const int nb = std::max(1, std::min({s.n, JC / (s.rh * s.rw),
                                         (s.n + 8 * max_threads() - 1) / (8 * max_threads())}));
    const int blocks = (s.n + nb - 1) / nb;
    const std::vector<int64_t> taps = tap_offsets(s);
    const std::vector<float> wpack = pack_weights(s, w, false);
    const std::vector<float> xt = single_positions(s) ? batch_minor(s, x) : std::vector<float>();
    const ForwardTask task{s, x, b, relu, taps, wpack, xt.empty() ? nullptr : xt.data()};
#pragma omp parallel
    {
        float* colsT = thread_scratch(0, taps.size() * JC);
        float* yt = thread_scratch(1, size_t(s.k) * JC);
        float* yblk = thread_scratch(6, size_t(nb) * yimage);
        std::vector<Run> runs;
#pragma omp for schedule(dynamic)
        for (int blk = 0; blk < blocks; ++blk) {
            const int n0 = blk * nb, nimg = std::min(nb, s.n - n0);
            for (int r = 0; r < R; ++r) task.run(n0, nimg, r, yblk, n0, colsT, yt, runs);
            detail::maxpool_planes(int64_t(nimg) * s.k, s.oh(), s.ow(), ps, yblk,
                                   yp + n0 * pimage, argmax + n0 * pimage);
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
    const float* xt;  // x in batch-minor order (1 x 1 regions), else null

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
                    copy_floats(dyk, run.len, d + run.j);
                }
            }
            std::fill(d + jc, d + ld, 0.0f);
            db_r[k] += lane_sum(d, ld);
        }
        if (xt) {
            const Region reg = region_of(s, r);
            im2col_batch_minor(xt, s.n, taps, int64_t(reg.oy0) * s.w + reg.ox0, n0 + j0, jc, ld,
                               colsT);
        } else {
            im2col(x, taps, runs, jc, ld, colsT);
        }
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
    const std::vector<float> xt = single_positions(s) ? batch_minor(s, x) : std::vector<float>();
    const BackwardChunk chunk{s, x, y, dy, relu, taps, xt.empty() ? nullptr : xt.data()};

    if (s.rh * s.rw <= kSmallRegion) {
        // Small regions: one task per region over all N images owns dw_r and
        // db_r outright. dcolsT of every region is kept, then scattered into
        // dx image by image, so no two threads write the same dx element.
        std::vector<int64_t> col0(R + 1, 0);  // column offset of region r
        for (int r = 0; r < R; ++r)
            col0[r + 1] = col0[r] + col_ld(s.n * region_of(s, r).positions());
        float* dcols = dx ? thread_scratch_caller(size_t(q) * col0[R]) : nullptr;
        std::vector<float> dxt(dx && !xt.empty() ? size_t(image) * s.n : 0);
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
            if (dx && !xt.empty()) {
                // Batch-minor: dxt's rows of channel c only get channel c's
                // taps, so channels are independent tasks; then dx = dxt^T.
                const int plane = s.h * s.w, per = q / s.c;
#pragma omp for schedule(static)
                for (int c = 0; c < s.c; ++c) {
                    float* rows = dxt.data() + int64_t(c) * plane * s.n;
                    std::fill(rows, rows + int64_t(plane) * s.n, 0.0f);
                    for (int r = 0; r < R; ++r) {
                        const Region reg = region_of(s, r);
                        const int64_t xpos = int64_t(reg.oy0) * s.w + reg.ox0;
                        for (int p = c * per; p < (c + 1) * per; ++p)
                            add_to(dcols + q * col0[r] + p * (col0[r + 1] - col0[r]), s.n,
                                   dxt.data() + (taps[p] + xpos) * s.n);
                    }
                }
#pragma omp for schedule(static)
                for (int c = 0; c < s.c; ++c)
                    transpose(plane, s.n, dxt.data() + int64_t(c) * plane * s.n, s.n,
                              dx + int64_t(c) * plane, image);
            } else if (dx) {
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


namespace {

// ---------------------------------------------------------------------------
// Backward of lsconv_pool. Of the unpooled gradient only each window's argmax
// is nonzero (a quarter of it with 2x2 windows), so rather than GEMMs over a
// mostly-zero gradient, each (map k, window) term is taken once: with g its
// pooled gradient (skipped under the ReLU mask y_pooled <= 0) and X the
// patch of x under its argmax position,
//   dW_r[k] += g X,   db_r[k] += g,   dpatch(position) += g W_r[k].
// Patches are rows of a position-major im2col (P x qp, taps padded to whole
// vectors); the dpatch rows are transposed to taps x positions and added
// into dx by col2im. The order of every sum is fixed: maps, windows within
// an image, images within a group, then groups.

// dst[0, 16 NV) += sum_i val[i] * rows[idx[i] * ld + (0, 16 NV)], with U
// partial sums per vector so that FMA latency does not serialise the loop.
template <int NV, int U>
void gather_axpy(int cnt, const int* idx, const float* val, const float* rows, int64_t ld,
                 float* dst) {
    wvec acc[U][NV];
    for (int u = 0; u < U; ++u)
        for (int v = 0; v < NV; ++v) acc[u][v] = wvec{};
    int i = 0;
    for (; i + U <= cnt; i += U)
        for (int u = 0; u < U; ++u) {
            const float* row = rows + idx[i + u] * ld;
            for (int v = 0; v < NV; ++v) acc[u][v] += val[i + u] * wload(row + v * WV);
        }
    for (; i < cnt; ++i) {
        const float* row = rows + idx[i] * ld;
        for (int v = 0; v < NV; ++v) acc[0][v] += val[i] * wload(row + v * WV);
    }
    for (int v = 0; v < NV; ++v) {
        wvec sum = acc[0][v];
        for (int u = 1; u < U; ++u) sum += acc[u][v];
        wstore(dst + v * WV, wload(dst + v * WV) + sum);
    }
}

// gather_axpy over nvec vectors, in blocks of at most 8 (registers).
void gather_axpy(int nvec, int cnt, const int* idx, const float* val, const float* rows,
                 int64_t ld, float* dst) {
    for (int v0 = 0; v0 < nvec; v0 += 8) {
        const float* r = rows + v0 * WV;
        float* d = dst + v0 * WV;
        switch (std::min(8, nvec - v0)) {
            case 1: gather_axpy<1, 4>(cnt, idx, val, r, ld, d); break;
            case 2: gather_axpy<2, 4>(cnt, idx, val, r, ld, d); break;
            case 3: gather_axpy<3, 2>(cnt, idx, val, r, ld, d); break;
            case 4: gather_axpy<4, 2>(cnt, idx, val, r, ld, d); break;
            case 5: gather_axpy<5, 2>(cnt, idx, val, r, ld, d); break;
            case 6: gather_axpy<6, 1>(cnt, idx, val, r, ld, d); break;
            case 7: gather_axpy<7, 1>(cnt, idx, val, r, ld, d); break;
            default: gather_axpy<8, 1>(cnt, idx, val, r, ld, d); break;
        }
    }
}

std::invalid_argument bad_argmax() {
    return std::invalid_argument("lsconv_pool: argmax holds an index outside its window");
}

// Whether offset d from a window's top-left position (rows w apart) lies in
// the s x s window.
inline bool in_window(int d, int w, int s) {
    if (s == 2) return d == 0 || d == 1 || d == w || d == w + 1;
    return d >= 0 && d < s * w && d % w < s;
}

// One map's terms of one image: the argmax positions (pos) and gradients
// (val) of its PO windows, in window order, leaving out those under the ReLU
// mask (yp <= 0, when yp is given); returns their number. wbase: each
// window's top-left position. Sets bad for an argmax outside its window.
int collect_terms(int PO, const int32_t* am, const int* wbase, const float* yp, const float* dp,
                  int OW, int ps, int* pos, float* val, bool& bad) {
    int c = 0, o = 0;
#if defined(__AVX512F__)
    if (ps == 2) {  // 16 windows at a time; kept lanes packed by vector compression
        const __m512i one = _mm512_set1_epi32(1), row = _mm512_set1_epi32(OW),
                      row1 = _mm512_set1_epi32(OW + 1);
        __mmask16 ok = 0xFFFF;
        for (; o + 16 <= PO; o += 16) {
            const __m512i a = _mm512_loadu_si512(am + o);
            const __m512i d = _mm512_sub_epi32(a, _mm512_loadu_si512(wbase + o));
            ok &= _mm512_cmpeq_epi32_mask(d, _mm512_setzero_si512()) |
                  _mm512_cmpeq_epi32_mask(d, one) | _mm512_cmpeq_epi32_mask(d, row) |
                  _mm512_cmpeq_epi32_mask(d, row1);
            const __mmask16 keep =
                yp ? _mm512_cmp_ps_mask(_mm512_loadu_ps(yp + o), _mm512_setzero_ps(), _CMP_GT_OQ)
                   : __mmask16(0xFFFF);
            // register compression, then a whole store: the compressing store
            // to memory is slow on some CPUs (AMD Zen 4)
            _mm512_storeu_si512(pos + c, _mm512_maskz_compress_epi32(keep, a));
            _mm512_storeu_ps(val + c, _mm512_maskz_compress_ps(keep, _mm512_loadu_ps(dp + o)));
            c += __builtin_popcount(keep);
        }
        bad = bad || ok != 0xFFFF;
    }
#endif
    for (; o < PO; ++o) {
        bad = bad || !in_window(am[o] - wbase[o], OW, ps);
        if (yp && !(yp[o] > 0.0f)) continue;
        pos[c] = am[o];
        val[c++] = dp[o];
    }
    return c;
}

void pool_backward(const LsconvShape& s, int ps, const float* x, const float* w,
                   const float* yp, const int32_t* argmax, const float* dyp, float* dx,
                   float* dw, float* db) {
    const int q = s.c * s.kh * s.kw, qp = round_up(q, WV), nvec = qp / WV, R = s.ry() * s.rx();
    const int OH = s.oh(), OW = s.ow(), P = OH * OW, PO = (OH / ps) * (OW / ps), K = s.k;
    const int ldp = round_up(P, WV);
    const int64_t image = int64_t(s.c) * s.h * s.w, pimage = int64_t(K) * PO;
    std::vector<int> region(P);  // of each output position
    for (int p = 0; p < P; ++p) region[p] = (p / OW / s.rh) * s.rx() + p % OW / s.rw;
    std::vector<int> wbase(PO);  // each window's top-left position
    for (int o = 0; o < PO; ++o) wbase[o] = (o / (OW / ps)) * ps * OW + o % (OW / ps) * ps;
    std::vector<float> wp;  // W_r[k] rows padded to qp
    if (dx) {
        wp.assign(size_t(R) * K * qp, 0.0f);
        for (int64_t e = 0; e < int64_t(R) * K; ++e)
            std::copy(w + e * q, w + (e + 1) * q, wp.data() + e * qp);
    }
    const std::vector<int64_t> taps = tap_offsets(s);
    const Region whole{0, OH, 0, OW};  // col2im by output rows
    // Groups of images with their own partial sums, added in group order.
    const int G = std::min(s.n, kGroups);
    const int64_t wsize = int64_t(R) * K * qp, bsize = int64_t(R) * K;
    float* part = thread_scratch_caller(size_t(G) * (wsize + bsize));
    bool bad = false;  // an argmax outside its window
#pragma omp parallel
    {
        float* cols = thread_scratch(0, size_t(P) * qp);
        float* dcols = dx ? thread_scratch(1, size_t(P) * qp) : nullptr;
        float* colsT = thread_scratch(4, size_t(qp) * ldp);  // also dcols transposed
        std::fill(colsT + int64_t(q) * ldp, colsT + int64_t(qp) * ldp, 0.0f);  // padding taps
        // (+ WV: collect_terms stores whole vectors)
        std::vector<int> pos(size_t(K) * PO + WV), cnt(K), rpos(PO), start(P + 1), cursor(P),
            mapk(size_t(K) * PO);
        std::vector<float> val(size_t(K) * PO + WV), rval(PO), mval(size_t(K) * PO);
        std::vector<Run> runs;
#pragma omp for schedule(dynamic) reduction(|| : bad)
        for (int g = 0; g < G; ++g) {
            const int n0 = int(int64_t(s.n) * g / G), n1 = int(int64_t(s.n) * (g + 1) / G);
            float* pw = part + g * (wsize + bsize);
            float* pb = pw + wsize;
            std::fill(pw, pw + wsize + bsize, 0.0f);
            for (int n = n0; n < n1 && !bad; ++n) {
                // the terms: per map, its windows' argmax positions and gradients
                for (int k = 0; k < K; ++k) {
                    const int64_t o0 = n * pimage + int64_t(k) * PO;
                    cnt[k] = collect_terms(PO, argmax + o0, wbase.data(), yp ? yp + o0 : nullptr,
                                           dyp + o0, OW, ps, pos.data() + k * PO,
                                           val.data() + k * PO, bad);
                }
                if (bad) break;
                // the patches: im2col by output rows, transposed to one row per position
                chunk_runs(s, whole, n, 0, P, runs);
                im2col(x, taps, runs, P, ldp, colsT);
                transpose(qp, P, colsT, ldp, cols, qp);
                // dW, db: per map and region
                for (int k = 0; k < K; ++k)
                    for (int r = 0; r < R; ++r) {
                        const int* ip = pos.data() + k * PO;
                        const float* vp = val.data() + k * PO;
                        int m = cnt[k];
                        if (R > 1) {  // this region's terms only
                            m = 0;
                            for (int i = 0; i < cnt[k]; ++i)
                                if (region[ip[i]] == r) {
                                    rpos[m] = ip[i];
                                    rval[m++] = vp[i];
                                }
                            ip = rpos.data();
                            vp = rval.data();
                        }
                        pb[r * K + k] += lane_sum(vp, m);
                        gather_axpy(nvec, m, ip, vp, cols, qp, pw + (int64_t(r) * K + k) * qp);
                    }
                if (!dx) continue;
                // dx: the terms by position (maps in order), each position's
                // dpatch = sum g W_r[k], then col2im
                std::fill(start.begin(), start.end(), 0);
                for (int k = 0; k < K; ++k)
                    for (int i = 0; i < cnt[k]; ++i) ++start[pos[k * PO + i] + 1];
                for (int p = 0; p < P; ++p) start[p + 1] += start[p];
                std::copy(start.begin(), start.end() - 1, cursor.begin());
                for (int k = 0; k < K; ++k)
                    for (int i = 0; i < cnt[k]; ++i) {
                        const int e = cursor[pos[k * PO + i]]++;
                        mapk[e] = k;
                        mval[e] = val[k * PO + i];
                    }
                for (int p = 0; p < P; ++p) {
                    float* row = dcols + int64_t(p) * qp;
                    std::fill(row, row + qp, 0.0f);
                    gather_axpy(nvec, start[p + 1] - start[p], mapk.data() + start[p],
                                mval.data() + start[p], wp.data() + int64_t(region[p]) * K * qp, qp,
                                row);
                }
                transpose(P, q, dcols, qp, colsT, ldp);
                std::fill(dx + n * image, dx + (n + 1) * image, 0.0f);
                col2im_add(colsT, ldp, taps, runs, dx);
            }
        }
        // After a bad argmax nothing of dw, db is touched (dx is the caller's
        // fresh output, left unspecified).
        if (!bad) {
#pragma omp for schedule(static)
            for (int64_t e = 0; e < wsize + bsize; ++e) {
                if (e < wsize && e % qp >= q) continue;  // padding
                float sum = 0.0f;
                for (int g = 0; g < G; ++g) sum += part[g * (wsize + bsize) + e];
                if (e < wsize)
                    dw[e / qp * q + e % qp] += sum;
                else
                    db[e - wsize] += sum;
            }
        }
    }
    if (bad) throw bad_argmax();
}

}  // namespace

void lsconv_pool_backward(const LsconvShape& s, const float* x, const float* w, const float* yp,
                          const int32_t* argmax, const float* dyp, bool relu, int ps, float* dx,
                          float* dw, float* db) {
    s.check();
    check_pool(s, ps);
    require(x, "x");
    require(w, "w");
    require(argmax, "argmax");
    require(dyp, "dy");
    require(dw, "dw");
    require(db, "db");
    if (relu) require(yp, "y");
    pool_backward(s, ps, x, w, relu ? yp : nullptr, argmax, dyp, dx, dw, db);
}

}  // namespace deepid2
