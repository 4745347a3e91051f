// lsconv + bias + ReLU + 2 x 2 max-pool in one kernel (docs/ops.md,
// "lsconv_pool"): the unpooled output never goes to memory. Each output is
// summed as lsconv_fwd sums it (one float32 accumulator, taps in order, the
// same multiply-adds), then biased, rectified and pooled as maxpool_fwd
// pools (first maximum in row-major window order): the pooled y and the
// argmax are bit-identical to lsconv_fwd followed by maxpool_fwd. Its
// backward reads the gradient through the argmax (grad_src.cuh, the
// lsconv_*_pooled kernels of lsconv.cu and lsconv_tc.cu).
//
// The pooled windows are grouped in cells (computed on the host): rectangles
// of windows whose four positions (dy, dx) = (0,0), (0,1), (1,0), (1,1) lie
// in the same four regions r0..r3 (a window may straddle regions). cells[c] =
// {py0, npy, px0, npx, r0, r1, r2, r3}. A block computes 32 maps x 16 windows
// (64 positions) of one cell; 128 threads, each 4 maps x the 4 positions of
// one window. grid.x = cell * col_tiles + window tile, grid.y = map tile.
#include "common.cuh"

#define FP_BM 32
#define FP_BW 16
#define FP_BK 16  // lsconv_fwd's stage: zero taps past Q are added the same way
#define FP_THREADS 128

// NS = 1: the cell lies in one region (one weight tile for all positions);
// NS = 4: one tile per position.
template <int NS>
DEV void lsconv_pool_fwd_cell(const float* __restrict__ x, const float* __restrict__ w,
                              const float* __restrict__ b, const int* __restrict__ qoff,
                              const int* __restrict__ cd, float* __restrict__ y,
                              int* __restrict__ argmax, int N, int C, int H, int W, int K,
                              int KH, int KW, int relu, int win0) {
    const int OW = W - KW + 1, PH = (H - KH + 1) / 2, PW = OW / 2, Q = C * KH * KW;
    const int py0 = cd[0], npy = cd[1], px0 = cd[2], npx = cd[3], per = npy * npx;
    const int wins = N * per, k0 = blockIdx.y * FP_BM;
    __shared__ __align__(16) float Ws[NS][FP_BK][FP_BM];
    __shared__ __align__(16) float Xs[FP_BK][FP_BW * 4];
    const int tid = threadIdx.x, tx = tid % FP_BW, ty = tid / FP_BW;

    // This thread loads X for one position of one window (and taps lq, lq + 2, ...).
    const int lcol = tid % (FP_BW * 4), lq = tid / (FP_BW * 4);
    i64 xbase = -1;
    {
        const int win = win0 + lcol / 4, p = lcol % 4;
        if (win < wins) {
            const int n = win / per, wi = win % per;
            const int oy = 2 * (py0 + wi / npx) + p / 2, ox = 2 * (px0 + wi % npx) + p % 2;
            xbase = (i64)n * C * H * W + (i64)oy * W + ox;
        }
    }

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int p = 0; p < 4; ++p) acc[i][p] = 0.0f;

    for (int q0 = 0; q0 < Q; q0 += FP_BK) {
#pragma unroll
        for (int sl = 0; sl < NS; ++sl) {
            const float* wr = w + (i64)cd[4 + sl] * K * Q;
#pragma unroll
            for (int l = 0; l < (FP_BM * FP_BK) / FP_THREADS; ++l) {
                const int e = tid + l * FP_THREADS, kk = e % FP_BM, qq = e / FP_BM;
                const int k = k0 + kk, q = q0 + qq;
                Ws[sl][qq][kk] = (k < K && q < Q) ? LDG(wr + (i64)k * Q + q) : 0.0f;
            }
        }
#pragma unroll
        for (int l = 0; l < (FP_BW * 4 * FP_BK) / FP_THREADS; ++l) {
            const int qq = lq + l * (FP_THREADS / (FP_BW * 4)), q = q0 + qq;
            Xs[qq][lcol] = (xbase >= 0 && q < Q) ? LDG(x + xbase + LDG(qoff + q)) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FP_BK; ++kk) {
            const float4 v4 = *reinterpret_cast<const float4*>(&Xs[kk][tx * 4]);
            const float v[4] = {v4.x, v4.y, v4.z, v4.w};
            float a[NS][4];
#pragma unroll
            for (int sl = 0; sl < NS; ++sl)
#pragma unroll
                for (int i = 0; i < 4; ++i) a[sl][i] = Ws[sl][kk][ty * 4 + i];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int p = 0; p < 4; ++p) acc[i][p] += a[NS == 1 ? 0 : p][i] * v[p];
        }
        __syncthreads();
    }

    const int win = win0 + tx;
    if (win >= wins) return;
    const int n = win / per, wi = win % per, py = py0 + wi / npx, px = px0 + wi % npx;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int k = k0 + ty * 4 + i;
        if (k >= K) continue;
        float best = 0.0f;
        int at = 0;
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            const float s = acc[i][p] + LDG(b + (i64)cd[4 + (NS == 1 ? 0 : p)] * K + k);
            const float v = relu ? relu_f(s) : s;
            if (p == 0 || v > best) {  // maxpool_fwd: strict ">" from the window's first
                best = v;
                at = p;
            }
        }
        const i64 o = (((i64)n * K + k) * PH + py) * PW + px;
        y[o] = best;
        argmax[o] = (2 * py + at / 2) * OW + 2 * px + at % 2;
    }
}

extern "C" __global__ void LAUNCH_BOUNDS(FP_THREADS)
lsconv_pool_fwd(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ b, const int* __restrict__ qoff,
                const int* __restrict__ cells, float* __restrict__ y, int* __restrict__ argmax,
                int N, int C, int H, int W, int K, int KH, int KW, int relu, int col_tiles) {
    const int* cd = cells + (blockIdx.x / col_tiles) * 8;
    const int win0 = (blockIdx.x % col_tiles) * FP_BW;
    if (win0 >= N * cd[1] * cd[3]) return;  // a smaller cell: the whole block has nothing to do
    if (cd[4] == cd[5] && cd[4] == cd[6] && cd[4] == cd[7])  // the same for the whole block
        lsconv_pool_fwd_cell<1>(x, w, b, qoff, cd, y, argmax, N, C, H, W, K, KH, KW, relu,
                                win0);
    else
        lsconv_pool_fwd_cell<4>(x, w, b, qoff, cd, y, argmax, N, C, H, W, K, KH, KW, relu,
                                win0);
}

// Sets FLAG_ARGMAX in *flags where an argmax of the 2 x 2 pooling of an
// OW-wide map is outside its window (maxpool_bwd's check, before the fused
// backward reads through it). One thread per pooled element.
extern "C" __global__ void LAUNCH_BOUNDS(256)
pool_argmax_check(const int* __restrict__ argmax, int* __restrict__ flags, i64 total, int OW,
                  int PH, int PW) {
    for (i64 o = blockIdx.x * (i64)blockDim.x + threadIdx.x; o < total;
         o += (i64)gridDim.x * blockDim.x) {
        const int px = (int)(o % PW), py = (int)((o / PW) % PH), a = LDG(argmax + o);
        if (!(a >= 0 && (a / OW) / 2 == py && (a % OW) / 2 == px)) atomicOr(flags, FLAG_ARGMAX);
    }
}
