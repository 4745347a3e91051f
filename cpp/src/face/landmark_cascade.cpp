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

// CascadeLevel.refine for one face and for its mirror image at once (each
// net runs on a batch of the two patches): est[0] in image coordinates,
// est[1] in mirror-image coordinates -> out[k], the mean over the level's
// nets of the points they give, in est[k]'s coordinates.
void refine_both(const CascadeLevel& level, const Image& gray, const double* const est[2],
                 double out[2][10]) {
    double angle[2], c[2], s[2], r[2];
    for (int k = 0; k < 2; ++k) {
        shape_frame(est[k], level.rotate_frame, angle[k], r[k]);
        c[k] = std::cos(angle[k]), s[k] = std::sin(angle[k]);
    }
    const int S = level.size, J = int(level.patches.size()), n = S * S;
    std::vector<float> raw(static_cast<size_t>(n)), x(2 * static_cast<size_t>(n));
    for (int p = 0; p < kPoints; ++p) {
        double sum[2][2] = {{0, 0}, {0, 0}};
        for (int j = 0; j < J; ++j) {
            double side[2];
            for (int k = 0; k < 2; ++k) {
                side[k] = r[k] * level.patches[size_t(j)];
                sample_patch(gray, est[k][2 * p], est[k][2 * p + 1], angle[k], side[k], S, k == 1,
                             raw.data());
                standardise(raw.data(), n, x.data() + size_t(k) * n);
            }
            float off[2][2];
            level.nets[size_t(p * J + j)].forward(2, x.data(), &off[0][0]);
            for (int k = 0; k < 2; ++k) {
                // offsets_to_points: the offset is in patch sides, in the patch frame
                const double ox = off[k][0] * side[k], oy = off[k][1] * side[k];
                sum[k][0] += est[k][2 * p] + c[k] * ox - s[k] * oy;
                sum[k][1] += est[k][2 * p + 1] + s[k] * ox + c[k] * oy;
            }
        }
        for (int k = 0; k < 2; ++k) out[k][2 * p] = sum[k][0] / J, out[k][2 * p + 1] = sum[k][1] / J;
    }
}

}  // namespace

void refine_level(const CascadeLevel& level, const Image& gray, double pts[10]) {
    double mirrored[10], out[2][10], back[10];
    mirror_points(pts, gray.w, mirrored);
    const double* const est[2] = {pts, mirrored};
    refine_both(level, gray, est, out);
    mirror_points(out[1], gray.w, back);
    for (int i = 0; i < 10; ++i) pts[i] = 0.5 * (out[0][i] + back[i]);
}

}  // namespace face
}  // namespace deepid2
