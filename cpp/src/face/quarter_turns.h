// Quarter turns of an image and of what was found on it: a face lying
// sideways or upside down is detected and located on the image turned
// upright, and its box and landmarks are given back in the photo's pixels.
#pragma once
#include "deepid2/pipeline.h"
#include "image.h"

namespace deepid2 {
namespace face {

// np.rot90(image, k): k quarter turns counter-clockwise (k in 0..3), pixels moved exactly.
Image turn_ccw(const Image& im, int k);

// A face found on the w x h image turned k quarter turns counter-clockwise,
// back in the image's own pixels: landmarks point by point (pixel centres at
// integers), the box as the area the turned box covers.
void unturn(Face& f, int k, int w, int h);

}  // namespace face
}  // namespace deepid2
