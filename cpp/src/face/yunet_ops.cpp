#include "yunet_ops.h"

#include <algorithm>
#include <cstring>

#include "../gemm.h"

namespace deepid2 {
namespace face {

namespace {

// 3x3, stride 1, padding 1 (every depthwise conv of YuNet): one pass per
// output row over three input rows (a zero row above and below the image),
// the first and last columns apart so the middle needs no bounds checks.
void depthwise3x3(int h, int w, const float* x, const float* k, float bias, bool relu,
                  float* y, std::vector<float>& zero) {
    zero.assign(size_t(w) + 2, 0.f);
    const auto tap = [&](const float* r, int ox, int kx) {
        const int ix = ox + kx - 1;
        return ix >= 0 && ix < w ? r[ix] : 0.f;
    };
    for (int oy = 0; oy < h; ++oy) {
        const float* r0 = oy > 0 ? x + size_t(oy - 1) * w : zero.data();
        const float* r1 = x + size_t(oy) * w;
        const float* r2 = oy + 1 < h ? x + size_t(oy + 1) * w : zero.data();
        float* out = y + size_t(oy) * w;
        for (int ox : {0, w - 1}) {
            float v = bias;
            for (int kx = 0; kx < 3; ++kx)
                v += k[kx] * tap(r0, ox, kx) + k[3 + kx] * tap(r1, ox, kx) + k[6 + kx] * tap(r2, ox, kx);
            out[ox] = relu ? std::max(v, 0.f) : v;
        }
        for (int ox = 1; ox < w - 1; ++ox) {
            float v = bias + k[0] * r0[ox - 1] + k[1] * r0[ox] + k[2] * r0[ox + 1] +
                      k[3] * r1[ox - 1] + k[4] * r1[ox] + k[5] * r1[ox + 1] +
                      k[6] * r2[ox - 1] + k[7] * r2[ox] + k[8] * r2[ox + 1];
            out[ox] = relu ? std::max(v, 0.f) : v;
        }
    }
}

// Any other depthwise shape: the input copied into a zero-padded plane first
// so the inner loop needs no bounds checks.
void depthwise(const ConvShape& s, const float* x, const float* k, float bias, float* y,
               std::vector<float>& pad) {
    const int ph = s.h + s.pt + s.pb, pw = s.w + s.pl + s.pr, oh = s.oh(), ow = s.ow();
    pad.assign(size_t(ph) * pw, 0.f);
    for (int r = 0; r < s.h; ++r)
        std::memcpy(&pad[size_t(r + s.pt) * pw + s.pl], x + size_t(r) * s.w, sizeof(float) * s.w);
    for (int oy = 0; oy < oh; ++oy) {
        float* out = y + size_t(oy) * ow;
        std::fill(out, out + ow, bias);
        for (int ky = 0; ky < s.kh; ++ky) {
            const float* in = pad.data() + size_t(oy * s.sh + ky) * pw;
            for (int kx = 0; kx < s.kw; ++kx) {
                const float wk = k[ky * s.kw + kx];
                const float* row = in + kx;
                for (int ox = 0; ox < ow; ++ox) out[ox] += wk * row[size_t(ox) * s.sw];
            }
        }
    }
}

// Rows (ci, ky, kx) x columns (oy, ox) of the channels [c0, c0 + cg).
void im2col(const ConvShape& s, const float* x, int cg, float* cols) {
    const int oh = s.oh(), ow = s.ow();
    float* out = cols;
    for (int ci = 0; ci < cg; ++ci)
        for (int ky = 0; ky < s.kh; ++ky)
            for (int kx = 0; kx < s.kw; ++kx)
                for (int oy = 0; oy < oh; ++oy) {
                    const int iy = oy * s.sh - s.pt + ky;
                    if (iy < 0 || iy >= s.h) {
                        std::fill(out, out + ow, 0.f);
                        out += ow;
                        continue;
                    }
                    const float* row = x + (size_t(ci) * s.h + iy) * s.w;
                    for (int ox = 0; ox < ow; ++ox) {
                        const int ix = ox * s.sw - s.pl + kx;
                        *out++ = ix >= 0 && ix < s.w ? row[ix] : 0.f;
                    }
                }
}

}  // namespace

void conv2d(const ConvShape& s, const float* x, const float* weight, const float* bias,
            bool relu, float* y, std::vector<float>& scratch) {
    const int cg = s.c / s.groups, mg = s.m / s.groups, oh = s.oh(), ow = s.ow();
    const int64_t plane = int64_t(oh) * ow, kdim = int64_t(cg) * s.kh * s.kw;
    const bool pointwise = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 &&
                           s.pt == 0 && s.pl == 0 && s.pb == 0 && s.pr == 0;
    for (int n = 0; n < s.n; ++n)
        for (int g = 0; g < s.groups; ++g) {
            const float* xg = x + (int64_t(n) * s.c + int64_t(g) * cg) * s.h * s.w;
            float* yg = y + (int64_t(n) * s.m + int64_t(g) * mg) * plane;
            const float* wg = weight + int64_t(g) * mg * kdim;
            if (cg == 1 && mg == 1) {
                const float b = bias ? bias[g] : 0.f;
                if (s.kh == 3 && s.kw == 3 && s.sh == 1 && s.sw == 1 && s.pt == 1 && s.pl == 1 &&
                    s.pb == 1 && s.pr == 1 && s.w >= 2) {
                    depthwise3x3(s.h, s.w, xg, wg, b, relu, yg, scratch);
                    continue;
                }
                depthwise(s, xg, wg, b, yg, scratch);
                if (relu) std::transform(yg, yg + plane, yg, [](float v) { return std::max(v, 0.f); });
                continue;
            }
            const float* b = xg;
            if (!pointwise) {
                scratch.resize(size_t(kdim * plane));
                im2col(s, xg, cg, scratch.data());
                b = scratch.data();
            }
            for (int i = 0; i < mg; ++i)
                std::fill(yg + i * plane, yg + (i + 1) * plane, bias ? bias[g * mg + i] : 0.f);
            sgemm(mg, int(plane), int(kdim), wg, kdim, 1, b, plane, 1, true, yg, plane);
            if (relu)
                std::transform(yg, yg + mg * plane, yg, [](float v) { return std::max(v, 0.f); });
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
    const int oh = h * fy, ow = w * fx;
    for (int p = 0; p < nc; ++p) {
        const float* xp = x + int64_t(p) * h * w;
        for (int oy = 0; oy < oh; ++oy) {
            const float* row = xp + int64_t(oy / fy) * w;
            for (int ox = 0; ox < ow; ++ox) *y++ = row[ox / fx];
        }
    }
}

}  // namespace face
}  // namespace deepid2
