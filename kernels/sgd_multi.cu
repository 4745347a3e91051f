// sgd_update (sgd.cu) for many tensors in one launch, bit-identical to one
// launch per tensor (the same sgd_element on every element).
//   table:  per tensor t, 4 i64: the addresses of p, g, v and the count;
//   hyper:  per tensor, 3 floats: lr, momentum, weight_decay;
//   starts: T + 1 i64: tensor t has blocks starts[t] .. starts[t + 1] - 1 of
//           the grid (starts[T] = gridDim.x), which stride over its elements.
#include "sgd.cuh"

extern "C" __global__ void LAUNCH_BOUNDS(256)
sgd_update_multi(const i64* __restrict__ table, const float* __restrict__ hyper,
                 const i64* __restrict__ starts, int T) {
    const i64 blk = blockIdx.x;
    int lo = 0, hi = T - 1;  // the last tensor whose first block is <= blk
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (LDG(starts + mid) <= blk)
            lo = mid;
        else
            hi = mid - 1;
    }
    const i64* e = table + 4 * (i64)lo;
    float* p = reinterpret_cast<float*>(LDG(e));
    const float* g = reinterpret_cast<const float*>(LDG(e + 1));
    float* v = reinterpret_cast<float*>(LDG(e + 2));
    const i64 count = LDG(e + 3), first = LDG(starts + lo), blocks = LDG(starts + lo + 1) - first;
    const float lr = LDG(hyper + 3 * lo), momentum = LDG(hyper + 3 * lo + 1);
    const float weight_decay = LDG(hyper + 3 * lo + 2);
    for (i64 i = (blk - first) * blockDim.x + threadIdx.x; i < count; i += blocks * blockDim.x)
        sgd_element(p, g, v, i, lr, momentum, weight_decay);
}
