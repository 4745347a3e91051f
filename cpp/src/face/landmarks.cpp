// LandmarkModel: loading, and level 1 as face/landmarks.py runs it
// (crop_matrix, warp, predict_crops with flip_average), then the refinement
// levels (landmark_cascade.cpp).
#include "../infer/model_file.h"
#include "landmarks.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "deepid2/model.h"
#include "landmark_impl.h"

namespace deepid2 {
namespace face {

namespace {

constexpr uint64_t kMaxFileBytes = uint64_t(1) << 30;  // the shipped model: 1.9 MB

std::string num(double v) { return std::to_string(v); }

// crop_matrix(box, size, box_scale): image pixels -> crop pixels, the box
// grown box_scale times about its centre filling the size x size crop.
Affine crop_matrix(const double box[4], int size, double box_scale) {
    const double cx = box[0] + 0.5 * box[2] - 0.5;  // the box covers pixels x .. x + w - 1
    const double cy = box[1] + 0.5 * box[3] - 0.5;
    const double kx = size / (box[2] * box_scale), ky = size / (box[3] * box_scale);
    const double c = (size - 1) / 2.0;
    return {kx, 0.0, c - kx * cx, 0.0, ky, c - ky * cy};
}

void check_box(const Image& gray, const double box[4]) {
    for (int i = 0; i < 4; ++i)
        if (!std::isfinite(box[i])) throw std::invalid_argument("landmarks: box must be finite");
    if (!(box[2] > 0) || !(box[3] > 0))
        throw std::invalid_argument("landmarks: box width and height must be positive, got " +
                                    num(box[2]) + " x " + num(box[3]));
    if (box[0] >= gray.w || box[1] >= gray.h || box[0] + box[2] <= 0 || box[1] + box[3] <= 0)
        throw std::invalid_argument("landmarks: box (" + num(box[0]) + ", " + num(box[1]) + ", " +
                                    num(box[2]) + ", " + num(box[3]) + ") lies outside the " +
                                    std::to_string(gray.w) + "x" + std::to_string(gray.h) + " image");
}

void check_gray(const Image& gray) {
    if (gray.c != 1) throw BadImage("landmarks: the image must be grey (1 channel, to_gray)");
    if (gray.w < 1 || gray.h < 1 || gray.w > kMaxImageSide || gray.h > kMaxImageSide)
        throw BadImage("landmarks: image size " + std::to_string(gray.w) + "x" +
                       std::to_string(gray.h) + " is empty or too large");
    if (gray.px.size() != size_t(gray.w) * size_t(gray.h))
        throw BadImage("landmarks: the image's pixel buffer does not match its size");
}

// Level 1: F1 on the crop and on its mirror image in one batch of two; the
// normalised points t in [0, 1] averaged (the mirror's mapped back,
// left/right swapped), then mapped to image pixels.
void level_one(const LandmarkModel::Impl& m, const Image& gray, const double box[4],
               double pts[10]) {
    const int S = m.f1.size, n = S * S;
    const Affine crop = crop_matrix(box, S, m.box_scale);
    Affine inv;
    try {
        inv = invert(crop);
    } catch (const std::invalid_argument&) {
        throw std::invalid_argument("landmarks: the box is too large or too small to crop");
    }
    for (double v : inv)
        if (!std::isfinite(v))
            throw std::invalid_argument("landmarks: the box is too large or too small to crop");
    const Image patch = warp_affine(gray, crop, S, S);
    std::vector<float> raw(2 * size_t(n)), x(2 * size_t(n));
    for (int y = 0; y < S; ++y)
        for (int c = 0; c < S; ++c) {
            raw[size_t(y * S + c)] = patch.row(y)[c];
            raw[size_t(n + y * S + S - 1 - c)] = patch.row(y)[c];  // the mirrored crop
        }
    standardise(raw.data(), n, x.data());
    standardise(raw.data() + n, n, x.data() + n);
    float t[2][2 * kPoints];
    m.f1.forward(2, x.data(), &t[0][0]);
    for (int p = 0; p < kPoints; ++p) {
        const int q = kFlipOrder[p];  // flip_points: the mirror's point q is our point p
        const double tx = 0.5 * (double(t[0][2 * p]) + (1.0 - double(t[1][2 * q])));
        const double ty = 0.5 * (double(t[0][2 * p + 1]) + double(t[1][2 * q + 1]));
        const double ux = tx * S - 0.5, uy = ty * S - 0.5;
        pts[2 * p] = inv[0] * ux + inv[1] * uy + inv[2];
        pts[2 * p + 1] = inv[3] * ux + inv[4] * uy + inv[5];
    }
}

}  // namespace

LandmarkModel::LandmarkModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LandmarkModel::LandmarkModel(LandmarkModel&&) noexcept = default;
LandmarkModel& LandmarkModel::operator=(LandmarkModel&&) noexcept = default;
LandmarkModel::~LandmarkModel() = default;

LandmarkModel LandmarkModel::load(const std::string& path) {
    return load_model_file(path, kMaxFileBytes, "a landmark model", [](const uint8_t* b, size_t n) {
        return LandmarkModel(load_landmark_impl(b, n));
    });
}

LandmarkModel LandmarkModel::load_memory(const void* bytes, size_t size) {
    if (!bytes && size) throw std::invalid_argument("LandmarkModel::load_memory: bytes is null");
    if (uint64_t(size) > kMaxFileBytes) throw ModelFormatError("landmark model: too large");
    return LandmarkModel(load_landmark_impl(static_cast<const uint8_t*>(bytes), size));
}

int LandmarkModel::levels() const { return 1 + int(impl_->levels.size()); }

void LandmarkModel::predict(const Image& gray, const double box[4], double pts[10],
                            int levels) const {
    if (!impl_) throw std::logic_error("LandmarkModel: used after being moved from");
    if (!box || !pts) throw std::invalid_argument("landmarks: box and pts must not be null");
    if (levels != -1 && levels < 1)
        throw std::invalid_argument("landmarks: levels must be -1 (all) or at least 1, got " +
                                    std::to_string(levels));
    check_gray(gray);
    check_box(gray, box);
    double out[10];
    level_one(*impl_, gray, box, out);
    const size_t refine = levels == -1 ? impl_->levels.size()
                                       : std::min(impl_->levels.size(), size_t(levels - 1));
    for (size_t i = 0; i < refine; ++i) refine_level(impl_->levels[i], gray, out);
    std::copy(out, out + 10, pts);
}

}  // namespace face
}  // namespace deepid2
