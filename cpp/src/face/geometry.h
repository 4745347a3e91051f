// Alignment and patch cutting (deepid2_core/face/align.py, patches.py):
// the similarity on the eyes and the mouth centre, and the layouts' patches
// cut from the aligned face bit for bit as Python's numpy code cut them.
#pragma once
#include <cstdint>
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

// One patch as patches.cut_patch cuts it, for any layout (patches.Region at
// one scale and colour): the region's centre is (cx, cy) fractions of the
// face (pixel fx * W - 0.5) or, with a landmark, that landmark plus
// (cx * W, cy * H); its width is region_width * scale * W, its height
// follows the patch's aspect.
struct PatchSpec {
    double cx = 0.5, cy = 0.5;  // Region.centre
    double region_width = 0;    // Region.width: a fraction of the face width at scale 1
    int landmark = -1;          // Region.landmark 0..4; -1: none
    double scale = 1;           // PatchLayout.scales[s]
    int height = 0, width = 0;  // the patch's pixels (rect_size / square_size)
    bool gray = false;          // colour "gray" (1 channel) or "rgb" (3, R G B)
};

// Packed h x w x 3 BGR pixels the caller owns (an Image's, a numpy array's):
// patches are cut without copying the face.
struct BgrView {
    const uint8_t* px = nullptr;
    int h = 0, w = 0;
};
inline BgrView view_of(const Image& img) { return {img.px.data(), img.h, img.w}; }

// The patch (h + 2 pad_y) x (w + 2 pad_x) x (1 or 3) uint8, row-major; mirror:
// its columns reversed. landmarks: 10 doubles of the aligned face, may be null
// when the region is not centred on one. Throws std::invalid_argument on bad
// arguments (a 3-channel image, pads 0..kMaxPatchPad, a finite landmark
// within kMaxCoordinate of the face, a region at most kMaxImageSide wide).
constexpr int kMaxPatchPad = 1024;
constexpr double kMaxCoordinate = 1e6;
std::vector<uint8_t> cut_patch(const BgrView& aligned_bgr, const double* landmarks,
                               const PatchSpec& spec, bool mirror, int pad_y = 0, int pad_x = 0);

// The layouts Python names ("deepid2": 200 patches, "deepid": 60), generated
// from patches.py into layouts.inc. Unknown names and indices: invalid_argument.
int layout_size(const std::string& layout);
PatchSpec layout_patch_spec(const std::string& layout, int index);
int layout_flip_partner(const std::string& layout, int index);  // patches.flip_partner

struct LayoutPatchShape {
    int height, width, channels;
};
LayoutPatchShape layout_patch_shape(const std::string& layout, int index);

// Patch `index` of a named layout, as patches.cut_patch (flipped = false) or
// cut_flipped (true, the mirror image of the flip partner) give it:
// (h + 2 pad_y) x (w + 2 pad_x) x C uint8, RGB or grey (C = 1).
// landmarks: 10 doubles of the aligned face.
std::vector<uint8_t> cut_layout_patch(const BgrView& aligned_bgr, const double landmarks[10],
                                      const std::string& layout, int index, bool flipped,
                                      int pad_y = 0, int pad_x = 0);
inline std::vector<uint8_t> cut_layout_patch(const Image& aligned_bgr,
                                             const double landmarks[10],
                                             const std::string& layout, int index,
                                             bool flipped, int pad_y = 0, int pad_x = 0) {
    return cut_layout_patch(view_of(aligned_bgr), landmarks, layout, index, flipped, pad_y,
                            pad_x);
}

}  // namespace face
}  // namespace deepid2
