// Max-pooling (docs/ops.md, "maxpool"): S x S windows, stride S, floor.
// argmax is the index iy * W + ix of the winner in its H x W plane; ties go to
// the first maximum in row-major window order (strict ">" from the window's
// first element, as the CPU backend).
#include "common.cuh"

// One thread per output; planes = N * C.
extern "C" __global__ void LAUNCH_BOUNDS(256)
maxpool_fwd(const float* __restrict__ x, float* __restrict__ y, int* __restrict__ argmax,
            i64 planes, int H, int W, int S) {
    const int OH = H / S, OW = W / S;
    const i64 total = planes * OH * OW;
    for (i64 o = blockIdx.x * (i64)blockDim.x + threadIdx.x; o < total;
         o += (i64)gridDim.x * blockDim.x) {
        const int ox = (int)(o % OW);
        const int oy = (int)((o / OW) % OH);
        const i64 pl = o / ((i64)OW * OH);
        const float* xp = x + pl * H * W;
        int best = oy * S * W + ox * S;
        float bv = LDG(xp + best);
        for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j) {
                const int idx = (oy * S + i) * W + ox * S + j;
                const float v = LDG(xp + idx);
                if (v > bv) {
                    bv = v;
                    best = idx;
                }
            }
        y[o] = bv;
        argmax[o] = best;
    }
}

// One thread per input element (a gather: no atomics, every dx element is
// written once): dx = dy of its window where argmax points at it, else 0
// (also in the rows / columns dropped by the floor). The thread at each
// window's top-left checks that window's argmax and sets FLAG_ARGMAX in
// *flags if it points outside the window; nothing is ever written outside dx.
extern "C" __global__ void LAUNCH_BOUNDS(256)
maxpool_bwd(const float* __restrict__ dy, const int* __restrict__ argmax,
            float* __restrict__ dx, int* __restrict__ flags, i64 planes, int H, int W, int S,
            int OH, int OW) {
    const i64 total = planes * H * W;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const int ix = (int)(e % W);
        const int iy = (int)((e / W) % H);
        const i64 pl = e / ((i64)W * H);
        const int oy = iy / S, ox = ix / S;
        float v = 0.0f;
        if (oy < OH && ox < OW) {
            const i64 o = (pl * OH + oy) * OW + ox;
            const int a = LDG(argmax + o);
            if (a == iy * W + ix) v = LDG(dy + o);
            if (iy % S == 0 && ix % S == 0) {
                const int ay = a / W, ax = a % W;
                const bool ok = a >= 0 && ay / S == oy && ax / S == ox;
                if (!ok) atomicOr(flags, FLAG_ARGMAX);
            }
        }
        dx[e] = v;
    }
}
