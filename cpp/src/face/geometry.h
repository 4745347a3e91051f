// Alignment and patch cutting (deepid2_core/face/align.py, patches.py):
// the similarity on the eyes and the mouth centre, and the layouts' patches
// cut from the aligned face bit for bit as Python's numpy code cut them.
#pragma once
#include <string>
#include <vector>

#include "image.h"

namespace deepid2 {
namespace face {

// align.alignment_matrix: the least-squares similarity taking the left eye,
// right eye and mouth-corner midpoint of `pts` (10 doubles) onto CANONICAL
// in a width x height face.
Affine alignment_matrix(const double pts[10], int width, int height);

// align.align_face: the warped BGR face and (aligned_pts, may be null) the
// 5 points in its coordinates.
Image align_face(const Image& bgr, const double pts[10], int width, int height,
                 double aligned_pts[10]);

// align.MEAN_SHAPE in pixels of a width x height face (10 doubles).
void mean_shape(int width, int height, double pts[10]);

// One patch of a layout ("deepid2" or "deepid", patches.py), as
// patches.cut_patch (flipped = false) or cut_flipped (true) give it:
// (h + 2 pad_y) x (w + 2 pad_x) x C uint8, RGB or grey (C = 1).
// landmarks: 10 doubles of the aligned face.
struct LayoutPatchShape {
    int height, width, channels;
};
LayoutPatchShape layout_patch_shape(const std::string& layout, int index);  // invalid_argument
int layout_size(const std::string& layout);  // 200 / 60; invalid_argument when unknown
std::vector<uint8_t> cut_layout_patch(const Image& aligned_bgr, const double landmarks[10],
                                      const std::string& layout, int index, bool flipped,
                                      int pad_y = 0, int pad_x = 0);

}  // namespace face
}  // namespace deepid2
