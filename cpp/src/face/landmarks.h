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
    // A "deepid2-landmarks-model/1" file (level 1, the cascade's levels in
    // metadata "cascade") or a level-1 "deepid2-landmarks-checkpoint/1".
    // ModelIOError: unreadable; ModelFormatError: anything in it not as the
    // config says (each field and tensor is checked).
    static LandmarkModel load(const std::string& path);
    static LandmarkModel load_memory(const void* bytes, size_t size);

    // gray: the image's grey (to_gray); box: x, y, w, h (the Haar convention);
    // pts: 10 doubles out (x, y of the 5 points, image pixels).
    // levels: how many levels to run (1: F1 alone; -1, or more than the file
    // holds: all of them, as Python's load_landmark_model(levels=) does).
    // Always flip-averaged (face/landmarks.py's default). Throws
    // std::invalid_argument for a box that is not finite, not positive, off
    // the image or too degenerate to crop; BadImage for a gray that is not a
    // 1-channel image. const: one model may predict from several threads.
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
