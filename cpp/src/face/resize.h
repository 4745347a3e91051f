// cv2.resize for the packed 8-bit images of image.h, in the two modes the
// detection rule uses, reproducing OpenCV's arithmetic (its tables, fixed
// point and rounding) so the detector sees the pixels it sees under Python.
#pragma once
#include "image.h"

namespace deepid2 {
namespace face {

// cv2.resize(src, (w, h), interpolation=INTER_AREA) for w <= src.w, h <= src.h
// (shrinking: the only use); std::invalid_argument otherwise.
Image resize_area(const Image& src, int w, int h);

// cv2.resize(src, (w, h), interpolation=INTER_LINEAR) (8-bit fixed point,
// 11-bit coefficients; the vertical pass rounds as OpenCV's SIMD path does).
Image resize_linear(const Image& src, int w, int h);

}  // namespace face
}  // namespace deepid2
