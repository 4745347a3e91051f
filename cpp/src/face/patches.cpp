// Patch cutting (deepid2_core/face/patches.py), bit for bit: region_box, the
// triangle-filter taps snapped to 1/1024 px (_taps), the separable weighted
// sums (_sample: integer weights times integer pixels, every sum exact below
// 2^53 in any order), one division per pixel, grey as numpy's matmul sums
// it ((R 0.299 + G 0.587) + B 0.114), np.rint (half to even) and the clip.
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

#include "geometry.h"
#include "no_fma.h"

namespace deepid2 {
namespace face {
namespace {

constexpr double kGrid = 1024.0;  // patches._GRID: sub-pixel snapping
constexpr int kMaxPatchSide = 4096;
constexpr double kMaxTaps = 1 << 24;  // per axis: bounds the tables (and the time)

// Per output pixel: its first source index (unclamped), and the triangle
// weights of `count` consecutive source pixels (integers, in 1/1024 px).
struct Taps {
    int n = 0, count = 0;
    std::vector<double> first;   // n: lo of patches._taps
    std::vector<double> weight;  // n x count
    std::vector<int> index;      // n x count: clamped to the image (border replicated)
    std::vector<double> sum;     // n: the weights' sum
    int min_index = 0, max_index = 0;
};

// patches._taps(centre, length, n_out, n_src, pad), in its order of operations.
Taps make_taps(double centre, double length, int n_out, int n_src, int pad) {
    Taps t;
    const double step = length / n_out;
    const double radius = std::nearbyint(std::max(1.0, step) * kGrid);
    t.n = n_out + 2 * pad;
    t.count = int(std::ceil(2 * radius / kGrid)) + 1;
    if (double(t.n) * t.count > kMaxTaps)
        throw std::invalid_argument("patch: the region is too large for the patch's size");
    t.first.resize(t.n);
    t.weight.resize(size_t(t.n) * t.count);
    t.index.resize(size_t(t.n) * t.count);
    t.sum.assign(t.n, 0.0);
    t.min_index = n_src - 1;
    t.max_index = 0;
    for (int i = 0; i < t.n; ++i) {
        const double off = (double(i - pad) + 0.5 - n_out / 2.0) * step;
        const double c = std::nearbyint((centre + off) * kGrid);
        const double lo = std::floor((c - radius) / kGrid) + 1;
        for (int k = 0; k < t.count; ++k) {
            const double idx = lo + k;
            const double w = std::max(0.0, radius - std::fabs(idx * kGrid - c));
            const int clamped = int(std::clamp(idx, 0.0, double(n_src - 1)));
            t.weight[size_t(i) * t.count + k] = w;
            t.index[size_t(i) * t.count + k] = clamped;
            t.sum[i] += w;
            t.min_index = std::min(t.min_index, clamped);
            t.max_index = std::max(t.max_index, clamped);
        }
    }
    return t;
}

void check_spec(const PatchSpec& s) {
    const bool finite = std::isfinite(s.cx) && std::isfinite(s.cy) &&
                        std::isfinite(s.region_width) && std::isfinite(s.scale);
    if (!finite || !(s.region_width > 0) || !(s.scale > 0))
        throw std::invalid_argument("patch: the region's centre must be finite and its width "
                                    "and scale positive");
    if (s.landmark < -1 || s.landmark > 4)
        throw std::invalid_argument("patch: landmark must be 0..4 or -1 (none), got " +
                                    std::to_string(s.landmark));
    if (s.height < 1 || s.width < 1 || s.height > kMaxPatchSide || s.width > kMaxPatchSide)
        throw std::invalid_argument("patch: its size must be 1.." + std::to_string(kMaxPatchSide) +
                                    " px a side, got " + std::to_string(s.height) + "x" +
                                    std::to_string(s.width));
}

// patches.region_box: (cx, cy, w, h) pixels of the region in the face.
std::array<double, 4> region_box(const PatchSpec& s, const double* landmarks, int img_w,
                                 int img_h) {
    double cx, cy;
    if (s.landmark < 0) {
        cx = s.cx * img_w - 0.5;
        cy = s.cy * img_h - 0.5;
    } else {
        if (!landmarks)
            throw std::invalid_argument("patch: the region is centred on landmark " +
                                        std::to_string(s.landmark) + ": landmarks needed");
        const double lx = landmarks[2 * s.landmark], ly = landmarks[2 * s.landmark + 1];
        if (!(std::fabs(lx) <= kMaxCoordinate && std::fabs(ly) <= kMaxCoordinate))
            throw std::invalid_argument("patch: landmark " + std::to_string(s.landmark) +
                                        " must be finite and within " +
                                        std::to_string(int(kMaxCoordinate)) + " px of the face");
        cx = lx + s.cx * img_w;
        cy = ly + s.cy * img_h;
    }
    const double w = s.region_width * s.scale * img_w;
    const double h = w * s.height / s.width;
    if (!(std::fabs(cx) <= kMaxCoordinate && std::fabs(cy) <= kMaxCoordinate) ||
        !(w <= kMaxImageSide && h <= kMaxImageSide))
        throw std::invalid_argument("patch: the region lies too far off the face or is over " +
                                    std::to_string(kMaxImageSide) + " px");
    return {cx, cy, w, h};
}

// np.clip(np.rint(v), 0, 255).astype(np.uint8): half to even (the default
// rounding mode), v is never NaN (the weights' sums are positive).
uint8_t to_byte(double v) { return uint8_t(std::clamp(std::nearbyint(v), 0.0, 255.0)); }

}  // namespace

std::vector<uint8_t> cut_patch(const BgrView& img, const double* landmarks, const PatchSpec& spec,
                               bool mirror, int pad_y, int pad_x) {
    if (!img.px || img.h < 1 || img.w < 1 || img.h > kMaxImageSide || img.w > kMaxImageSide)
        throw std::invalid_argument("patch: the aligned face must be a non-empty BGR image of at "
                                    "most " + std::to_string(kMaxImageSide) + " px a side");
    if (pad_y < 0 || pad_x < 0 || pad_y > kMaxPatchPad || pad_x > kMaxPatchPad)
        throw std::invalid_argument("patch: pad must be 0.." + std::to_string(kMaxPatchPad) +
                                    ", got (" + std::to_string(pad_y) + ", " +
                                    std::to_string(pad_x) + ")");
    check_spec(spec);
    const auto box = region_box(spec, landmarks, img.w, img.h);
    const Taps ty = make_taps(box[1], box[3], spec.height, img.h, pad_y);
    const Taps tx = make_taps(box[0], box[2], spec.width, img.w, pad_x);

    // Per output row: the vertical sums over the source columns the taps
    // reach, then the horizontal sums, one division, RGB or grey, rounding.
    const int x0 = tx.min_index, nx = tx.max_index - x0 + 1;
    const int channels = spec.gray ? 1 : 3;
    std::vector<double> row(size_t(nx) * 3);
    std::vector<uint8_t> out(size_t(ty.n) * tx.n * channels);
    for (int y = 0; y < ty.n; ++y) {
        std::fill(row.begin(), row.end(), 0.0);
        for (int k = 0; k < ty.count; ++k) {
            const double w = ty.weight[size_t(y) * ty.count + k];
            if (w == 0) continue;  // numpy adds it: + 0 changes no exact sum
            const uint8_t* s = img.px + (size_t(ty.index[size_t(y) * ty.count + k]) * img.w + x0) * 3;
            for (int i = 0; i < nx * 3; ++i) row[i] += w * s[i];
        }
        for (int x = 0; x < tx.n; ++x) {
            double bgr[3] = {0.0, 0.0, 0.0};
            for (int k = 0; k < tx.count; ++k) {
                const double w = tx.weight[size_t(x) * tx.count + k];
                if (w == 0) continue;
                const double* s = row.data() + size_t(tx.index[size_t(x) * tx.count + k] - x0) * 3;
                for (int c = 0; c < 3; ++c) bgr[c] += w * s[c];
            }
            const double norm = ty.sum[y] * tx.sum[x];
            const double rgb[3] = {bgr[2] / norm, bgr[1] / norm, bgr[0] / norm};
            uint8_t* o = out.data() + (size_t(y) * tx.n + (mirror ? tx.n - 1 - x : x)) * channels;
            if (spec.gray) {  // numpy's matmul: ((0 + R 0.299) + G 0.587) + B 0.114
                const double g = ((0.0 + rgb[0] * 0.299) + rgb[1] * 0.587) + rgb[2] * 0.114;
                o[0] = to_byte(g);
            } else {
                for (int c = 0; c < 3; ++c) o[c] = to_byte(rgb[c]);
            }
        }
    }
    return out;
}

}  // namespace face
}  // namespace deepid2
