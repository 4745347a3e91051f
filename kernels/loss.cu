// Losses (docs/ops.md, "joint_loss" and "regression_loss").
//
// joint_loss runs as four launches:
//   xent_rows        one block per row: softmax cross-entropy, first argmax,
//                    dlogits; the row's loss (double) and correctness;
//   verif_pairs      one block per pair: the pair's distance or cosine, loss,
//                    d/dparams and the coefficients of its feature gradient;
//   verif_dfeatures  one block per feature row: gathers the gradient of every
//                    pair that uses the row, in pair order (no atomics), with
//                    the CPU backend's formulas and float rounding;
//   joint_finalize   one block: sums in a fixed order, writes the scalars.
// Every sum has a fixed order, so the results are the same on every run.
// Invalid labels / pair indices / pair_y set bits of *flags (the host raises
// ValueError); such entries are skipped, never used to index memory.
#include "common.cuh"

#define XENT_THREADS 256
#define PAIR_THREADS 128
#define PINFO 10  // doubles per pair in pinfo (layout in verif_pairs)

#define V_L2 0
#define V_L2_POS 1
#define V_L1 2
#define V_COSINE 3

extern "C" __global__ void LAUNCH_BOUNDS(XENT_THREADS)
xent_rows(const float* __restrict__ logits, const int* __restrict__ labels,
          float* __restrict__ dlogits, double* __restrict__ row_loss,
          int* __restrict__ row_correct, int* __restrict__ flags, int N, int NC) {
    __shared__ float s_v[XENT_THREADS];
    __shared__ int s_i[XENT_THREADS];
    __shared__ double s_d[XENT_THREADS];
    const int row = blockIdx.x, tid = threadIdx.x;
    const float* z = logits + (i64)row * NC;
    float* g = dlogits + (i64)row * NC;
    int label = labels[row];
    if (label < 0 || label >= NC) {
        if (tid == 0) atomicOr(flags, FLAG_LABEL);
        label = 0;
    }

    // Maximum and its first index: each thread scans j = tid, tid + T, ...
    // (strict ">" keeps its first), then a tree that prefers the smaller index
    // among equal values.
    float bv = neg_inf();
    int bi = 0x7fffffff;
    for (int j = tid; j < NC; j += XENT_THREADS) {
        const float v = z[j];
        if (j == tid || v > bv) {
            bv = v;
            bi = j;
        }
    }
    s_v[tid] = bv;
    s_i[tid] = bi;
    __syncthreads();
    for (int s = XENT_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float v2 = s_v[tid + s];
            const int i2 = s_i[tid + s];
            if (v2 > s_v[tid] || (v2 == s_v[tid] && i2 < s_i[tid])) {
                s_v[tid] = v2;
                s_i[tid] = i2;
            }
        }
        __syncthreads();
    }
    const float mx = s_v[0];
    const int arg = s_i[0];

    // exp(z - max): kept in dlogits, summed in double.
    double local = 0.0;
    for (int j = tid; j < NC; j += XENT_THREADS) {
        const float e = expf(z[j] - mx);
        g[j] = e;
        local += (double)e;
    }
    const double se = block_sum_double(local, s_d);
    const float inv_n = 1.0f / (float)N;
    const float inv = (float)(1.0 / se) * inv_n;
    for (int j = tid; j < NC; j += XENT_THREADS) {  // the same j as above: no barrier needed
        float v = g[j] * inv;
        if (j == label) v -= inv_n;
        g[j] = v;
    }
    if (tid == 0) {
        row_loss[row] = log(se) - ((double)z[label] - (double)mx);
        row_correct[row] = arg == label ? 1 : 0;
    }
}

// pinfo[p * PINFO + ...]:
//   0 loss of the pair, 1 d/dparams[0], 2 d/dparams[1] (both scaled by
//   lam / P), 3 active (1: the pair has a feature gradient),
//   l2 / l2_pos: 4 k, gradient (a) k * (fa - fb), (b) -k * (fa - fb)
//   l1:          4 k, gradient (a) k * sign(fa - fb), (b) the negative
//   cosine:      4 dc, 5 inv, 6 cos, 7 |fa|^2 + eps, 8 |fb|^2 + eps:
//                (a) dc * (fb * inv - cos * fa / na2), (b) dc * (fa * inv - cos * fb / nb2)
extern "C" __global__ void LAUNCH_BOUNDS(PAIR_THREADS)
verif_pairs(const float* __restrict__ f, const int* __restrict__ pa, const int* __restrict__ pb,
            const int* __restrict__ py, const float* __restrict__ params,
            double* __restrict__ pinfo, int* __restrict__ flags, int N, int D, int variant,
            double scale) {
    __shared__ double s_d[PAIR_THREADS];
    const int p = blockIdx.x, tid = threadIdx.x;
    const int a = pa[p], b = pb[p], yv = py[p];
    double* out = pinfo + (i64)p * PINFO;
    const bool bad_index = a < 0 || a >= N || b < 0 || b >= N;
    const bool bad_y = yv != 1 && yv != -1;
    if (bad_index || bad_y) {  // uniform over the block, before any barrier
        if (tid == 0) {
            atomicOr(flags, (bad_index ? FLAG_PAIR_INDEX : 0) | (bad_y ? FLAG_PAIR_Y : 0));
            for (int i = 0; i < PINFO; ++i) out[i] = 0.0;
        }
        return;
    }
    const float* fa = f + (i64)a * D;
    const float* fb = f + (i64)b * D;
    const bool same = yv > 0;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (int i = tid; i < D; i += PAIR_THREADS) {
        const double va = fa[i], vb = fb[i];
        if (variant == V_COSINE) {
            s0 += va * vb;
            s1 += va * va;
            s2 += vb * vb;
        } else if (variant == V_L1) {
            s0 += fabs(va - vb);
        } else {
            const double d = va - vb;
            s0 += d * d;
        }
    }
    s0 = block_sum_double(s0, s_d);
    if (variant == V_COSINE) {
        s1 = block_sum_double(s1, s_d);
        s2 = block_sum_double(s2, s_d);
    }
    if (tid != 0) return;
    double v[PINFO];
    for (int i = 0; i < PINFO; ++i) v[i] = 0.0;
    if (variant == V_COSINE) {
        const double eps = 1e-8, na2 = s1 + eps, nb2 = s2 + eps;
        const double inv = 1.0 / sqrt(na2 * nb2), cs = s0 * inv;
        const double wv = params[0], bv = params[1];
        const double sg = 1.0 / (1.0 + exp(-(wv * cs + bv)));
        const double t = same ? 1.0 : 0.0;
        const double dz = (sg - t) * sg * (1.0 - sg);  // dL/d(w cos + b)
        v[0] = 0.5 * (t - sg) * (t - sg);
        v[1] = scale * dz * cs;
        v[2] = scale * dz;
        v[3] = 1.0;
        v[4] = scale * dz * wv;
        v[5] = inv;
        v[6] = cs;
        v[7] = na2;
        v[8] = nb2;
    } else {
        const double dist = variant == V_L1 ? s0 : sqrt(s0);
        const double m = params[0];
        double dd = 0.0;  // dL / d dist
        bool active = true;
        if (same) {
            v[0] = 0.5 * dist * dist;
            dd = dist;
        } else if (variant == V_L2_POS || dist >= m) {
            active = false;
        } else {
            v[0] = 0.5 * (m - dist) * (m - dist);
            dd = -(m - dist);
            v[1] = scale * (m - dist);
        }
        if (variant == V_L1) {
            v[4] = scale * dd;
        } else if (dist > 0.0) {
            v[4] = scale * dd / dist;  // d dist / d fa = diff / dist
        } else {
            active = false;  // d = 0: the direction is undefined, gradient taken as 0
        }
        v[3] = active ? 1.0 : 0.0;
    }
    for (int i = 0; i < PINFO; ++i) out[i] = v[i];
}

// One block per row of dfeatures; threads over the D columns. Writes every
// element (0 where no pair uses the row).
extern "C" __global__ void LAUNCH_BOUNDS(128)
verif_dfeatures(const float* __restrict__ f, const int* __restrict__ pa,
                const int* __restrict__ pb, const double* __restrict__ pinfo,
                float* __restrict__ df, int D, int P, int variant) {
    const int row = blockIdx.x;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < P; ++p) {
            const int a = pa[p], b = pb[p];
            if (a != row && b != row) continue;
            const double* v = pinfo + (i64)p * PINFO;
            if (v[3] == 0.0) continue;  // also every invalid pair
            const double fa = f[(i64)a * D + i], fb = f[(i64)b * D + i];
            float ga, gb;
            if (variant == V_COSINE) {
                ga = (float)(v[4] * (fb * v[5] - v[6] * fa / v[7]));
                gb = (float)(v[4] * (fa * v[5] - v[6] * fb / v[8]));
            } else {
                const double diff = fa - fb;
                const double t = variant == V_L1
                                     ? v[4] * (double)((diff > 0.0) - (diff < 0.0))
                                     : v[4] * diff;
                ga = (float)t;
                gb = -(float)t;
            }
            if (a == row) acc += ga;
            if (b == row) acc += gb;
        }
        df[(i64)row * D + i] = acc;
    }
}

// out[0] total, [1] ident, [2] verif, [3] correct, [4] flags; dparams written.
extern "C" __global__ void LAUNCH_BOUNDS(256)
joint_finalize(const double* __restrict__ row_loss, const int* __restrict__ row_correct,
               const double* __restrict__ pinfo, const int* __restrict__ flags, int N, int P,
               int n_params, float lam, float* __restrict__ dparams, double* __restrict__ out) {
    __shared__ double s_d[256];
    const int tid = threadIdx.x;
    double l = 0.0, c = 0.0, vs = 0.0;
    for (int i = tid; i < N; i += blockDim.x) {
        l += row_loss[i];
        c += (double)row_correct[i];
    }
    for (int p = tid; p < P; p += blockDim.x) vs += pinfo[(i64)p * PINFO];
    l = block_sum_double(l, s_d);
    c = block_sum_double(c, s_d);
    vs = block_sum_double(vs, s_d);
    if (tid == 0) {
        double dp0 = 0.0, dp1 = 0.0;
        for (int p = 0; p < P; ++p) {  // pair order, as the CPU backend
            dp0 += pinfo[(i64)p * PINFO + 1];
            dp1 += pinfo[(i64)p * PINFO + 2];
        }
        dparams[0] = (float)dp0;
        if (n_params > 1) dparams[1] = (float)dp1;
        const double ident = l / N, verif = P > 0 ? vs / P : 0.0;
        out[0] = ident + (double)lam * verif;
        out[1] = ident;
        out[2] = verif;
        out[3] = c;
        out[4] = (double)flags[0];
    }
}

// ---------------------------------------------------------------------------
// Regression loss: one block per row; dpred = (pred - target) / N (float, as
// the CPU backend), row[i] = sum_j (pred - target)^2 in double.
extern "C" __global__ void LAUNCH_BOUNDS(128)
regression_rows(const float* __restrict__ pred, const float* __restrict__ target,
                float* __restrict__ dpred, double* __restrict__ row, int N, int D) {
    __shared__ double s_d[128];
    const float inv_n = 1.0f / (float)N;
    const i64 base = (i64)blockIdx.x * D;
    double s = 0.0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        const float diff = pred[base + j] - target[base + j];
        dpred[base + j] = diff * inv_n;
        s += (double)diff * diff;
    }
    s = block_sum_double(s, s_d);
    if (threadIdx.x == 0) row[blockIdx.x] = s;
}

// out[0] = sum of v[0..n), one block of 256 threads, fixed order.
extern "C" __global__ void LAUNCH_BOUNDS(256)
sum_double(const double* __restrict__ v, int n, double* __restrict__ out) {
    __shared__ double s_d[256];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    s = block_sum_double(s, s_d);
    if (threadIdx.x == 0) out[0] = s;
}
