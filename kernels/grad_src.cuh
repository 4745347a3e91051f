// Where lsconv's backward kernels read G[n, k, oy, ox], the gradient of the
// convolution's output (before the ReLU) that they multiply:
//   GradDense:  dy masked by the ReLU of the saved output y (lsconv_backward);
//   GradPooled: the gradient of lsconv_pool (docs/ops.md, "lsconv_pool") with
//     2 x 2 windows: the pooled dy at each window's argmax, masked by the
//     pooled y, 0 elsewhere (the unpooled gradient, never written to memory).
//     The window is a constant: a division by a run-time size makes ptxas
//     spill in lsconv_bwd_data; other sizes compose the two ops on the host.
// plane = n * K + k. Both give exactly the values the unfused path reads
// (maxpool_backward of where(y > 0, dy, 0)), so the kernels' sums are the same.
#ifndef DEEPID2_KERNELS_GRAD_SRC_CUH
#define DEEPID2_KERNELS_GRAD_SRC_CUH
#include "common.cuh"

struct GradDense {
    const float* __restrict__ y;   // N x K x OH x OW (read only with relu)
    const float* __restrict__ dy;  // N x K x OH x OW
    int relu, OW;
    i64 OHW;  // OH * OW
    DEV float at(i64 plane, int oy, int ox) const {
        const i64 o = plane * OHW + (i64)oy * OW + ox;
        float g = LDG(dy + o);
        if (relu && !(LDG(y + o) > 0.0f)) g = 0.0f;
        return g;
    }
};

struct GradPooled {
    const float* __restrict__ yp;   // N x K x PH x PW, the pooled output (read only with relu)
    const float* __restrict__ dyp;  // N x K x PH x PW
    const int* __restrict__ am;     // N x K x PH x PW: oy * OW + ox of each window's winner
    int relu, OW, PH, PW;           // PH = OH / 2, PW = OW / 2
    DEV float at(i64 plane, int oy, int ox) const {
        const int py = oy >> 1, px = ox >> 1;
        if (py >= PH || px >= PW) return 0.0f;  // a row / column the floor dropped
        const i64 o = (plane * PH + py) * PW + px;
        if (LDG(am + o) != oy * OW + ox) return 0.0f;
        float g = LDG(dyp + o);
        if (relu && !(LDG(yp + o) > 0.0f)) g = 0.0f;
        return g;
    }
};

// The sources of a layer with an H x W input and a KH x KW kernel.
DEV GradDense grad_dense(const float* y, const float* dy, int relu, int H, int W, int KH, int KW) {
    return GradDense{y, dy, relu, W - KW + 1, (i64)(H - KH + 1) * (W - KW + 1)};
}
DEV GradPooled grad_pooled(const float* yp, const float* dyp, const int* am, int relu, int H,
                           int W, int KH, int KW) {
    const int OW = W - KW + 1;
    return GradPooled{yp, dyp, am, relu, OW, (H - KH + 1) / 2, OW / 2};
}

#endif  // DEEPID2_KERNELS_GRAD_SRC_CUH
