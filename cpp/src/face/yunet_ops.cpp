#include "yunet_ops.h"

#include <algorithm>
#include <cstring>

#include "../gemm.h"
#include "../simd.h"

namespace deepid2 {
namespace face {

namespace {

using simd::VW;
using simd::vf;
using simd::load;
using simd::store;

inline vf splat(float f) { return vf{} + f; }
inline vf relu_v(vf v) { return v > vf{} ? v : vf{}; }

// Past this many rows (c/groups * kh * kw) a GEMM conv keeps its weights as
// they are and leaves the K blocking to sgemm: a packed column block of x
// stays small.
constexpr int64_t kMaxPackedK = 4096;
// Floats in one packed column block of x (or of its im2col): 64 KB.
constexpr int64_t kBlockFloats = 16384;

// y (m rows, ld apart, n columns) += bias per row, then max(y, 0) when relu.
void bias_relu(int m, int n, const float* bias, bool relu, float* y, int64_t ld) {
    if (!relu && !bias) return;
    for (int i = 0; i < m; ++i) {
        float* r = y + i * ld;
        const float b = bias ? bias[i] : 0.f;
        const vf vb = splat(b);
        int j = 0;
        for (; j + VW <= n; j += VW) {
            const vf v = load(r + j) + vb;
            store(r + j, relu ? relu_v(v) : v);
        }
        for (; j < n; ++j) r[j] = relu ? std::max(r[j] + b, 0.f) : r[j] + b;
    }
}

// Grows v to at least n floats, never shrinks it: shrinking and growing
// again would zero-fill the growth on every call.
float* at_least(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

// 3x3, stride 1, padding 1 (every depthwise conv of YuNet): one pass per
// output row over three input rows (a zero row above and below the image),
// whole registers in the middle, the columns near the edges one by one.
void depthwise3x3(int h, int w, const float* x, const float* k, float bias, bool relu,
                  float* y, std::vector<float>& scratch) {
    float* zero = at_least(scratch, size_t(w));
    std::fill(zero, zero + w, 0.f);
    const vf k0 = splat(k[0]), k1 = splat(k[1]), k2 = splat(k[2]), k3 = splat(k[3]),
             k4 = splat(k[4]), k5 = splat(k[5]), k6 = splat(k[6]), k7 = splat(k[7]),
             k8 = splat(k[8]), vb = splat(bias);
    for (int oy = 0; oy < h; ++oy) {
        const float* r0 = oy > 0 ? x + size_t(oy - 1) * w : zero;
        const float* r1 = x + size_t(oy) * w;
        const float* r2 = oy + 1 < h ? x + size_t(oy + 1) * w : zero;
        float* out = y + size_t(oy) * w;
        const auto one = [&](int ox) {
            const auto at = [&](const float* r, int ix) { return ix >= 0 && ix < w ? r[ix] : 0.f; };
            float v = 0.f;
            for (int kx = 0; kx < 3; ++kx)
                v += k[kx] * at(r0, ox + kx - 1) + k[3 + kx] * at(r1, ox + kx - 1) +
                     k[6 + kx] * at(r2, ox + kx - 1);
            v += bias;
            out[ox] = relu ? std::max(v, 0.f) : v;
        };
        const auto reg = [&](int ox) {  // columns ox .. ox + VW - 1, reading ox - 1 .. ox + VW
            vf v = k0 * load(r0 + ox - 1) + k1 * load(r0 + ox) + k2 * load(r0 + ox + 1) +
                   k3 * load(r1 + ox - 1) + k4 * load(r1 + ox) + k5 * load(r1 + ox + 1) +
                   k6 * load(r2 + ox - 1) + k7 * load(r2 + ox) + k8 * load(r2 + ox + 1);
            v += vb;
            store(out + ox, relu ? relu_v(v) : v);
        };
        one(0);
        if (w < VW + 2) {
            for (int ox = 1; ox < w; ++ox) one(ox);
            continue;
        }
        for (int ox = 1; ox + VW < w; ox += VW) reg(ox);
        reg(w - 1 - VW);  // the rest, overlapping the last register
        one(w - 1);
    }
}

// Any other depthwise shape: the input copied into a zero-padded plane first
// so the inner loop needs no bounds checks.
void depthwise(const ConvShape& s, const float* x, const float* k, float bias, float* y,
               std::vector<float>& scratch) {
    const int ph = s.h + s.pt + s.pb, pw = s.w + s.pl + s.pr, oh = s.oh(), ow = s.ow();
    float* pad = at_least(scratch, size_t(ph) * pw);
    std::fill(pad, pad + size_t(ph) * pw, 0.f);
    for (int r = 0; r < s.h; ++r)
        std::memcpy(pad + size_t(r + s.pt) * pw + s.pl, x + size_t(r) * s.w, sizeof(float) * s.w);
    for (int oy = 0; oy < oh; ++oy) {
        float* out = y + size_t(oy) * ow;
        std::fill(out, out + ow, bias);
        for (int ky = 0; ky < s.kh; ++ky) {
            const float* in = pad + size_t(oy * s.sh + ky) * pw;
            for (int kx = 0; kx < s.kw; ++kx) {
                const float wk = k[ky * s.kw + kx];
                const float* row = in + kx;
                for (int ox = 0; ox < ow; ++ox) out[ox] += wk * row[size_t(ox) * s.sw];
            }
        }
    }
}

// 3x3, stride 2, padding 1 at the top and left, one group, few input
// channels: YuNet's first conv, on the image. Per output row, the three
// input rows of every channel are split into even and odd columns (zero
// outside the image), so each tap is one register load: tap kx of output
// column ox reads input column 2 ox - 1 + kx, i.e. odd[ox], even[ox],
// odd[ox + 1] with odd[j] = x[2 j - 1]. Up to MB output channels at a time.
constexpr int kDirectMaxC = 8;

bool direct_3x3s2(const ConvShape& s) {
    return s.groups == 1 && s.c <= kDirectMaxC && s.kh == 3 && s.kw == 3 && s.sh == 2 &&
           s.sw == 2 && s.pt == 1 && s.pl == 1;
}

template <int MB>
void conv3x3s2_block(int c, int m0, int ow, int len, const float* rows, const float* weight,
                     const float* bias, bool relu, float* y, int64_t plane) {
    for (int ox = 0; ox < ow; ox += VW) {
        vf acc[MB];
        for (int i = 0; i < MB; ++i) acc[i] = vf{};
        for (int ci = 0; ci < c; ++ci)
            for (int ky = 0; ky < 3; ++ky) {
                const float* even = rows + (size_t(ci) * 3 + ky) * 2 * len;
                const float* odd = even + len;
                const vf t0 = load(odd + ox), t1 = load(even + ox), t2 = load(odd + ox + 1);
                const float* wk = weight + (size_t(m0) * c + ci) * 9 + ky * 3;
                for (int i = 0; i < MB; ++i) {
                    const float* wi = wk + size_t(i) * c * 9;
                    acc[i] += wi[0] * t0 + wi[1] * t1 + wi[2] * t2;
                }
            }
        const int n = std::min(VW, ow - ox);
        for (int i = 0; i < MB; ++i) {
            vf v = acc[i] + (bias ? bias[m0 + i] : 0.f);
            if (relu) v = relu_v(v);
            float* out = y + (m0 + i) * plane + ox;
            if (n == VW) {
                store(out, v);
            } else {
                alignas(64) float tmp[VW];
                store(tmp, v);
                std::copy(tmp, tmp + n, out);
            }
        }
    }
}

void conv3x3s2(const ConvShape& s, const float* x, const ConvWeights& w, bool relu, float* y,
               std::vector<float>& rows) {
    const int oh = s.oh(), ow = s.ow();
    const int64_t plane = int64_t(oh) * ow;
    const int len = (ow + VW - 1) / VW * VW + VW;  // odd[ox + 1] of the last register
    float* buf = at_least(rows, size_t(s.c) * 3 * 2 * len);
    for (int oy = 0; oy < oh; ++oy) {
        for (int ci = 0; ci < s.c; ++ci)
            for (int ky = 0; ky < 3; ++ky) {
                float* even = buf + (size_t(ci) * 3 + ky) * 2 * len;
                float* odd = even + len;
                std::fill(even, even + 2 * len, 0.f);
                const int iy = 2 * oy - 1 + ky;
                if (iy < 0 || iy >= s.h) continue;
                const float* in = x + (size_t(ci) * s.h + iy) * s.w;
                const int ne = std::min(len, (s.w + 1) / 2), no = std::min(len, s.w / 2 + 1);
                for (int j = 0; j < ne; ++j) even[j] = in[2 * j];
                for (int j = 1; j < no; ++j) odd[j] = in[2 * j - 1];
            }
        float* yr = y + int64_t(oy) * ow;
        int m0 = 0;
        for (; m0 + 16 <= s.m; m0 += 16)
            conv3x3s2_block<16>(s.c, m0, ow, len, buf, w.weight, w.bias, relu, yr, plane);
        for (; m0 + 4 <= s.m; m0 += 4)
            conv3x3s2_block<4>(s.c, m0, ow, len, buf, w.weight, w.bias, relu, yr, plane);
        for (; m0 < s.m; ++m0)
            conv3x3s2_block<1>(s.c, m0, ow, len, buf, w.weight, w.bias, relu, yr, plane);
    }
}

// Columns [j0, j0 + nc) of the im2col matrix of the channels [0, cg) (rows
// (ci, ky, kx), columns (oy, ox)) in packed-B panel order (gemm.h).
void im2col_packed(const ConvShape& s, const float* x, int cg, int64_t j0, int nc, float* out) {
    const int nr = gemm_nr(), ow = s.ow();
    const int64_t kdim = int64_t(cg) * s.kh * s.kw;
    for (int jp = 0; jp < nc; jp += nr) {
        float* panel = out + int64_t(jp / nr) * kdim * nr;
        for (int jj = 0; jj < nr; ++jj) {
            float* o = panel + jj;
            if (jp + jj >= nc) {
                for (int64_t p = 0; p < kdim; ++p) o[p * nr] = 0.f;
                continue;
            }
            const int64_t j = j0 + jp + jj;
            const int iy0 = int(j / ow) * s.sh - s.pt, ix0 = int(j % ow) * s.sw - s.pl;
            for (int ci = 0; ci < cg; ++ci)
                for (int ky = 0; ky < s.kh; ++ky) {
                    const int iy = iy0 + ky;
                    const float* row = x + (int64_t(ci) * s.h + iy) * s.w;
                    for (int kx = 0; kx < s.kw; ++kx, o += nr) {
                        const int ix = ix0 + kx;
                        *o = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w ? row[ix] : 0.f;
                    }
                }
        }
    }
}

// Rows (ci, ky, kx) x columns [j0, j0 + nc) (oy, ox) of the channels [0, cg),
// row-major with rows nc apart.
void im2col(const ConvShape& s, const float* x, int cg, int64_t j0, int nc, float* cols) {
    const int ow = s.ow();
    float* out = cols;
    for (int ci = 0; ci < cg; ++ci)
        for (int ky = 0; ky < s.kh; ++ky)
            for (int kx = 0; kx < s.kw; ++kx)
                for (int64_t j = j0; j < j0 + nc; ++j) {
                    const int iy = int(j / ow) * s.sh - s.pt + ky, ix = int(j % ow) * s.sw - s.pl + kx;
                    *out++ = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w
                                 ? x[(int64_t(ci) * s.h + iy) * s.w + ix] : 0.f;
                }
}

// One group of a conv through the SGEMM, block by block of output columns:
// with packed weights, x itself where its rows are whole NR-column panels
// (1x1 convs on planes of a multiple of NR), else each block of x or of its
// im2col packed; unpacked weights (a damaged model's) through sgemm.
void gemm_conv(const ConvShape& s, const float* x, const float* weight, const float* packed,
               const float* bias, bool relu, float* y, std::vector<float>& block) {
    const int cg = s.c / s.groups, mg = s.m / s.groups, nr = gemm_nr();
    const int64_t plane = int64_t(s.oh()) * s.ow(), kdim = int64_t(cg) * s.kh * s.kw;
    const bool pointwise = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 &&
                           s.pt == 0 && s.pl == 0 && s.pb == 0 && s.pr == 0;
    const bool x_as_panels = packed && pointwise && plane % nr == 0;
    // columns per block: whole panels, the block about kBlockFloats
    const int64_t cols = std::max<int64_t>(nr, kBlockFloats / std::max<int64_t>(kdim, 1) / nr * nr);
    const int64_t block_cols = std::min(cols, plane);
    float* buf = nullptr;
    if (packed && !x_as_panels) buf = at_least(block, size_t(packed_b_size(int(kdim), int(block_cols))));
    else if (!packed && !pointwise) buf = at_least(block, size_t(kdim * block_cols));
    for (int64_t j0 = 0; j0 < plane; j0 += cols) {
        const int nc = int(std::min(cols, plane - j0));
        if (x_as_panels) {
            sgemm_panels(mg, nc, int(kdim), packed, x + j0, plane, nr, false, y + j0, plane);
        } else if (packed) {
            if (pointwise) pack_b(int(kdim), nc, x + j0, plane, 1, buf);
            else im2col_packed(s, x, cg, j0, nc, buf);
            sgemm_packed(mg, nc, int(kdim), packed, buf, false, y + j0, plane);
        } else if (pointwise) {
            sgemm(mg, nc, int(kdim), weight, kdim, 1, x + j0, plane, 1, false, y + j0, plane);
        } else {
            im2col(s, x, cg, j0, nc, buf);
            sgemm(mg, nc, int(kdim), weight, kdim, 1, buf, nc, 1, false, y + j0, plane);
        }
        bias_relu(mg, nc, bias, relu, y + j0, plane);
    }
}

}  // namespace

std::vector<float> pack_conv_weights(const ConvShape& s, const float* weight) {
    const int cg = s.c / s.groups, mg = s.m / s.groups;
    const int64_t kdim = int64_t(cg) * s.kh * s.kw;
    if (s.depthwise() || kdim > kMaxPackedK) return {};
    const int64_t size = packed_a_size(mg, int(kdim));
    // a damaged model's many one-channel groups: not worth MR times its weights
    if (size * s.groups > 4 * int64_t(s.m) * kdim + 65536) return {};
    std::vector<float> out(size_t(size * s.groups));
    for (int g = 0; g < s.groups; ++g)
        pack_a(mg, int(kdim), weight + int64_t(g) * mg * kdim, kdim, 1, out.data() + g * size);
    return out;
}

void conv2d(const ConvShape& s, const ConvWeights& w, bool relu, const float* x, float* y,
            std::vector<float>& scratch) {
    const int cg = s.c / s.groups, mg = s.m / s.groups, oh = s.oh(), ow = s.ow();
    const int64_t plane = int64_t(oh) * ow, kdim = int64_t(cg) * s.kh * s.kw;
    const int64_t packed_size = w.packed ? packed_a_size(mg, int(kdim)) : 0;
    for (int n = 0; n < s.n; ++n) {
        const float* xn = x + int64_t(n) * s.c * s.h * s.w;
        float* yn = y + int64_t(n) * s.m * plane;
        if (direct_3x3s2(s)) {
            conv3x3s2(s, xn, w, relu, yn, scratch);
            continue;
        }
        for (int g = 0; g < s.groups; ++g) {
            const float* xg = xn + int64_t(g) * cg * s.h * s.w;
            float* yg = yn + int64_t(g) * mg * plane;
            const float* wg = w.weight + int64_t(g) * mg * kdim;
            const float* bg = w.bias ? w.bias + int64_t(g) * mg : nullptr;
            if (s.depthwise()) {
                const float b = bg ? bg[0] : 0.f;
                if (s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.pt == 1 && s.pl == 1 &&
                    s.pb == 1 && s.pr == 1) {
                    depthwise3x3(s.h, s.w, xg, wg, b, relu, yg, scratch);
                    continue;
                }
                depthwise(s, xg, wg, b, yg, scratch);
                if (relu) std::transform(yg, yg + plane, yg, [](float v) { return std::max(v, 0.f); });
                continue;
            }
            gemm_conv(s, xg, wg, w.packed ? w.packed + g * packed_size : nullptr, bg, relu, yg,
                      scratch);
        }
    }
}

void maxpool2d(int nc, int h, int w, int kh, int kw, int sh, int sw, const float* x, float* y) {
    const int oh = (h - kh) / sh + 1, ow = (w - kw) / sw + 1;
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2) {  // YuNet's only pooling
        for (int p = 0; p < nc; ++p) {
            const float* xp = x + int64_t(p) * h * w;
            for (int oy = 0; oy < oh; ++oy) {
                const float* r0 = xp + int64_t(2 * oy) * w;
                const float* r1 = r0 + w;
                for (int ox = 0; ox < ow; ++ox)
                    *y++ = std::max(std::max(r0[2 * ox], r0[2 * ox + 1]),
                                    std::max(r1[2 * ox], r1[2 * ox + 1]));
            }
        }
        return;
    }
    for (int p = 0; p < nc; ++p) {
        const float* xp = x + int64_t(p) * h * w;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                float best = xp[int64_t(oy * sh) * w + ox * sw];
                for (int ky = 0; ky < kh; ++ky)
                    for (int kx = 0; kx < kw; ++kx)
                        best = std::max(best, xp[int64_t(oy * sh + ky) * w + ox * sw + kx]);
                *y++ = best;
            }
    }
}

void upsample_nearest(int nc, int h, int w, int fy, int fx, const float* x, float* y) {
    const int ow = w * fx;
    for (int p = 0; p < nc; ++p) {
        const float* xp = x + int64_t(p) * h * w;
        for (int iy = 0; iy < h; ++iy) {
            const float* row = xp + int64_t(iy) * w;
            if (fx == 2)
                for (int ix = 0; ix < w; ++ix) y[2 * ix] = y[2 * ix + 1] = row[ix];
            else
                for (int ox = 0; ox < ow; ++ox) y[ox] = row[ox / fx];
            for (int r = 1; r < fy; ++r) std::memcpy(y + int64_t(r) * ow, y, sizeof(float) * ow);
            y += int64_t(fy) * ow;
        }
    }
}

}  // namespace face
}  // namespace deepid2
