// The momentum SGD update of one element (docs/ops.md, "sgd_update"), shared
// by sgd.cu and sgd_multi.cu so that both compile the same arithmetic (the
// same multiply-adds fused): their results are bit-identical.
#ifndef DEEPID2_KERNELS_SGD_CUH
#define DEEPID2_KERNELS_SGD_CUH
#include "common.cuh"

DEV void sgd_element(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                     i64 i, float lr, float momentum, float weight_decay) {
    const float nv = momentum * v[i] - lr * (g[i] + weight_decay * p[i]);
    v[i] = nv;
    p[i] += nv;
}

#endif  // DEEPID2_KERNELS_SGD_CUH
