// Where lsconv's backward kernels read G[n, k, oy, ox], the gradient of the
// convolution's output (before the ReLU) that they multiply:
//   GradDense:  dy masked by the ReLU of the saved output y (lsconv_backward);
//   GradPooled: the gradient of lsconv_pool (docs/ops.md, "lsconv_pool"): the
//     pooled dy at each window's argmax, masked by the pooled y, 0 elsewhere
//     (the unpooled gradient, never written to memory).
// plane = n * K + k. Both give exactly the values the unfused path reads
// (maxpool_backward of where(y > 0, dy, 0)), so the kernels' sums are the same.
#ifndef DEEPID2_KERNELS_GRAD_SRC_CUH
#define DEEPID2_KERNELS_GRAD_SRC_CUH
#include "common.cuh"

struct GradDense {
    const float* y;   // N x K x OH x OW (read only with relu)
    const float* dy;  // N x K x OH x OW
    int relu, OH, OW;
    DEV float at(i64 plane, int oy, int ox) const {
        const i64 o = (plane * OH + oy) * OW + ox;
        float g = LDG(dy + o);
        if (relu && !(LDG(y + o) > 0.0f)) g = 0.0f;
        return g;
    }
};

struct GradPooled {
    const float* yp;   // N x K x PH x PW, the pooled output (read only with relu)
    const float* dyp;  // N x K x PH x PW
    const int* am;     // N x K x PH x PW: iy * OW + ix of each window's winner
    int relu, OW, PH, PW, S;
    DEV float at(i64 plane, int oy, int ox) const {
        const int py = oy / S, px = ox / S;
        if (py >= PH || px >= PW) return 0.0f;  // a row / column the floor dropped
        const i64 o = (plane * PH + py) * PW + px;
        if (LDG(am + o) != oy * OW + ox) return 0.0f;
        float g = LDG(dyp + o);
        if (relu && !(LDG(yp + o) > 0.0f)) g = 0.0f;
        return g;
    }
};

#endif  // DEEPID2_KERNELS_GRAD_SRC_CUH
