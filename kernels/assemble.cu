// Batch assembly on the device (the same as the cpu backend's assemble_batch,
// deepid2_core/backends/cpu_batch.py): uint8 patches N x H x W x C, indices (int64), flip flags
// (one byte each) -> float32 B x C x H x W, out = (v - mean) * scale in
// float32, each image mirrored left-right where flip[b] != 0. Rounded
// exactly as numpy's float32 expression (no fused multiply-add).
#include "common.cuh"

extern "C" __global__ void LAUNCH_BOUNDS(256)
assemble_batch(const unsigned char* __restrict__ patches, const i64* __restrict__ indices,
               const unsigned char* __restrict__ flip, float* __restrict__ out, int B, int H,
               int W, int C, i64 n_patches, float mean, float scale, int* __restrict__ flags) {
    const i64 total = (i64)B * C * H * W;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int x = (int)(e % W);
        const int y = (int)((e / W) % H);
        const int c = (int)((e / ((i64)W * H)) % C);
        const int b = (int)(e / ((i64)W * H * C));
        const i64 src = indices[b];
        if (src < 0 || src >= n_patches) {
            atomicOr(flags, FLAG_INDEX);
            out[e] = 0.0f;
            continue;
        }
        const int sx = flip[b] ? W - 1 - x : x;
        const float v = (float)patches[((src * H + y) * W + sx) * C + c];
        out[e] = __fmul_rn(__fsub_rn(v, mean), scale);
    }
}
