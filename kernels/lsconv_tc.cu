// TF32 tensor-core variants of the locally-shared convolution (docs/ops.md,
// "lsconv" and "TF32"); the float32 kernels and the GEMM view of the op are
// in lsconv.cu. Needs sm_80 or newer (mma.sync m16n8k8 .tf32, kernels/tc.cuh).
//
// Every operand is rounded to TF32 once, as it is staged in shared memory;
// products are exact and the sums float32 (the tensor cores' order). No
// atomics except in fast mode's weight gradient: results are the same on
// every run.
//
//   lsconv_tc_fwd_mBM:   Y_r[k, col] = sum_q W_r[k, q] X_r[q, col] (+ b, ReLU),
//                        lsconv_fwd's parameters. Also the input gradient of a
//                        one-region layer, as lsconv_fwd is (gpu._dx_as_forward_conv).
//   lsconv_tc_dcol_mBM:  D_r[q, col] = sum_k W_r[k, q] G[k, col] into an
//                        N x Q x OH x OW workspace (Q = C kh kw maps over the
//                        output map); lsconv_col2im then sums each input's
//                        taps in a fixed order: the input gradient of a layer
//                        with several regions (conv3, conv4).
//   lsconv_tc_bwd_w_mBM: dW_r[k, q] = sum_col G[k, col] X_r[q, col] (tap Q, the
//                        bias: X = 1), lsconv_bwd_w_*'s parameters: column
//                        chunk s writes part[s] (deterministic) or atomicAdds
//                        (fast); lsconv_bwd_w_reduce (lsconv.cu) adds the parts.
// _pooled_ variants read G through lsconv_pool's argmax (grad_src.cuh).
//
// Blocks of 128 threads (4 warps); a block tile of BM = 16 * MT rows (maps,
// or taps for dcol) by 64 columns (taps for the weight gradient), 32 of the
// summed index per shared-memory stage; each warp computes all MT row tiles
// of 16 of the columns. The host picks MT (BM = 32, 48, 64, 80) to waste the
// fewest rows. Tiles never need the shapes to be multiples of anything:
// loads past an edge read 0, stores past it are skipped.
#include "grad_src.cuh"
#include "tc.cuh"

#define TC_THREADS 128
#define TC_BN 64
#define TC_BK 32
#define TC_LDK (TC_BK + 4)  // a [row][k] tile's row: conflict-free fragments and stores
#define TC_LDN (TC_BN + 8)  // a [k][col] tile's row

// Column sources for the forward-shaped GEMM: one column per thread, fixed
// for the whole block (at_column), then value(k) for k < Kred.
struct ImcolX {  // X_r[q, col] = x[n, c, oy + i, ox + j] (qoff: lsconv.cu)
    const float* x;
    const int* qoff;
    i64 chw;
    int W;
    i64 base;
    DEV void at_column(int n, int oy, int ox) { base = n * chw + (i64)oy * W + ox; }
    DEV float value(int q) const { return LDG(x + base + LDG(qoff + q)); }
};

template <class G>
struct GradColumn {  // G[k, col] = G[n, k, oy, ox]
    G g;
    int K;
    i64 plane0;
    int oy, ox;
    DEV void at_column(int n, int y, int x) {
        plane0 = (i64)n * K;
        oy = y;
        ox = x;
    }
    DEV float value(int k) const { return g.at(plane0 + k, oy, ox); }
};

template <int MT>
DEV void zero_acc(float (&acc)[MT][2][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;
}

// acc += one shared-memory stage (TC_BK of the summed index): the MT row
// tiles of A times this warp's 16 columns of B (warp * 16 .. + 15).
template <int MT, bool AT, bool BT>
DEV void mma_stage(float (&acc)[MT][2][4], const unsigned* As, int lda, const unsigned* Bs,
                   int ldb, int warp) {
#pragma unroll
    for (int ks = 0; ks < TC_BK; ks += 8) {
        unsigned a[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) load_a_frag<AT>(a[i], As, lda, i * 16, ks);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            unsigned bf[2];
            load_b_frag<BT>(bf, Bs, ldb, ks, warp * 16 + j * 8);
#pragma unroll
            for (int i = 0; i < MT; ++i) mma_tf32(acc[i][j], a[i], bf);
        }
    }
}

// out[n, m, oy, ox] = act(b[r, m] + sum_k A_r[m, k] B[k, col]) over the output
// map OH x OW in regions of RH x RW; A_r = w + r M Kred, [m][k] or (AT) [k][m].
template <int MT, bool AT, class Src>
DEV void tc_fwd_core(Src src, const float* __restrict__ w, const float* __restrict__ b,
                     float* __restrict__ out, int N, int M, int Kred, int OH, int OW, int RH,
                     int RW, int relu, int col_tiles) {
    constexpr int BM = 16 * MT;
    constexpr int AL = BM * TC_BK / TC_THREADS, BL = TC_BK * TC_BN / TC_THREADS;
    constexpr int LDA = AT ? BM + 8 : TC_LDK;
    constexpr int A_WORDS = AT ? TC_BK * LDA : BM * LDA, B_WORDS = TC_BK * TC_LDN;
    constexpr int LDC = TC_BN + 4, C_WORDS = BM * LDC;
    constexpr int WORDS = A_WORDS + B_WORDS > C_WORDS ? A_WORDS + B_WORDS : C_WORDS;
    __shared__ __align__(16) unsigned smem[WORDS];
    unsigned* As = smem;
    unsigned* Bs = smem + A_WORDS;
    float* Cs = reinterpret_cast<float*>(smem);  // the output tile, after the last stage

    const int RX = (OW + RW - 1) / RW;
    const int r = blockIdx.x / col_tiles, ct = blockIdx.x % col_tiles;
    const int oy0 = (r / RX) * RH, ox0 = (r % RX) * RW;
    const int pw = imin(RW, OW - ox0), P = imin(RH, OH - oy0) * pw;
    const int cols = N * P, col0 = ct * TC_BN, m0 = blockIdx.y * BM;
    if (col0 >= cols) return;  // a smaller region: the whole block has nothing to do
    const int tid = threadIdx.x, warp = tid >> 5;
    const int lcol = tid % TC_BN, lk = tid / TC_BN;  // this thread's column, first k row
    const int col = col0 + lcol;
    const bool col_ok = col < cols;
    if (col_ok) src.at_column(col / P, oy0 + (col % P) / pw, ox0 + (col % P) % pw);
    const float* wr = w + (i64)r * M * Kred;

    float ar[AL], br[BL];
    auto a_rc = [&](int l, int& m, int& kk) {  // element l of this thread's A loads
        const int e = tid + l * TC_THREADS;
        m = AT ? e % BM : e / TC_BK;
        kk = AT ? e / BM : e % TC_BK;
    };
    auto load = [&](int k0) {
#pragma unroll
        for (int l = 0; l < AL; ++l) {
            int m, kk;
            a_rc(l, m, kk);
            const int mm = m0 + m, k = k0 + kk;
            ar[l] = mm < M && k < Kred ? LDG(wr + (AT ? (i64)k * M + mm : (i64)mm * Kred + k))
                                       : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < BL; ++l) {
            const int k = k0 + lk + 2 * l;
            br[l] = col_ok && k < Kred ? src.value(k) : 0.0f;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int l = 0; l < AL; ++l) {
            int m, kk;
            a_rc(l, m, kk);
            As[AT ? kk * LDA + m : m * LDA + kk] = tf32_bits(ar[l]);
        }
#pragma unroll
        for (int l = 0; l < BL; ++l) Bs[(lk + 2 * l) * TC_LDN + lcol] = tf32_bits(br[l]);
    };

    float acc[MT][2][4];
    zero_acc(acc);
    load(0);
    store();
    __syncthreads();
    for (int k0 = 0; k0 < Kred; k0 += TC_BK) {
        const bool more = k0 + TC_BK < Kred;
        if (more) load(k0 + TC_BK);  // in flight while this stage is multiplied
        mma_stage<MT, AT, false>(acc, As, LDA, Bs, TC_LDN, warp);
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

    // The tile goes through shared memory so that each thread writes one
    // column's maps (consecutive threads, consecutive positions).
    const int g = (tid & 31) >> 2, t = tid & 3;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v)
                Cs[(i * 16 + g + (v >> 1) * 8) * LDC + warp * 16 + j * 8 + 2 * t + (v & 1)] =
                    acc[i][j][v];
    __syncthreads();
    if (!col_ok) return;
    const int n = col / P, p = col % P;
    const i64 OHW = (i64)OH * OW;
    float* op = out + (i64)n * M * OHW + (i64)(oy0 + p / pw) * OW + (ox0 + p % pw);
    for (int m = lk; m < BM && m0 + m < M; m += TC_THREADS / TC_BN) {
        float v = Cs[m * LDC + lcol];
        if (b) v += LDG(b + (i64)r * M + m0 + m);
        op[(m0 + m) * OHW] = relu ? relu_f(v) : v;
    }
}

// part[s][r][k][q] (or atomics into dw / db) = sum over column chunk s of
// G[k, col] X_r[q, col], q = 0..Q (Q: the bias). Block: BM maps x 64 taps.
template <int MT, class G>
DEV void tc_wgrad_core(const float* __restrict__ x, const int* __restrict__ qoff, G gsrc,
                       float* __restrict__ part, float* __restrict__ dw, float* __restrict__ db,
                       int N, int C, int H, int W, int K, int KH, int KW, int RH, int RW,
                       int q_tiles, int S, int fast) {
    constexpr int BM = 16 * MT;
    constexpr int AL = BM * TC_BK / TC_THREADS, BL = TC_BN * TC_BK / TC_THREADS;
    __shared__ __align__(16) unsigned As[BM * TC_LDK];     // G: [map][column]
    __shared__ __align__(16) unsigned Bs[TC_BN * TC_LDK];  // X: [tap][column]
    const int OH = H - KH + 1, OW = W - KW + 1, RX = (OW + RW - 1) / RW;
    const int R = ((OH + RH - 1) / RH) * RX, Q = C * KH * KW;
    const int r = blockIdx.x / q_tiles, qt = blockIdx.x % q_tiles;
    const int oy0 = (r / RX) * RH, ox0 = (r % RX) * RW;
    const int pw = imin(RW, OW - ox0), P = imin(RH, OH - oy0) * pw;
    const int cols = N * P, k0 = blockIdx.y * BM, q0 = qt * TC_BN, s = blockIdx.z;
    const int chunk = (cols + S - 1) / S;
    const int cbeg = imin(cols, s * chunk), cend = imin(cols, cbeg + chunk);
    const int tid = threadIdx.x, warp = tid >> 5, lc = tid % TC_BK, lr = tid / TC_BK;
    // rows of this thread's loads: lr + 4 l; its taps' offsets (-1: past Q, -2: the bias)
    int xo[BL];
#pragma unroll
    for (int l = 0; l < BL; ++l) {
        const int q = q0 + lr + 4 * l;
        xo[l] = q > Q ? -1 : (q == Q ? -2 : LDG(qoff + q));
    }
    float ar[AL], br[BL];
    auto load = [&](int c0) {
        const int col = c0 + lc;
        const bool ok = col < cend;
        int n = 0, oy = 0, ox = 0;
        if (ok) {
            const int p = col % P;
            n = col / P;
            oy = oy0 + p / pw;
            ox = ox0 + p % pw;
        }
        const i64 xb = (i64)n * C * H * W + (i64)oy * W + ox;
#pragma unroll
        for (int l = 0; l < AL; ++l) {
            const int k = k0 + lr + 4 * l;
            ar[l] = ok && k < K ? gsrc.at((i64)n * K + k, oy, ox) : 0.0f;
        }
#pragma unroll
        for (int l = 0; l < BL; ++l)
            br[l] = !ok || xo[l] == -1 ? 0.0f : (xo[l] == -2 ? 1.0f : LDG(x + xb + xo[l]));
    };
    auto store = [&]() {
#pragma unroll
        for (int l = 0; l < AL; ++l) As[(lr + 4 * l) * TC_LDK + lc] = tf32_bits(ar[l]);
#pragma unroll
        for (int l = 0; l < BL; ++l) Bs[(lr + 4 * l) * TC_LDK + lc] = tf32_bits(br[l]);
    };

    float acc[MT][2][4];
    zero_acc(acc);
    if (cbeg < cend) {
        load(cbeg);
        store();
    }
    __syncthreads();
    for (int c0 = cbeg; c0 < cend; c0 += TC_BK) {
        const bool more = c0 + TC_BK < cend;
        if (more) load(c0 + TC_BK);
        mma_stage<MT, false, true>(acc, As, TC_LDK, Bs, TC_LDK, warp);
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

    const int g = (tid & 31) >> 2, t = tid & 3, Q1 = Q + 1;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const int k = k0 + i * 16 + g + (v >> 1) * 8;
                const int q = q0 + warp * 16 + j * 8 + 2 * t + (v & 1);
                if (k >= K || q > Q) continue;
                const float a = acc[i][j][v];
                if (!fast)
                    part[(((i64)s * R + r) * K + k) * Q1 + q] = a;
                else if (a != 0.0f)
                    atomicAdd(q < Q ? dw + ((i64)r * K + k) * Q + q : db + (i64)r * K + k, a);
            }
}

#define LSCONV_TC(MT, BM)                                                                          \
    extern "C" __global__ void LAUNCH_BOUNDS(TC_THREADS) lsconv_tc_fwd_m##BM(                      \
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,     \
        const int* __restrict__ qoff, float* __restrict__ y, int N, int C, int H, int W, int K,    \
        int KH, int KW, int RH, int RW, int relu, int col_tiles) {                                 \
        tc_fwd_core<MT, false>(ImcolX{x, qoff, (i64)C * H * W, W, 0}, w, b, y, N, K,               \
                               C * KH * KW, H - KH + 1, W - KW + 1, RH, RW, relu, col_tiles);      \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS(TC_THREADS) lsconv_tc_dcol_m##BM(                     \
        const float* __restrict__ y, const float* __restrict__ dy, const float* __restrict__ w,    \
        float* __restrict__ dcol, int N, int K, int OH, int OW, int Q, int RH, int RW,             \
        int relu, int col_tiles) {                                                                 \
        const GradDense gd = grad_dense(y, dy, relu, OH, OW, 1, 1);                                \
        tc_fwd_core<MT, true>(GradColumn<GradDense>{gd, K, 0, 0, 0}, w, nullptr, dcol, N, Q, K,    \
                              OH, OW, RH, RW, 0, col_tiles);                                       \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS(TC_THREADS) lsconv_tc_dcol_pooled_m##BM(              \
        const float* __restrict__ yp, const float* __restrict__ dyp, const int* __restrict__ am,   \
        const float* __restrict__ w, float* __restrict__ dcol, int N, int K, int OH, int OW,       \
        int Q, int RH, int RW, int relu, int col_tiles) {                                          \
        const GradPooled gp = grad_pooled(yp, dyp, am, relu, OH, OW, 1, 1);                        \
        tc_fwd_core<MT, true>(GradColumn<GradPooled>{gp, K, 0, 0, 0}, w, nullptr, dcol, N, Q,      \
                              K, OH, OW, RH, RW, 0, col_tiles);                                    \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS(TC_THREADS) lsconv_tc_bwd_w_m##BM(                    \
        const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,    \
        const int* __restrict__ qoff, float* __restrict__ part, float* __restrict__ dw,            \
        float* __restrict__ db, int N, int C, int H, int W, int K, int KH, int KW, int RH,         \
        int RW, int relu, int q_tiles, int S, int fast) {                                          \
        const GradDense gd = grad_dense(y, dy, relu, H, W, KH, KW);                                \
        tc_wgrad_core<MT>(x, qoff, gd, part, dw, db, N, C, H, W, K, KH, KW, RH, RW, q_tiles,       \
                          S, fast);                                                                \
    }                                                                                              \
    extern "C" __global__ void LAUNCH_BOUNDS(TC_THREADS) lsconv_tc_bwd_w_pooled_m##BM(             \
        const float* __restrict__ x, const float* __restrict__ yp,                                 \
        const float* __restrict__ dyp, const int* __restrict__ am,                                 \
        const int* __restrict__ qoff, float* __restrict__ part, float* __restrict__ dw,            \
        float* __restrict__ db, int N, int C, int H, int W, int K, int KH, int KW, int RH,         \
        int RW, int relu, int q_tiles, int S, int fast) {                                          \
        const GradPooled gp = grad_pooled(yp, dyp, am, relu, H, W, KH, KW);                        \
        tc_wgrad_core<MT>(x, qoff, gp, part, dw, db, N, C, H, W, K, KH, KW, RH, RW, q_tiles,       \
                          S, fast);                                                                \
    }
LSCONV_TC(2, 32)
LSCONV_TC(3, 48)
LSCONV_TC(4, 64)
LSCONV_TC(5, 80)

// dx[n, c, iy, ix] = sum over the taps (i, j) that reach it of
// dcol[n, (c, i, j), iy - i, ix - j], in (i, j) order. One thread per dx element.
extern "C" __global__ void LAUNCH_BOUNDS(256)
lsconv_col2im(const float* __restrict__ dcol, float* __restrict__ dx, int N, int C, int H,
              int W, int KH, int KW) {
    const int OH = H - KH + 1, OW = W - KW + 1, Q = C * KH * KW;
    const i64 total = (i64)N * C * H * W;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int ix = (int)(e % W), iy = (int)((e / W) % H);
        const int c = (int)((e / ((i64)W * H)) % C);
        const i64 n = e / ((i64)W * H * C);
        const float* dp = dcol + (n * Q + (i64)c * KH * KW) * OH * OW;
        float acc = 0.0f;
        for (int i = 0; i < KH; ++i) {
            const int oy = iy - i;
            if (oy < 0 || oy >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int ox = ix - j;
                if (ox < 0 || ox >= OW) continue;
                acc += LDG(dp + ((i64)(i * KW + j) * OH + oy) * OW + ox);
            }
        }
        dx[e] = acc;
    }
}
