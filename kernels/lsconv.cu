// Locally-shared convolution (docs/ops.md, "lsconv"): forward with fused
// bias + ReLU, backward-data, backward-weight/bias.
//
// Shapes: x N x C x H x W, w RY x RX x K x C x KH x KW, b RY x RX x K,
// y N x K x OH x OW (OH = H - KH + 1, OW = W - KW + 1), regions of RH x RW
// output neurons (the last row / column of regions may be smaller).
//
// Per region r the op is a matrix product over "columns" (n, p), p a
// position of the region, and "taps" q = (c, i, j), Q = C*KH*KW:
//   forward:        Y_r[k, col]  = sum_q W_r[k, q] X_r[q, col] (+ b, ReLU)
//   weight grad:    dW_r[k, q]  += sum_col G_r[k, col] X_r[q, col]
//   bias grad:      db_r[k]     += sum_col G_r[k, col]     (the tap q = Q of ones)
// with X_r[q, col] = x[n, c, oy + i, ox + j] (implicit im2col: qoff[q] is the
// offset c*H*W + i*W + j, computed once on the host) and G the ReLU-masked dy.
// The input gradient is a gather over the taps that reach each input (no
// atomics): dx[n, c, iy, ix] = sum_{k,i,j} G[n, k, iy-i, ix-j] W_{r(iy-i, ix-j)}[k, c, i, j].
//
// Determinism: forward and backward-data sum in a fixed order. The weight
// gradient splits each region's columns into S chunks (S depends on the
// shapes only); in deterministic mode every chunk writes its partial sums to a
// workspace that lsconv_bwd_w_reduce adds in chunk order; in fast mode the
// chunks atomicAdd into dw / db directly.
#include "common.cuh"

// ---------------------------------------------------------------------------
// Forward. Block: 32 output maps x 64 columns of one region; 128 threads,
// each 4 maps x 4 columns (columns tx, tx+16, tx+32, tx+48: coalesced stores).
// grid.x = region * col_tiles + column tile, grid.y = map tile.
#define FW_BM 32
#define FW_BN 64
#define FW_BK 16
#define FW_THREADS 128

extern "C" __global__ void LAUNCH_BOUNDS(FW_THREADS)
lsconv_fwd(const float* __restrict__ x, const float* __restrict__ w,
           const float* __restrict__ b, const int* __restrict__ qoff, float* __restrict__ y,
           int N, int C, int H, int W, int K, int KH, int KW, int RH, int RW, int relu,
           int col_tiles) {
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int Q = C * KH * KW;
    const int r = blockIdx.x / col_tiles, ct = blockIdx.x % col_tiles;
    const int oy0 = (r / RX) * RH, ox0 = (r % RX) * RW;
    const int pw = imin(RW, OW - ox0), P = imin(RH, OH - oy0) * pw;
    const int cols = N * P, col0 = ct * FW_BN, k0 = blockIdx.y * FW_BM;
    if (col0 >= cols) return;  // a smaller region: the whole block has nothing to do

    __shared__ __align__(16) float Ws[FW_BK][FW_BM];
    __shared__ __align__(16) float Xs[FW_BK][FW_BN];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

    // This thread loads X for one fixed column (and taps lq, lq + 2, ...).
    const int lcol = tid % FW_BN, lq = tid / FW_BN;
    i64 xbase = -1;
    {
        const int col = col0 + lcol;
        if (col < cols) {
            const int n = col / P, p = col % P;
            xbase = (i64)n * C * H * W + (i64)(oy0 + p / pw) * W + (ox0 + p % pw);
        }
    }
    const float* wr = w + (i64)r * K * Q;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int q0 = 0; q0 < Q; q0 += FW_BK) {
#pragma unroll
        for (int l = 0; l < (FW_BM * FW_BK) / FW_THREADS; ++l) {  // 4: k fastest
            const int e = tid + l * FW_THREADS, kk = e % FW_BM, qq = e / FW_BM;
            const int k = k0 + kk, q = q0 + qq;
            Ws[qq][kk] = (k < K && q < Q) ? LDG(wr + (i64)k * Q + q) : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < (FW_BN * FW_BK) / FW_THREADS; ++l) {  // 8
            const int qq = lq + l * (FW_THREADS / FW_BN), q = q0 + qq;
            Xs[qq][lcol] = (xbase >= 0 && q < Q) ? LDG(x + xbase + LDG(qoff + q)) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FW_BK; ++kk) {
            float a[4], v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = Ws[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = Xs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * v[j];
        }
        __syncthreads();
    }

    const i64 OHW = (i64)OH * OW;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int col = col0 + tx + 16 * j;
        if (col >= cols) continue;
        const int n = col / P, p = col % P;
        const i64 ybase = (i64)n * K * OHW + (i64)(oy0 + p / pw) * OW + (ox0 + p % pw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + ty * 4 + i;
            if (k >= K) continue;
            const float v = acc[i][j] + LDG(b + (i64)r * K + k);
            y[ybase + k * OHW] = relu ? relu_f(v) : v;
        }
    }
}

// ---------------------------------------------------------------------------
// Backward, weights and biases. Block: 32 maps x 64 taps (tap Q is the bias)
// of one region, over one chunk of its columns. grid.x = region * q_tiles +
// tap tile, grid.y = map tile, grid.z = chunk s (of S).
// Deterministic (fast == 0): writes part[s][r][k][0..Q] (every element, zeros
// for an empty chunk). Fast (fast != 0): atomicAdd into dw / db.
#define WG_BM 32
#define WG_BN 64
#define WG_BK 16
#define WG_THREADS 128

extern "C" __global__ void LAUNCH_BOUNDS(WG_THREADS)
lsconv_bwd_w(const float* __restrict__ x, const float* __restrict__ y,
             const float* __restrict__ dy, const int* __restrict__ qoff,
             float* __restrict__ part, float* __restrict__ dw, float* __restrict__ db,
             int N, int C, int H, int W, int K, int KH, int KW, int RH, int RW, int relu,
             int q_tiles, int S, int fast) {
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int RY = (OH + RH - 1) / RH, R = RY * RX;
    const int Q = C * KH * KW;
    const int r = blockIdx.x / q_tiles, qt = blockIdx.x % q_tiles;
    const int oy0 = (r / RX) * RH, ox0 = (r % RX) * RW;
    const int pw = imin(RW, OW - ox0), P = imin(RH, OH - oy0) * pw;
    const int cols = N * P, k0 = blockIdx.y * WG_BM, q0 = qt * WG_BN, s = blockIdx.z;
    const int chunk = (cols + S - 1) / S;
    const int cbeg = imin(cols, s * chunk), cend = imin(cols, cbeg + chunk);
    const i64 OHW = (i64)OH * OW;

    __shared__ __align__(16) float Gs[WG_BK][WG_BM + 1];  // +1: fewer bank conflicts on stores
    __shared__ __align__(16) float Xs[WG_BK][WG_BN];
    __shared__ i64 s_xb[WG_BK], s_yb[WG_BK];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

    // This thread loads X for one fixed tap (the bias "tap" Q reads ones).
    const int lq = tid % WG_BN, lc = tid / WG_BN;
    const int myq = q0 + lq;
    const int myoff = myq < Q ? LDG(qoff + myq) : 0;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int c0 = cbeg; c0 < cend; c0 += WG_BK) {
        if (tid < WG_BK) {
            const int col = c0 + tid;
            i64 xb = -1, yb = -1;
            if (col < cend) {
                const int n = col / P, p = col % P, oy = oy0 + p / pw, ox = ox0 + p % pw;
                xb = (i64)n * C * H * W + (i64)oy * W + ox;
                yb = (i64)n * K * OHW + (i64)oy * OW + ox;
            }
            s_xb[tid] = xb;
            s_yb[tid] = yb;
        }
        __syncthreads();
#pragma unroll
        for (int l = 0; l < (WG_BM * WG_BK) / WG_THREADS; ++l) {  // 4: column fastest
            const int e = tid + l * WG_THREADS, cc = e % WG_BK, kk = e / WG_BK;
            const int k = k0 + kk;
            const i64 yb = s_yb[cc];
            float g = 0.0f;
            if (yb >= 0 && k < K) {
                const i64 o = yb + k * OHW;
                g = LDG(dy + o);
                if (relu && !(LDG(y + o) > 0.0f)) g = 0.0f;
            }
            Gs[cc][kk] = g;
        }
#pragma unroll
        for (int l = 0; l < (WG_BN * WG_BK) / WG_THREADS; ++l) {  // 8
            const int cc = lc + l * (WG_THREADS / WG_BN);
            const i64 xb = s_xb[cc];
            float v = 0.0f;
            if (xb >= 0) v = myq < Q ? LDG(x + xb + myoff) : (myq == Q ? 1.0f : 0.0f);
            Xs[cc][lq] = v;
        }
        __syncthreads();
#pragma unroll
        for (int cc = 0; cc < WG_BK; ++cc) {
            float a[4], v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = Gs[cc][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = Xs[cc][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * v[j];
        }
        __syncthreads();
    }

    const int Q1 = Q + 1;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int k = k0 + ty * 4 + i;
        if (k >= K) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int q = q0 + tx + 16 * j;
            if (q > Q) continue;
            if (!fast) {
                part[(((i64)s * R + r) * K + k) * Q1 + q] = acc[i][j];
            } else if (acc[i][j] != 0.0f) {
                if (q < Q)
                    atomicAdd(dw + ((i64)r * K + k) * Q + q, acc[i][j]);
                else
                    atomicAdd(db + (i64)r * K + k, acc[i][j]);
            }
        }
    }
}

// dw += sum_s part[s] and db += (the bias column), chunks added in order s =
// 0, 1, ... in double: the same result on every run. One thread per element
// of R x K x (Q + 1).
extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_bwd_w_reduce(const float* __restrict__ part, float* __restrict__ dw,
                    float* __restrict__ db, int R, int K, int Q, int S) {
    const int Q1 = Q + 1;
    const i64 total = (i64)R * K * Q1;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        double sum = 0.0;
        for (int s = 0; s < S; ++s) sum += (double)part[(i64)s * total + e];
        const i64 rk = e / Q1;
        const int q = (int)(e % Q1);
        if (q < Q)
            dw[rk * Q + q] += (float)sum;
        else
            db[rk] += (float)sum;
    }
}

// ---------------------------------------------------------------------------
// Backward, input. The weights are first laid out as wt[r][k][i][j][c]
// (channels innermost, padded to CP = a multiple of 8 with zeros) so that a
// thread reads its 8 channels as two 16-byte loads.
extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_wt_transpose(const float* __restrict__ w, float* __restrict__ wt, int R, int K, int C,
                    int KH, int KW, int CP) {
    const int T = KH * KW;
    const i64 total = (i64)R * K * T * CP;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int c = (int)(e % CP);
        const i64 rkt = e / CP;
        const int t = (int)(rkt % T);
        const i64 rk = rkt / T;
        wt[e] = c < C ? w[(rk * C + c) * T + t] : 0.0f;
    }
}

// Block: one image n, 8 channels, an 8 x 16 tile of dx; 128 threads, one input
// position and 8 channels each. The masked output gradient of the taps that
// reach the tile, for KC maps at a time, is staged in shared memory
// (KC x (8 + KH - 1) x (16 + KW - 1) floats, dynamic).
// grid.x = n * tiles + tile (tiles = ceil(H/8) * ceil(W/16)), grid.y = C/8 tiles.
#define BD_TH 8
#define BD_TW 16
#define BD_CT 8
#define BD_THREADS (BD_TH * BD_TW)

extern "C" __global__ void LAUNCH_BOUNDS(BD_THREADS)
lsconv_bwd_data(const float* __restrict__ y, const float* __restrict__ dy,
                const float* __restrict__ wt, float* __restrict__ dx, int N, int C, int H,
                int W, int K, int KH, int KW, int RH, int RW, int relu, int CP, int KC) {
    DYN_SMEM(float, gs);
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int tiles_x = (W + BD_TW - 1) / BD_TW, tiles = ((H + BD_TH - 1) / BD_TH) * tiles_x;
    const int n = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int iy0 = (tile / tiles_x) * BD_TH, ix0 = (tile % tiles_x) * BD_TW;
    const int c0 = blockIdx.y * BD_CT;
    const int tid = threadIdx.x, ty = tid / BD_TW, tx = tid % BD_TW;
    const int iy = iy0 + ty, ix = ix0 + tx;
    const int GH = BD_TH + KH - 1, GW = BD_TW + KW - 1, GHW = GH * GW;
    const int gy0 = iy0 - (KH - 1), gx0 = ix0 - (KW - 1);  // output coords of gs[.][0][0]
    const i64 OHW = (i64)OH * OW;
    const float* dyn = dy + (i64)n * K * OHW;
    const float* yn = y + (i64)n * K * OHW;

    float acc[BD_CT];
#pragma unroll
    for (int c = 0; c < BD_CT; ++c) acc[c] = 0.0f;

    for (int kb = 0; kb < K; kb += KC) {
        const int kc = imin(KC, K - kb);
        for (int e = tid; e < kc * GHW; e += BD_THREADS) {
            const int kk = e / GHW, rem = e % GHW;
            const int oy = gy0 + rem / GW, ox = gx0 + rem % GW;
            float g = 0.0f;
            if (oy >= 0 && oy < OH && ox >= 0 && ox < OW) {
                const i64 o = (i64)(kb + kk) * OHW + (i64)oy * OW + ox;
                g = LDG(dyn + o);
                if (relu && !(LDG(yn + o) > 0.0f)) g = 0.0f;
            }
            gs[e] = g;
        }
        __syncthreads();
        if (iy < H && ix < W) {
            for (int i = 0; i < KH; ++i) {
                const int oy = iy - i;
                if (oy < 0 || oy >= OH) continue;
                for (int j = 0; j < KW; ++j) {
                    const int ox = ix - j;
                    if (ox < 0 || ox >= OW) continue;
                    const int r = (oy / RH) * RX + ox / RW;
                    const float* wp = wt + ((((i64)r * K + kb) * KH + i) * KW + j) * CP + c0;
                    const float* gp = gs + (ty + KH - 1 - i) * GW + (tx + KW - 1 - j);
                    const i64 wstep = (i64)KH * KW * CP;
                    for (int kk = 0; kk < kc; ++kk) {
                        const float g = gp[kk * GHW];
                        const float4 w0 = LDG(reinterpret_cast<const float4*>(wp));
                        const float4 w1 = LDG(reinterpret_cast<const float4*>(wp + 4));
                        acc[0] += g * w0.x;
                        acc[1] += g * w0.y;
                        acc[2] += g * w0.z;
                        acc[3] += g * w0.w;
                        acc[4] += g * w1.x;
                        acc[5] += g * w1.y;
                        acc[6] += g * w1.z;
                        acc[7] += g * w1.w;
                        wp += wstep;
                    }
                }
            }
        }
        __syncthreads();
    }
    if (iy < H && ix < W) {
        const i64 HW = (i64)H * W;
        float* dxp = dx + ((i64)n * C + c0) * HW + (i64)iy * W + ix;
#pragma unroll
        for (int c = 0; c < BD_CT; ++c)
            if (c0 + c < C) dxp[c * HW] = acc[c];
    }
}

// The same gather without shared memory, one dx element per thread: for
// kernels too large for lsconv_bwd_data's staging buffer.
extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_bwd_data_simple(const float* __restrict__ y, const float* __restrict__ dy,
                       const float* __restrict__ w, float* __restrict__ dx, int N, int C, int H,
                       int W, int K, int KH, int KW, int RH, int RW, int relu) {
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const i64 OHW = (i64)OH * OW, total = (i64)N * C * H * W;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int ix = (int)(e % W);
        const int iy = (int)((e / W) % H);
        const int c = (int)((e / ((i64)W * H)) % C);
        const i64 n = e / ((i64)W * H * C);
        float acc = 0.0f;
        for (int i = 0; i < KH; ++i) {
            const int oy = iy - i;
            if (oy < 0 || oy >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int ox = ix - j;
                if (ox < 0 || ox >= OW) continue;
                const int r = (oy / RH) * RX + ox / RW;
                for (int k = 0; k < K; ++k) {
                    const i64 o = (n * K + k) * OHW + (i64)oy * OW + ox;
                    float g = LDG(dy + o);
                    if (relu && !(LDG(y + o) > 0.0f)) g = 0.0f;
                    acc += g * LDG(w + ((((i64)r * K + k) * C + c) * KH + i) * KW + j);
                }
            }
        }
        dx[e] = acc;
    }
}
