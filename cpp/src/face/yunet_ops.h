// The float32 NCHW kernels YuNet's graph needs (yunet_graph.cpp checks every
// shape before calling them; they check nothing).
#pragma once
#include <cstdint>
#include <vector>

namespace deepid2 {
namespace face {

struct ConvShape {
    int n, c, h, w;          // input
    int m, groups, kh, kw;   // output channels, groups, kernel
    int sh, sw;              // strides
    int pt, pl, pb, pr;      // padding: top, left, bottom, right
    int oh() const { return (h + pt + pb - kh) / sh + 1; }
    int ow() const { return (w + pl + pr - kw) / sw + 1; }
    // one input and one output channel per group
    bool depthwise() const { return c == groups && m == groups; }
};

// A convolution's constants, not owned: weight (m x c/groups x kh x kw), bias
// (m, or null) and, for every conv that is not depthwise, the weight packed
// once at load by pack_conv_weights.
struct ConvWeights {
    const float* weight = nullptr;
    const float* bias = nullptr;
    const float* packed = nullptr;
};

// Each group's m/groups x (c/groups * kh * kw) weight as the SGEMM's packed A
// (gemm.h), one group after another. Empty for a depthwise conv.
std::vector<float> pack_conv_weights(const ConvShape& s, const float* weight);

// y = conv(x, w), then max(y, 0) when relu. Depthwise convs run direct
// loops, 3x3 stride-2 full convs (YuNet's first) a direct kernel, every
// other conv the packed SGEMM over column blocks of x (1x1 stride 1) or of
// its im2col, the bias and ReLU applied to each block while it is in cache.
// scratch is reused.
void conv2d(const ConvShape& s, const ConvWeights& w, bool relu, const float* x, float* y,
            std::vector<float>& scratch);

// Max over kh x kw windows, strides sh x sw, no padding (floor mode).
void maxpool2d(int nc, int h, int w, int kh, int kw, int sh, int sw, const float* x, float* y);

// Nearest neighbour, asymmetric coordinates, floor: y[i][j] = x[i / fy][j / fx].
void upsample_nearest(int nc, int h, int w, int fy, int fx, const float* x, float* y);

}  // namespace face
}  // namespace deepid2
