#include "resize.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>

namespace deepid2 {
namespace face {

namespace {

void check_size(const Image& src, int w, int h, const char* what) {
    if (src.empty() || w < 1 || h < 1 || w > kMaxImageSide || h > kMaxImageSide)
        throw std::invalid_argument(std::string(what) + ": cannot resize a " +
                                    std::to_string(src.w) + "x" + std::to_string(src.h) +
                                    " image to " + std::to_string(w) + "x" + std::to_string(h));
}

uint8_t round_u8(float v) {  // saturate_cast<uchar>(float): nearest, ties to even
    const long r = std::lrint(v);
    return uint8_t(std::min(255L, std::max(0L, r)));
}

// INTER_AREA by an integer factor in both directions (OpenCV's resizeAreaFast).
Image area_fast(const Image& src, int w, int h, int sx, int sy) {
    Image dst(h, w, src.c);
    const int c = src.c, area = sx * sy;
    const float inv = 1.f / float(area);
    for (int y = 0; y < h; ++y) {
        uint8_t* d = dst.row(y);
        for (int x = 0; x < w; ++x)
            for (int k = 0; k < c; ++k) {
                int sum = 0;
                for (int dy = 0; dy < sy; ++dy) {
                    const uint8_t* s = src.row(y * sy + dy) + size_t(x) * sx * c + k;
                    for (int dx = 0; dx < sx; ++dx) sum += s[dx * c];
                }
                d[size_t(x) * c + k] = sx == 2 && sy == 2 ? uint8_t((sum + 2) >> 2)
                                                          : round_u8(float(sum) * inv);
            }
    }
    return dst;
}

struct AreaTap {
    int si, di;
    float alpha;
};

// computeResizeAreaTab: each destination cell's source pixels and weights.
std::vector<AreaTap> area_taps(int ssize, int dsize, double scale) {
    std::vector<AreaTap> tab;
    for (int dx = 0; dx < dsize; ++dx) {
        const double fsx1 = dx * scale, fsx2 = fsx1 + scale;
        const double cell = std::min(scale, ssize - fsx1);
        int sx1 = int(std::ceil(fsx1)), sx2 = int(std::floor(fsx2));
        sx2 = std::min(sx2, ssize - 1);
        sx1 = std::min(sx1, sx2);
        if (sx1 - fsx1 > 1e-3) tab.push_back({sx1 - 1, dx, float((sx1 - fsx1) / cell)});
        for (int sx = sx1; sx < sx2; ++sx) tab.push_back({sx, dx, float(1.0 / cell)});
        if (fsx2 - sx2 > 1e-3)
            tab.push_back({sx2, dx, float(std::min(std::min(fsx2 - sx2, 1.), cell) / cell)});
    }
    return tab;
}

// OpenCV's generic build has no FMA here: products are rounded before the sum.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
Image area_general(const Image& src, int w, int h, double scale_x, double scale_y) {
    const int c = src.c, dw = w * c;
    const std::vector<AreaTap> xtab = area_taps(src.w, w, scale_x);
    const std::vector<AreaTap> ytab = area_taps(src.h, h, scale_y);
    Image dst(h, w, c);
    std::vector<float> buf(dw), sum(dw, 0.f);
    int prev_dy = ytab.empty() ? 0 : ytab[0].di;
    for (const AreaTap& yt : ytab) {
        const uint8_t* s = src.row(yt.si);
        std::fill(buf.begin(), buf.end(), 0.f);
        for (const AreaTap& xt : xtab)
            for (int k = 0; k < c; ++k) {
                const float p = float(s[size_t(xt.si) * c + k]) * xt.alpha;
                buf[size_t(xt.di) * c + k] = buf[size_t(xt.di) * c + k] + p;
            }
        if (yt.di != prev_dy) {
            uint8_t* d = dst.row(prev_dy);
            for (int i = 0; i < dw; ++i) {
                d[i] = round_u8(sum[i]);
                sum[i] = yt.alpha * buf[i];
            }
            prev_dy = yt.di;
        } else {
            for (int i = 0; i < dw; ++i) {
                const float p = yt.alpha * buf[i];
                sum[i] = sum[i] + p;
            }
        }
    }
    uint8_t* d = dst.row(prev_dy);
    for (int i = 0; i < dw; ++i) d[i] = round_u8(sum[i]);
    return dst;
}
#pragma GCC pop_options

// One axis of INTER_LINEAR: source indices and 11-bit weights per destination.
struct LinearTap {
    int s0, s1;
    int a0, a1;
};

// OpenCV clamps the weights at the edges along x only; along y (clamp_weights
// false) it keeps them and clamps the rows, which rounds differently.
std::vector<LinearTap> linear_taps(int ssize, int dsize, double scale, bool clamp_weights) {
    std::vector<LinearTap> tab(dsize);
    const auto q = [](float v) { return int(std::lrint(v * 2048.f)); };
    const auto at = [ssize](int s) { return std::min(std::max(s, 0), ssize - 1); };
    for (int d = 0; d < dsize; ++d) {
        float f = float((d + 0.5) * scale - 0.5);
        int s = int(std::floor(f));
        f -= float(s);
        if (clamp_weights) {
            if (s < 0) f = 0, s = 0;
            if (s >= ssize - 1) f = 0, s = ssize - 1;
        }
        tab[d] = {at(s), at(s + 1), q(1.f - f), q(f)};
    }
    return tab;
}

}  // namespace

Image resize_area(const Image& src, int w, int h) {
    check_size(src, w, h, "resize_area");
    if (w > src.w || h > src.h)
        throw std::invalid_argument("resize_area: shrinking only, got " + std::to_string(src.w) +
                                    "x" + std::to_string(src.h) + " -> " + std::to_string(w) +
                                    "x" + std::to_string(h));
    const double scale_x = 1. / (double(w) / src.w), scale_y = 1. / (double(h) / src.h);
    const int ix = int(std::lrint(scale_x)), iy = int(std::lrint(scale_y));
    if (std::abs(scale_x - ix) < DBL_EPSILON && std::abs(scale_y - iy) < DBL_EPSILON)
        return area_fast(src, w, h, ix, iy);
    return area_general(src, w, h, scale_x, scale_y);
}

Image resize_linear(const Image& src, int w, int h) {
    check_size(src, w, h, "resize_linear");
    const int c = src.c;
    const std::vector<LinearTap> xt = linear_taps(src.w, w, 1. / (double(w) / src.w), true);
    const std::vector<LinearTap> yt = linear_taps(src.h, h, 1. / (double(h) / src.h), false);
    // horizontal pass of every source row (values x 2048), then the vertical one
    std::vector<int> hrows(size_t(src.h) * w * c);
    for (int y = 0; y < src.h; ++y) {
        const uint8_t* s = src.row(y);
        int* o = hrows.data() + size_t(y) * w * c;
        for (int x = 0; x < w; ++x)
            for (int k = 0; k < c; ++k)
                o[size_t(x) * c + k] = s[size_t(xt[x].s0) * c + k] * xt[x].a0 +
                                       s[size_t(xt[x].s1) * c + k] * xt[x].a1;
    }
    Image dst(h, w, c);
    for (int y = 0; y < h; ++y) {
        const int* r0 = hrows.data() + size_t(yt[y].s0) * w * c;
        const int* r1 = hrows.data() + size_t(yt[y].s1) * w * c;
        const int b0 = yt[y].a0, b1 = yt[y].a1;
        uint8_t* d = dst.row(y);
        for (int i = 0; i < w * c; ++i) {
            // OpenCV's SIMD rounding: (((r >> 4) * b) >> 16) per term, + 2, >> 2
            const int v = ((((r0[i] >> 4) * b0) >> 16) + (((r1[i] >> 4) * b1) >> 16) + 2) >> 2;
            d[i] = uint8_t(std::min(255, std::max(0, v)));
        }
    }
    return dst;
}

}  // namespace face
}  // namespace deepid2
