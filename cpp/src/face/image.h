// The pipeline's own image: 8-bit, rows packed, 1 channel (grey) or 3 (B, G,
// R, as OpenCV keeps them: the order every stage below was trained on), and
// the few pixel operations more than one stage needs.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "deepid2/pipeline.h"

namespace deepid2 {
namespace face {

struct Image {
    int h = 0, w = 0, c = 3;
    std::vector<uint8_t> px;  // h x w x c

    Image() = default;
    Image(int h_, int w_, int c_) : h(h_), w(w_), c(c_), px(size_t(h_) * w_ * c_) {}
    uint8_t* row(int y) { return px.data() + size_t(y) * w * c; }
    const uint8_t* row(int y) const { return px.data() + size_t(y) * w * c; }
    bool empty() const { return h == 0 || w == 0; }
};

// 2 x 3 affine map [a b tx; c d ty]: (x, y) -> (a x + b y + tx, c x + d y + ty).
using Affine = std::array<double, 6>;

// Checks the view (BadImage naming the problem) and copies it into a packed
// BGR image (grey views are expanded to three equal channels).
Image to_bgr(const ImageView& view);

// OpenCV's COLOR_BGR2GRAY: (R*4899 + G*9617 + B*1868 + 8192) >> 14, so the
// landmark nets see the grey they were trained on.
Image to_gray(const Image& bgr);

// Replicates cv2.copyMakeBorder(..., BORDER_REPLICATE) with `pad` on every side.
Image pad_replicate(const Image& img, int pad);

// The inverse of an affine map (throws std::invalid_argument when singular).
Affine invert(const Affine& m);

// cv2.warpAffine(src, m, (w, h), INTER_LINEAR, BORDER_REPLICATE) in double
// precision: output pixel (x, y) samples src at m^-1 (x, y), bilinear, the
// border replicated, rounded to nearest. m maps src to the output.
Image warp_affine(const Image& src, const Affine& m, int w, int h);

}  // namespace face
}  // namespace deepid2
