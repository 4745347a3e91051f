// Small kernels around the dense layer's matrix products (which go through
// cuBLAS via CuPy): bias + activation, the ReLU mask of the output gradient,
// and column sums for the bias gradient (fixed order: deterministic).
#include "common.cuh"

// y[i, j] = act(y[i, j] + b[j]) in place; y is rows x M.
extern "C" __global__ void LAUNCH_BOUNDS(256)
bias_act(float* __restrict__ y, const float* __restrict__ b, i64 rows, int M, int relu) {
    const i64 total = rows * M;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const float v = y[e] + b[e % M];
        y[e] = relu ? relu_f(v) : v;
    }
}

// g = y > 0 ? dy : 0
extern "C" __global__ void LAUNCH_BOUNDS(256)
relu_mask(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ g,
          i64 count) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < count;
         e += (i64)gridDim.x * blockDim.x)
        g[e] = y[e] > 0.0f ? dy[e] : 0.0f;
}

// db[j] += sum_i g[i, j], rows in order, in double; one thread per column.
extern "C" __global__ void LAUNCH_BOUNDS(256)
colsum_add(const float* __restrict__ g, float* __restrict__ db, int rows, int M) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= M) return;
    double s = 0.0;
    for (int i = 0; i < rows; ++i) s += (double)g[(i64)i * M + j];
    db[j] += (float)s;
}
