// One refinement level for one face, as face/landmark_cascade.py runs it
// (refine_flip_averaged -> CascadeLevel.refine -> level_patches,
// offsets_to_points): every point moves by the mean answer of its nets,
// each looking at a patch about the point in a frame that follows the
// estimate; the same on the mirror image, mapped back, and the two averaged.
#include <algorithm>
#include <cmath>

#include "landmark_impl.h"

namespace deepid2 {
namespace face {

namespace {

constexpr double kMinRadius = 1.0;  // the frame of a degenerate estimate (all points together)

// shape_frame: the angle of the left-to-right eye line (0 without rotation)
// and r, the RMS distance of the points from their mean (at least kMinRadius).
void shape_frame(const double pts[10], bool rotate, double& angle, double& r) {
    angle = rotate ? std::atan2(pts[3] - pts[1], pts[2] - pts[0]) : 0.0;
    double mx = 0, my = 0;
    for (int p = 0; p < kPoints; ++p) mx += pts[2 * p], my += pts[2 * p + 1];
    mx /= kPoints, my /= kPoints;
    double sq = 0;
    for (int p = 0; p < kPoints; ++p) {
        const double dx = pts[2 * p] - mx, dy = pts[2 * p + 1] - my;
        sq += dx * dx + dy * dy;
    }
    r = std::max(std::sqrt(sq / kPoints), kMinRadius);
}

// patch_grid + sample_patches for one patch: size x size bilinear samples
// (cast to float, as Python's float32 samples) of the square of `side` px
// about (cx, cy) turned by `angle`, coordinates clamped to the image (the
// border replicated). mirrored: (cx, cy) and the grid are coordinates of the
// mirror image (x -> w - 1 - x).
void sample_patch(const Image& gray, double cx, double cy, double angle, double side, int size,
                  bool mirrored, float* out) {
    const double c = std::cos(angle), s = std::sin(angle), step = side / size;
    const double half = (size - 1) / 2.0, wmax = gray.w - 1.0, hmax = gray.h - 1.0;
    for (int row = 0; row < size; ++row) {
        const double gv = (row - half) * step;
        for (int col = 0; col < size; ++col) {
            const double gu = (col - half) * step;
            double x = cx + c * gu - s * gv, y = cy + s * gu + c * gv;
            if (mirrored) x = wmax - x;
            // a non-finite coordinate (only from a degenerate net) samples pixel 0
            x = std::isfinite(x) ? std::clamp(x, 0.0, wmax) : 0.0;
            y = std::isfinite(y) ? std::clamp(y, 0.0, hmax) : 0.0;
            const int x0 = int(x), y0 = int(y);  // floor: x, y >= 0
            const int x1 = std::min(x0 + 1, gray.w - 1), y1 = std::min(y0 + 1, gray.h - 1);
            const double fx = x - x0, fy = y - y0;
            const uint8_t *r0 = gray.row(y0), *r1 = gray.row(y1);
            const double top = r0[x0] + fx * (double(r0[x1]) - r0[x0]);
            const double bot = r1[x0] + fx * (double(r1[x1]) - r1[x0]);
            out[row * size + col] = float(top + fy * (bot - top));
        }
    }
}

// mirror_points: the points of the mirror image (x -> w - 1 - x, left/right swapped).
void mirror_points(const double in[10], int width, double out[10]) {
    for (int p = 0; p < kPoints; ++p) {
        out[2 * p] = width - 1.0 - in[2 * kFlipOrder[p]];
        out[2 * p + 1] = in[2 * kFlipOrder[p] + 1];
    }
}

// CascadeLevel.refine for one face: pts (mirror-image coordinates where
// mirrored) -> out, the mean over the level's nets of the points they give.
void refine_once(const CascadeLevel& level, const Image& gray, const double pts[10],
                 bool mirrored, double out[10]) {
    double angle, r;
    shape_frame(pts, level.rotate_frame, angle, r);
    const double c = std::cos(angle), s = std::sin(angle);
    const int S = level.size, J = int(level.patches.size());
    std::vector<float> raw(size_t(S) * S), x(size_t(S) * S);
    for (int p = 0; p < kPoints; ++p) {
        const double px = pts[2 * p], py = pts[2 * p + 1];
        double sx = 0, sy = 0;
        for (int j = 0; j < J; ++j) {
            const double side = r * level.patches[size_t(j)];
            sample_patch(gray, px, py, angle, side, S, mirrored, raw.data());
            standardise(raw.data(), S * S, x.data());
            float off[2];
            level.nets[size_t(p * J + j)].forward(1, x.data(), off);
            // offsets_to_points: the offset is in patch sides, in the patch frame
            const double ox = off[0] * side, oy = off[1] * side;
            sx += px + c * ox - s * oy;
            sy += py + s * ox + c * oy;
        }
        out[2 * p] = sx / J;
        out[2 * p + 1] = sy / J;
    }
}

}  // namespace

void refine_level(const CascadeLevel& level, const Image& gray, double pts[10]) {
    double direct[10], mirrored_pts[10], mirrored_out[10], back[10];
    refine_once(level, gray, pts, false, direct);
    mirror_points(pts, gray.w, mirrored_pts);
    refine_once(level, gray, mirrored_pts, true, mirrored_out);
    mirror_points(mirrored_out, gray.w, back);
    for (int i = 0; i < 10; ++i) pts[i] = 0.5 * (direct[i] + back[i]);
}

}  // namespace face
}  // namespace deepid2
