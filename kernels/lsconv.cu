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
// The backward kernels read G through a source (grad_src.cuh): dy masked by
// y (lsconv_*), or lsconv_pool's pooled gradient through its argmax
// (lsconv_*_pooled*: y and dy pooled 2 x 2, argmax); the sums are the same.
//
// Determinism: forward and backward-data sum in a fixed order. The weight
// gradient splits each region's columns into S chunks (S depends on the
// shapes only); in deterministic mode every chunk writes its partial sums to a
// workspace that lsconv_bwd_w_reduce adds in chunk order; in fast mode the
// chunks atomicAdd into dw / db directly.
#include "grad_src.cuh"

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
// Backward, weights and biases. Block: BM maps x BN taps (tap Q is the bias)
// of one region, over one chunk of its columns; each thread 4 maps x TN taps
// (float4 reads of shared memory: 4 maps and TN/4 groups of 4 taps).
// Shared memory is double-buffered: the next 16 columns are loaded into
// registers while the current ones are multiplied.
// grid.x = region * q_tiles + tap tile, grid.y = map tile, grid.z = chunk s.
// Deterministic (fast == 0): writes part[s][r][k][0..Q] (every element, zeros
// for an empty chunk). Fast (fast != 0): atomicAdd into dw / db.
#define WG_BK 16

template <int BM, int BN, int TN, class G>
DEV void lsconv_bwd_w_tile(const float* __restrict__ x, const G gsrc, const int* __restrict__ qoff,
                           float* __restrict__ part, float* __restrict__ dw,
                           float* __restrict__ db, int N, int C, int H, int W, int K, int KH,
                           int KW, int RH, int RW, int q_tiles, int S, int fast) {
    constexpr int THREADS = (BM / 4) * (BN / TN);
    constexpr int GL = (BM * WG_BK + THREADS - 1) / THREADS;  // G loads per thread
    constexpr int XL = (BN * WG_BK + THREADS - 1) / THREADS;  // X loads per thread
    constexpr int GP = BM + 4, XP = BN + 4;                   // padded rows (16-byte aligned)
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int RY = (OH + RH - 1) / RH, R = RY * RX;
    const int Q = C * KH * KW;
    const int r = blockIdx.x / q_tiles, qt = blockIdx.x % q_tiles;
    const int oy0 = (r / RX) * RH, ox0 = (r % RX) * RW;
    const int pw = imin(RW, OW - ox0), P = imin(RH, OH - oy0) * pw;
    const int cols = N * P, k0 = blockIdx.y * BM, q0 = qt * BN, s = blockIdx.z;
    const int chunk = (cols + S - 1) / S;
    const int cbeg = imin(cols, s * chunk), cend = imin(cols, cbeg + chunk);

    __shared__ __align__(16) float Gs[2][WG_BK][GP];
    __shared__ __align__(16) float Xs[2][WG_BK][XP];
    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    // Loads: THREADS is a multiple of 16, so element e = tid + l * THREADS
    // always has column e % 16 = tid % 16: one column per thread.
    const int lc = tid % WG_BK;
    int xo[XL];  // this thread's tap offsets (-1: past Q, -2: the bias tap)
#pragma unroll
    for (int l = 0; l < XL; ++l) {
        const int e = tid + l * THREADS, q = q0 + e / WG_BK;
        xo[l] = e >= BN * WG_BK || q > Q ? -1 : (q == Q ? -2 : LDG(qoff + q));
    }
    float gr[GL], xr[XL];

    auto load = [&](int c0) {
        const int col = c0 + lc;
        i64 xb = -1;
        int n = 0, oy = 0, ox = 0;
        if (col < cend) {
            const int p = col % P;
            n = col / P;
            oy = oy0 + p / pw;
            ox = ox0 + p % pw;
            xb = (i64)n * C * H * W + (i64)oy * W + ox;
        }
#pragma unroll
        for (int l = 0; l < GL; ++l) {
            const int e = tid + l * THREADS, k = k0 + e / WG_BK;
            gr[l] = xb >= 0 && e < BM * WG_BK && k < K ? gsrc.at((i64)n * K + k, oy, ox) : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < XL; ++l)
            xr[l] = xb < 0 || xo[l] == -1 ? 0.0f : (xo[l] == -2 ? 1.0f : LDG(x + xb + xo[l]));
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int l = 0; l < GL; ++l) {
            const int e = tid + l * THREADS;
            if (e < BM * WG_BK) Gs[buf][lc][e / WG_BK] = gr[l];
        }
#pragma unroll
        for (int l = 0; l < XL; ++l) {
            const int e = tid + l * THREADS;
            if (e < BN * WG_BK) Xs[buf][lc][e / WG_BK] = xr[l];
        }
    };

    float acc[4][TN];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    int buf = 0;
    if (cbeg < cend) {
        load(cbeg);
        store(0);
    }
    __syncthreads();
    for (int c0 = cbeg; c0 < cend; c0 += WG_BK) {
        const bool more = c0 + WG_BK < cend;
        if (more) load(c0 + WG_BK);  // in flight while this chunk is multiplied
#pragma unroll
        for (int cc = 0; cc < WG_BK; ++cc) {
            const float4 a = *reinterpret_cast<const float4*>(&Gs[buf][cc][ty * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int jg = 0; jg < TN / 4; ++jg) {
                const float4 v =
                    *reinterpret_cast<const float4*>(&Xs[buf][cc][jg * (BN / TN) * 4 + tx * 4]);
                const float vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][jg * 4 + j] += av[i] * vv[j];
            }
        }
        if (more) store(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

    const int Q1 = Q + 1;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int k = k0 + ty * 4 + i;
        if (k >= K || ty * 4 + i >= BM) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int q = q0 + (j / 4) * (BN / TN) * 4 + tx * 4 + j % 4;
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

// One extern "C" kernel per tile shape, lsconv_bwd_w_<BM>_<BN> (and
// lsconv_bwd_w_pooled_<BM>_<BN>); the host picks the shape that wastes the
// fewest maps and taps.
#define LSCONV_BWD_W(BM, BN, TN)                                                                   \
    extern "C" __global__ void LAUNCH_BOUNDS((BM / 4) * (BN / TN)) lsconv_bwd_w_##BM##_##BN(       \
        const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,    \
        const int* __restrict__ qoff, float* __restrict__ part, float* __restrict__ dw,            \
        float* __restrict__ db, int N, int C, int H, int W, int K, int KH, int KW, int RH,         \
        int RW, int relu, int q_tiles, int S, int fast) {                                          \
        const GradDense gd = grad_dense(y, dy, relu, H, W, KH, KW);                                \
        lsconv_bwd_w_tile<BM, BN, TN>(x, gd, qoff, part, dw, db, N, C, H, W, K, KH, KW, RH,        \
                                      RW, q_tiles, S, fast);                                       \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS((BM / 4) * (BN / TN))                                 \
        lsconv_bwd_w_pooled_##BM##_##BN(                                                           \
            const float* __restrict__ x, const float* __restrict__ yp,                             \
            const float* __restrict__ dyp, const int* __restrict__ am,                             \
            const int* __restrict__ qoff, float* __restrict__ part, float* __restrict__ dw,        \
            float* __restrict__ db, int N, int C, int H, int W, int K, int KH, int KW, int RH,     \
            int RW, int relu, int q_tiles, int S, int fast) {                                      \
        const GradPooled gp = grad_pooled(yp, dyp, am, relu, H, W, KH, KW);                        \
        lsconv_bwd_w_tile<BM, BN, TN>(x, gp, qoff, part, dw, db, N, C, H, W, K, KH, KW, RH,        \
                                      RW, q_tiles, S, fast);                                       \
    }
LSCONV_BWD_W(20, 64, 4)
LSCONV_BWD_W(40, 64, 4)
LSCONV_BWD_W(60, 64, 4)
LSCONV_BWD_W(20, 128, 8)
LSCONV_BWD_W(40, 128, 8)
LSCONV_BWD_W(60, 128, 8)

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

// Block: NB images, 8 channels, a TH x TW tile of dx (tile and NB chosen by
// the host so that few threads idle: a whole small map per image, several
// images per block); one thread per (image, PX adjacent input positions),
// 8 channels each. PX = 2 only where one region covers the map: then both
// positions use the same weights, and each weight load feeds 16 FMAs. The
// masked output gradient of the taps that reach the tile, for KC maps at a
// time, is staged in shared memory (NB x KC x (TH + KH - 1) x (TW + KW - 1)
// floats, dynamic).
// grid.x = image group * tiles + tile (tiles = ceil(H/TH) * ceil(W/TW)),
// grid.y = C/8 tiles; blockDim.x >= NB * TH * TW / PX (at most 256).
#define BD_CT 8

template <int PX, class G>
DEV void lsconv_bwd_data_tile(const G gsrc, const float* __restrict__ wt, float* __restrict__ dx,
                              int N, int C, int H, int W, int K, int KH, int KW, int RH, int RW,
                              int CP, int KC, int TH, int TW, int NB) {
    DYN_SMEM(float, gs);
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int tiles_x = (W + TW - 1) / TW, tiles = ((H + TH - 1) / TH) * tiles_x;
    const int n0 = (blockIdx.x / tiles) * NB, tile = blockIdx.x % tiles;
    const int iy0 = (tile / tiles_x) * TH, ix0 = (tile % tiles_x) * TW;
    const int c0 = blockIdx.y * BD_CT;
    const int tid = threadIdx.x, TWP = TW / PX, TT = TH * TWP;
    const int img = tid / TT, ty = (tid % TT) / TWP, tx = (tid % TWP) * PX;
    const int n = n0 + img, iy = iy0 + ty, ix = ix0 + tx;
    const bool active = img < NB && n < N && iy < H && ix < W;
    const int GH = TH + KH - 1, GW = TW + KW - 1 + PX - 1, GHW = GH * GW;
    const int gy0 = iy0 - (KH - 1), gx0 = ix0 - (KW - 1);  // output coords of gs[.][.][0][0]

    float acc[PX][BD_CT];
#pragma unroll
    for (int p = 0; p < PX; ++p)
#pragma unroll
        for (int c = 0; c < BD_CT; ++c) acc[p][c] = 0.0f;

    for (int kb = 0; kb < K; kb += KC) {
        const int kc = imin(KC, K - kb), per_img = kc * GHW;
        for (int e = tid; e < NB * per_img; e += blockDim.x) {
            const int im = e / per_img, rem0 = e % per_img;
            const int kk = rem0 / GHW, rem = rem0 % GHW;
            const int oy = gy0 + rem / GW, ox = gx0 + rem % GW;
            const bool in = n0 + im < N && oy >= 0 && oy < OH && ox >= 0 && ox < OW;
            gs[e] = in ? gsrc.at((i64)(n0 + im) * K + kb + kk, oy, ox) : 0.0f;
        }
        __syncthreads();
        if (active) {
            for (int i = 0; i < KH; ++i) {
                const int oy = iy - i;
                if (oy < 0 || oy >= OH) continue;
                for (int j = 0; j < KW; ++j) {
                    const int ox = ix - j;
                    // PX = 2: ox may be -1 or OW for one of the two positions;
                    // their staged g is 0 there (outside the output map).
                    if (PX == 1 && (ox < 0 || ox >= OW)) continue;
                    if (PX == 2 && (ox + 1 < 0 || ox >= OW)) continue;
                    const int r = PX == 1 ? (oy / RH) * RX + ox / RW : 0;
                    const float* wp = wt + ((((i64)r * K + kb) * KH + i) * KW + j) * CP + c0;
                    const float* gp =
                        gs + img * per_img + (ty + KH - 1 - i) * GW + (tx + KW - 1 - j);
                    const i64 wstep = (i64)KH * KW * CP;
                    for (int kk = 0; kk < kc; ++kk) {
                        const float4 w0 = LDG(reinterpret_cast<const float4*>(wp));
                        const float4 w1 = LDG(reinterpret_cast<const float4*>(wp + 4));
#pragma unroll
                        for (int p = 0; p < PX; ++p) {
                            const float g = gp[kk * GHW + p];
                            acc[p][0] += g * w0.x;
                            acc[p][1] += g * w0.y;
                            acc[p][2] += g * w0.z;
                            acc[p][3] += g * w0.w;
                            acc[p][4] += g * w1.x;
                            acc[p][5] += g * w1.y;
                            acc[p][6] += g * w1.z;
                            acc[p][7] += g * w1.w;
                        }
                        wp += wstep;
                    }
                }
            }
        }
        __syncthreads();
    }
    if (active) {
        const i64 HW = (i64)H * W;
        float* dxp = dx + ((i64)n * C + c0) * HW + (i64)iy * W + ix;
#pragma unroll
        for (int p = 0; p < PX; ++p) {
            if (ix + p >= W) continue;
#pragma unroll
            for (int c = 0; c < BD_CT; ++c)
                if (c0 + c < C) dxp[c * HW + p] = acc[p][c];
        }
    }
}

// lsconv_bwd_data, and lsconv_bwd_data_px2 for a layer with one region (an
// ordinary convolution; TW even); _pooled: G through lsconv_pool's argmax
// (with a register budget: at ptxas's default target, 64, it spills).
#define LSCONV_BWD_DATA(NAME, PX)                                                                  \
    extern "C" __global__ void LAUNCH_BOUNDS_MIN(256, 3)                                           \
        NAME(const float* __restrict__ y, const float* __restrict__ dy,                            \
             const float* __restrict__ wt, float* __restrict__ dx, int N, int C, int H, int W,     \
             int K, int KH, int KW, int RH, int RW, int relu, int CP, int KC, int TH, int TW,      \
             int NB) {                                                                             \
        const GradDense gd = grad_dense(y, dy, relu, H, W, KH, KW);                                \
        lsconv_bwd_data_tile<PX>(gd, wt, dx, N, C, H, W, K, KH, KW, RH, RW, CP, KC, TH, TW,        \
                                 NB);                                                              \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS_MIN(256, 2) NAME##_pooled(                            \
        const float* __restrict__ yp, const float* __restrict__ dyp,                               \
        const int* __restrict__ am, const float* __restrict__ wt, float* __restrict__ dx,          \
        int N, int C, int H, int W, int K, int KH, int KW, int RH, int RW, int relu, int CP,       \
        int KC, int TH, int TW, int NB) {                                                          \
        const GradPooled gp = grad_pooled(yp, dyp, am, relu, H, W, KH, KW);                        \
        lsconv_bwd_data_tile<PX>(gp, wt, dx, N, C, H, W, K, KH, KW, RH, RW, CP, KC, TH, TW,        \
                                 NB);                                                              \
    }
LSCONV_BWD_DATA(lsconv_bwd_data, 1)
LSCONV_BWD_DATA(lsconv_bwd_data_px2, 2)

// The masked output gradient G (dy where y > 0, else 0; dy itself without
// ReLU), zero-padded by KH - 1 rows and KW - 1 columns on each side: for a
// layer with one region, dx is then the forward convolution of this with the
// flipped, transposed weights (lsconv_fwd). One thread per element of gp,
// N x K x (OH + 2 KH - 2) x (OW + 2 KW - 2).
template <class G>
DEV void lsconv_pad_grad_body(const G gsrc, float* __restrict__ gp, int N, int K, int OH, int OW,
                              int KH, int KW) {
    const int PH = OH + 2 * (KH - 1), PW = OW + 2 * (KW - 1);
    const i64 total = (i64)N * K * PH * PW;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int px = (int)(e % PW), py = (int)((e / PW) % PH);
        const i64 nk = e / ((i64)PW * PH);
        const int oy = py - (KH - 1), ox = px - (KW - 1);
        gp[e] = oy >= 0 && oy < OH && ox >= 0 && ox < OW ? gsrc.at(nk, oy, ox) : 0.0f;
    }
}

extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_pad_grad(const float* __restrict__ y, const float* __restrict__ dy,
                float* __restrict__ gp, int N, int K, int OH, int OW, int KH, int KW, int relu) {
    lsconv_pad_grad_body(GradDense{y, dy, relu, OW, (i64)OH * OW}, gp, N, K, OH, OW, KH, KW);
}

extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_pad_grad_pooled(const float* __restrict__ yp, const float* __restrict__ dyp,
                       const int* __restrict__ am, float* __restrict__ gp, int N, int K, int OH,
                       int OW, int KH, int KW, int relu) {
    lsconv_pad_grad_body(GradPooled{yp, dyp, am, relu, OW, OH / 2, OW / 2}, gp, N, K, OH,
                         OW, KH, KW);
}

// The same gather without shared memory, one dx element per thread: for
// kernels too large for lsconv_bwd_data's staging buffer.
template <class G>
DEV void lsconv_bwd_data_simple_body(const G gsrc, const float* __restrict__ w,
                                     float* __restrict__ dx, int N, int C, int H, int W, int K,
                                     int KH, int KW, int RH, int RW) {
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const i64 total = (i64)N * C * H * W;
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
                    const float g = gsrc.at(n * K + k, oy, ox);
                    acc += g * LDG(w + ((((i64)r * K + k) * C + c) * KH + i) * KW + j);
                }
            }
        }
        dx[e] = acc;
    }
}

// (At ptxas's default register target, 64, the body spills on sm_80.)
extern "C" __global__ void LAUNCH_BOUNDS_MIN(256, 3)
lsconv_bwd_data_simple(const float* __restrict__ y, const float* __restrict__ dy,
                       const float* __restrict__ w, float* __restrict__ dx, int N, int C, int H,
                       int W, int K, int KH, int KW, int RH, int RW, int relu) {
    lsconv_bwd_data_simple_body(grad_dense(y, dy, relu, H, W, KH, KW), w, dx, N, C, H, W, K, KH,
                                KW, RH, RW);
}

extern "C" __global__ void LAUNCH_BOUNDS_MIN(256, 3)
lsconv_bwd_data_simple_pooled(const float* __restrict__ yp, const float* __restrict__ dyp,
                              const int* __restrict__ am, const float* __restrict__ w,
                              float* __restrict__ dx, int N, int C, int H, int W, int K, int KH,
                              int KW, int RH, int RW, int relu) {
    lsconv_bwd_data_simple_body(grad_pooled(yp, dyp, am, relu, H, W, KH, KW), w, dx, N, C, H, W,
                                K, KH, KW, RH, RW);
}
