// The landmark ConvNet F1 and its refinement cascade (levels 2, 3) of a
// "deepid2-landmarks-model/1" file, as deepid2_core/face/landmarks.py and
// landmark_cascade.py run them: crop (box grown box_scale, 39 x 39,
// bilinear, border replicated), standardise, flip-average, then each level.
#pragma once
#include <memory>
#include <string>

#include "image.h"

namespace deepid2 {
namespace face {

class LandmarkModel {
public:
    static LandmarkModel load(const std::string& path);
    static LandmarkModel load_memory(const void* bytes, size_t size);

    // gray: the image's grey (to_gray); box: x, y, w, h (the Haar convention);
    // pts: 10 doubles out (x, y of the 5 points, image pixels).
    // levels: how many levels to run (1: F1 alone; -1: all the file holds).
    void predict(const Image& gray, const double box[4], double pts[10], int levels = -1) const;
    int levels() const;  // 1 + refinement levels in the file

    LandmarkModel(LandmarkModel&&) noexcept;
    LandmarkModel& operator=(LandmarkModel&&) noexcept;
    ~LandmarkModel();
    struct Impl;

private:
    explicit LandmarkModel(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace face
}  // namespace deepid2
