// Momentum SGD with weight decay (docs/ops.md, "sgd_update"), in place:
//   v = momentum * v - lr * (g + weight_decay * p);  p += v
#include "sgd.cuh"

extern "C" __global__ void LAUNCH_BOUNDS(256)
sgd_update(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v, i64 count,
           float lr, float momentum, float weight_decay) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count;
         i += (i64)gridDim.x * blockDim.x)
        sgd_element(p, g, v, i, lr, momentum, weight_decay);
}
