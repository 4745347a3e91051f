#include "image.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace deepid2 {
namespace face {

Image to_bgr(const ImageView& v) {
    if (!v.pixels) throw BadImage("image: pixels is null");
    if (v.width < 1 || v.height < 1)
        throw BadImage("image: width and height must be positive, got " + std::to_string(v.width) +
                       "x" + std::to_string(v.height));
    if (v.width > kMaxImageSide || v.height > kMaxImageSide)
        throw BadImage("image: " + std::to_string(v.width) + "x" + std::to_string(v.height) +
                       " is over the " + std::to_string(kMaxImageSide) + " px side limit");
    if (v.channels != 1 && v.channels != 3)
        throw BadImage("image: channels must be 1 (grey) or 3, got " + std::to_string(v.channels));
    const size_t row_bytes = size_t(v.width) * size_t(v.channels);
    if (v.stride < row_bytes)
        throw BadImage("image: stride " + std::to_string(v.stride) + " is smaller than a row (" +
                       std::to_string(row_bytes) + " bytes)");
    Image out(v.height, v.width, 3);
    for (int y = 0; y < v.height; ++y) {
        const uint8_t* s = v.pixels + size_t(y) * v.stride;
        uint8_t* d = out.row(y);
        if (v.channels == 1) {
            for (int x = 0; x < v.width; ++x) d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = s[x];
        } else if (v.order == PixelOrder::BGR) {
            std::copy(s, s + row_bytes, d);
        } else {
            for (int x = 0; x < v.width; ++x) {
                d[3 * x] = s[3 * x + 2];
                d[3 * x + 1] = s[3 * x + 1];
                d[3 * x + 2] = s[3 * x];
            }
        }
    }
    return out;
}

Image to_gray(const Image& bgr) {
    if (bgr.c == 1) return bgr;
    Image g(bgr.h, bgr.w, 1);
    for (int y = 0; y < bgr.h; ++y) {
        const uint8_t* s = bgr.row(y);
        uint8_t* d = g.row(y);
        for (int x = 0; x < bgr.w; ++x)
            d[x] = uint8_t((s[3 * x] * 1868 + s[3 * x + 1] * 9617 + s[3 * x + 2] * 4899 + 8192) >> 14);
    }
    return g;
}

Image pad_replicate(const Image& img, int pad) {
    Image out(img.h + 2 * pad, img.w + 2 * pad, img.c);
    for (int y = 0; y < out.h; ++y) {
        const uint8_t* s = img.row(std::clamp(y - pad, 0, img.h - 1));
        uint8_t* d = out.row(y);
        for (int x = 0; x < out.w; ++x) {
            const uint8_t* p = s + size_t(std::clamp(x - pad, 0, img.w - 1)) * img.c;
            std::copy(p, p + img.c, d + size_t(x) * img.c);
        }
    }
    return out;
}

Affine invert(const Affine& m) {
    const double det = m[0] * m[4] - m[1] * m[3];
    if (!(std::fabs(det) > 1e-300) || !std::isfinite(det))
        throw std::invalid_argument("affine map is singular");
    const double a = m[4] / det, b = -m[1] / det, c = -m[3] / det, d = m[0] / det;
    return {a, b, -(a * m[2] + b * m[5]), c, d, -(c * m[2] + d * m[5])};
}

namespace {

// lround(v) for v in [0, 255.x], without the library call: v + 0.5 truncated
// is lround's answer for every v >= 0.5 and every v < 0.5 but the largest
// double below 0.5, which v + 0.5 rounds up to 1.
inline uint8_t round_pixel(double v) {
    return v < 0.5 ? 0 : uint8_t(std::min(int(v + 0.5), 255));
}

template <int C>
void warp_rows(const Image& src, const Affine& inv, Image& out) {
    const double xmax = double(src.w - 1), ymax = double(src.h - 1);
    for (int y = 0; y < out.h; ++y) {
        uint8_t* d = out.row(y);
        for (int x = 0; x < out.w; ++x) {
            double sx = inv[0] * x + inv[1] * y + inv[2];
            double sy = inv[3] * x + inv[4] * y + inv[5];
            // clamping the coordinate is bilinear sampling with the border replicated
            sx = std::isfinite(sx) ? std::clamp(sx, 0.0, xmax) : 0.0;
            sy = std::isfinite(sy) ? std::clamp(sy, 0.0, ymax) : 0.0;
            const int x0 = int(sx), y0 = int(sy);
            const int x1 = std::min(x0 + 1, src.w - 1), y1 = std::min(y0 + 1, src.h - 1);
            const double fx = sx - x0, fy = sy - y0;
            const uint8_t *r0 = src.row(y0), *r1 = src.row(y1);
            for (int k = 0; k < C; ++k) {
                const double v00 = r0[x0 * C + k], v01 = r0[x1 * C + k];
                const double v10 = r1[x0 * C + k], v11 = r1[x1 * C + k];
                const double top = v00 + fx * (v01 - v00), bot = v10 + fx * (v11 - v10);
                d[x * C + k] = round_pixel(top + fy * (bot - top));
            }
        }
    }
}

}  // namespace

Image warp_affine(const Image& src, const Affine& m, int w, int h) {
    if (src.empty() || w < 1 || h < 1) throw std::invalid_argument("warp_affine: empty image");
    if (src.c != 1 && src.c != 3) throw std::invalid_argument("warp_affine: 1 or 3 channels");
    const Affine inv = invert(m);
    Image out(h, w, src.c);
    if (src.c == 3)
        warp_rows<3>(src, inv, out);
    else
        warp_rows<1>(src, inv, out);
    return out;
}

}  // namespace face
}  // namespace deepid2
