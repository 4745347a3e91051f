// Internals of face::LandmarkModel (landmarks.h): the nets as shapes and
// weights (landmark_nets.cpp), the file reader (landmark_load.cpp) and the
// refinement levels (landmark_cascade.cpp). Everything here is immutable
// once loaded; every forward works on buffers of its own, so one model may
// predict from several threads at once.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "deepid2/ops.h"
#include "image.h"
#include "landmarks.h"

namespace deepid2 {
namespace face {

constexpr int kPoints = 5;  // left eye, right eye, nose, left / right mouth corner
// A mirrored face: left <-> right eye and mouth corner (nets/landmark.py FLIP_ORDER).
constexpr int kFlipOrder[kPoints] = {1, 0, 2, 4, 3};

struct ConvLayer {
    LsconvShape shape;  // shape.n unused: the batch is given per forward
    bool pool;          // followed by a 2 x 2 max-pool
    std::vector<float> w, b;
};

struct DenseLayer {
    int in, out;
    bool relu;
    std::vector<float> w, b;  // in x out, out
};

// A grey ConvNet: convolutions (ReLU, some pooled), then dense layers; the
// last is linear. F1 and the refinement net are both of this kind.
struct ConvNet {
    int size = 0;  // input: 1 x size x size
    std::vector<ConvLayer> convs;
    std::vector<DenseLayer> dense;

    int outputs() const { return dense.back().out; }
    // x: n x 1 x size x size (standardised) -> y: n x outputs(), through the
    // same ops, in the same order, as Python's cpu backend.
    void forward(int n, const float* x, float* y) const;
};

// Shapes of F1 (nets/landmark.py param_shapes via nets/deepid2.py
// stack_shapes) and of a refinement net (nets/refine.py), weights empty.
// Throw std::invalid_argument for inputs too small, as Python does.
ConvNet f1_shapes(int size, int grid_y, int grid_x, int hidden, int outputs);
ConvNet refine_shapes(int size, int conv1, int conv2, int hidden);

// One refinement level (face/landmark_cascade.py CascadeLevel).
struct CascadeLevel {
    int number = 0;
    std::vector<double> patches;  // patch sides in units of the frame's r
    int size = 15;                // patches resampled to size x size
    bool rotate_frame = true;
    std::vector<ConvNet> nets;    // nets[point * J + j], J = patches.size()
};

struct LandmarkModel::Impl {
    ConvNet f1;               // outputs the 10 normalised coordinates in [0, 1]
    double box_scale = 1.2;   // the crop: the box grown this much about its centre
    std::vector<CascadeLevel> levels;
};

// landmark_load.cpp: a model or level-1 checkpoint file's bytes, checked
// field by field (ModelFormatError naming the problem).
std::unique_ptr<LandmarkModel::Impl> load_landmark_impl(const uint8_t* bytes, uint64_t size);

// nets/landmark.py standardise: (v - mean) / max(std, 4) per input, in double.
void standardise(const float* v, int count, float* out);

// face/landmark_cascade.py refine_flip_averaged for one face: pts (10
// doubles, image pixels) refined in place by one level.
void refine_level(const CascadeLevel& level, const Image& gray, double pts[10]);

}  // namespace face
}  // namespace deepid2
