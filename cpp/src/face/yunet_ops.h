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
};

// y = conv(x, weight (m x c/groups x kh x kw), bias (m, may be null)), then
// max(y, 0) when relu. Full convolutions go through im2col and the packed
// SGEMM (1x1 stride-1 ones straight on x), depthwise ones (one input and one
// output channel per group) through direct loops. scratch is reused.
void conv2d(const ConvShape& s, const float* x, const float* weight, const float* bias,
            bool relu, float* y, std::vector<float>& scratch);

// Max over kh x kw windows, strides sh x sw, no padding (floor mode).
void maxpool2d(int nc, int h, int w, int kh, int kw, int sh, int sw, const float* x, float* y);

// Nearest neighbour, asymmetric coordinates, floor: y[i][j] = x[i / fy][j / fx].
void upsample_nearest(int nc, int h, int w, int fy, int fx, const float* x, float* y);

}  // namespace face
}  // namespace deepid2
