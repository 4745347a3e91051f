// Locally-shared convolution as im2col + GEMM, one region at a time.
//
// Work unit: an image block (nb images, nb fixed by the shapes) x one region.
// Its output columns j = (image, position in region) are processed in chunks
// of about JC columns: im2col into colsT (q x jc, q = C*kh*kw), then
//   forward:   Yt  [K x jc] = W_r [K x q] * colsT
//   backward:  dWp [K x q] += dYt [K x jc] * colsT^T    (per image block)
//              dcolsT[q x jc] = W_r^T * dYt  -> col2im into dx
// In the backward a thread owns whole image blocks, so dx needs no atomics;
// dW/db partial sums per block are added in block order at the end, which
// makes the result independent of the thread count.
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

constexpr int JC = 256;  // output columns per GEMM chunk

struct Region {
    int oy0, oy1, ox0, ox1;
    int positions() const { return (oy1 - oy0) * (ox1 - ox0); }
};

Region region_of(const LsconvShape& s, int r) {
    const int ry = r / s.rx(), rx = r % s.rx();
    return {ry * s.rh, std::min(s.oh(), (ry + 1) * s.rh), rx * s.rw,
            std::min(s.ow(), (rx + 1) * s.rw)};
}

// Images per block: enough that a small region still fills a chunk, but at
// least 8 blocks when N allows, so threads have work. Depends on shapes only.
int images_per_block(const LsconvShape& s) {
    const int p = s.rh * s.rw;
    const int want = std::max(1, JC / p);
    return std::max(1, std::min(want, (s.n + 7) / 8));
}

// Offsets into x (the top-left input of each output column) for columns
// [j0, j0 + jc) of region `reg` over images [n0, n0 + nb).
void column_offsets(const LsconvShape& s, const Region& reg, int n0, int j0, int jc,
                    int64_t* off) {
    const int pw = reg.ox1 - reg.ox0, P = reg.positions();
    const int64_t plane = int64_t(s.h) * s.w, image = plane * s.c;
    for (int j = 0; j < jc; ++j) {
        const int jj = j0 + j, n = n0 + jj / P, p = jj % P;
        const int oy = reg.oy0 + p / pw, ox = reg.ox0 + p % pw;
        off[j] = n * image + int64_t(oy) * s.w + ox;
    }
}

void im2col(const LsconvShape& s, const float* x, const int64_t* off, int jc,
            float* colsT, int ld) {
    const int64_t plane = int64_t(s.h) * s.w;
    for (int c = 0; c < s.c; ++c)
        for (int i = 0; i < s.kh; ++i)
            for (int k = 0; k < s.kw; ++k) {
                const float* xs = x + c * plane + i * s.w + k;
                float* row = colsT + int64_t((c * s.kh + i) * s.kw + k) * ld;
                for (int j = 0; j < jc; ++j) row[j] = xs[off[j]];
            }
}

void col2im_add(const LsconvShape& s, const float* dcolsT, int ld, const int64_t* off,
                int jc, float* dx) {
    const int64_t plane = int64_t(s.h) * s.w;
    for (int c = 0; c < s.c; ++c)
        for (int i = 0; i < s.kh; ++i)
            for (int k = 0; k < s.kw; ++k) {
                float* xs = dx + c * plane + i * s.w + k;
                const float* row = dcolsT + int64_t((c * s.kh + i) * s.kw + k) * ld;
                for (int j = 0; j < jc; ++j) xs[off[j]] += row[j];
            }
}

// y index of output column: off into y for (n, k=0, oy, ox).
void output_offsets(const LsconvShape& s, const Region& reg, int n0, int j0, int jc,
                    int64_t* off) {
    const int pw = reg.ox1 - reg.ox0, P = reg.positions();
    const int64_t plane = int64_t(s.oh()) * s.ow(), image = plane * s.k;
    for (int j = 0; j < jc; ++j) {
        const int jj = j0 + j, n = n0 + jj / P, p = jj % P;
        const int oy = reg.oy0 + p / pw, ox = reg.ox0 + p % pw;
        off[j] = n * image + int64_t(oy) * s.ow() + ox;
    }
}

struct Scratch {
    std::vector<float> cols, tmp;
    std::vector<int64_t> xoff, yoff;
    explicit Scratch(const LsconvShape& s) {
        const int q = s.c * s.kh * s.kw;
        cols.resize(size_t(q) * JC);
        tmp.resize(size_t(std::max(q, s.k)) * JC);
        xoff.resize(JC);
        yoff.resize(JC);
    }
};

void check_pointers(const void* a, const char* na, const void* b, const char* nb_) {
    if (!a) throw std::invalid_argument(std::string("lsconv: ") + na + " is null");
    if (!b) throw std::invalid_argument(std::string("lsconv: ") + nb_ + " is null");
}

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
    check_pointers(x, "x", w, "w");
    check_pointers(b, "b", y, "y");
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx();
    const int nb = images_per_block(s), blocks = (s.n + nb - 1) / nb;
    const int64_t oplane = int64_t(s.oh()) * s.ow();
#pragma omp parallel
    {
        Scratch sc(s);
#pragma omp for schedule(dynamic) collapse(2)
        for (int blk = 0; blk < blocks; ++blk)
            for (int r = 0; r < R; ++r) {
                const Region reg = region_of(s, r);
                const int n0 = blk * nb, nimg = std::min(nb, s.n - n0);
                const int J = nimg * reg.positions();
                const float* wr = w + int64_t(r) * s.k * q;
                const float* br = b + int64_t(r) * s.k;
                for (int j0 = 0; j0 < J; j0 += JC) {
                    const int jc = std::min(JC, J - j0);
                    column_offsets(s, reg, n0, j0, jc, sc.xoff.data());
                    output_offsets(s, reg, n0, j0, jc, sc.yoff.data());
                    im2col(s, x, sc.xoff.data(), jc, sc.cols.data(), jc);
                    sgemm(s.k, jc, q, wr, q, 1, sc.cols.data(), jc, 1, false, sc.tmp.data(), jc);
                    for (int k = 0; k < s.k; ++k) {
                        const float* t = sc.tmp.data() + int64_t(k) * jc;
                        float* yk = y + k * oplane;
                        const float bk = br[k];
                        for (int j = 0; j < jc; ++j) {
                            const float v = t[j] + bk;
                            yk[sc.yoff[j]] = relu ? std::max(v, 0.0f) : v;
                        }
                    }
                }
            }
    }
}

void lsconv_backward(const LsconvShape& s, const float* x, const float* w, const float* y,
                     const float* dy, bool relu, float* dx, float* dw, float* db) {
    s.check();
    check_pointers(x, "x", w, "w");
    check_pointers(dy, "dy", dw, "dw");
    check_pointers(db, "db", relu ? y : x, "y");
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx();
    const int nb = images_per_block(s), blocks = (s.n + nb - 1) / nb;
    const int64_t oplane = int64_t(s.oh()) * s.ow();
    const int64_t image = int64_t(s.c) * s.h * s.w;
    const int64_t wsize = int64_t(R) * s.k * q, bsize = int64_t(R) * s.k;
    std::vector<float> part(size_t(blocks) * (wsize + bsize), 0.0f);

#pragma omp parallel
    {
        Scratch sc(s);
        std::vector<float> dyt(size_t(s.k) * JC);
#pragma omp for schedule(dynamic)
        for (int blk = 0; blk < blocks; ++blk) {
            const int n0 = blk * nb, nimg = std::min(nb, s.n - n0);
            float* pw = part.data() + blk * (wsize + bsize);
            float* pb = pw + wsize;
            if (dx) std::fill(dx + n0 * image, dx + (n0 + nimg) * image, 0.0f);
            for (int r = 0; r < R; ++r) {
                const Region reg = region_of(s, r);
                const int J = nimg * reg.positions();
                const float* wr = w + int64_t(r) * s.k * q;
                for (int j0 = 0; j0 < J; j0 += JC) {
                    const int jc = std::min(JC, J - j0);
                    column_offsets(s, reg, n0, j0, jc, sc.xoff.data());
                    output_offsets(s, reg, n0, j0, jc, sc.yoff.data());
                    for (int k = 0; k < s.k; ++k) {
                        const float* dyk = dy + k * oplane;
                        const float* yk = y ? y + k * oplane : nullptr;
                        float* d = dyt.data() + int64_t(k) * jc;
                        float sum = 0.0f;
                        for (int j = 0; j < jc; ++j) {
                            float g = dyk[sc.yoff[j]];
                            if (relu && !(yk[sc.yoff[j]] > 0.0f)) g = 0.0f;
                            d[j] = g;
                            sum += g;
                        }
                        pb[r * s.k + k] += sum;
                    }
                    im2col(s, x, sc.xoff.data(), jc, sc.cols.data(), jc);
                    // dW_r [K x q] += dYt [K x jc] * colsT^T (colsT read transposed)
                    sgemm(s.k, q, jc, dyt.data(), jc, 1, sc.cols.data(), 1, jc, true,
                          pw + int64_t(r) * s.k * q, q);
                    if (dx) {
                        // dcolsT [q x jc] = W_r^T [q x K] * dYt [K x jc]
                        sgemm(q, jc, s.k, wr, 1, q, dyt.data(), jc, 1, false, sc.tmp.data(), jc);
                        col2im_add(s, sc.tmp.data(), jc, sc.xoff.data(), jc, dx);
                    }
                }
            }
        }
        // Reduce the block partials in block order.
#pragma omp for schedule(static)
        for (int64_t e = 0; e < wsize + bsize; ++e) {
            float sum = 0.0f;
            for (int blk = 0; blk < blocks; ++blk) sum += part[blk * (wsize + bsize) + e];
            if (e < wsize)
                dw[e] += sum;
            else
                db[e - wsize] += sum;
        }
    }
}

}  // namespace deepid2
