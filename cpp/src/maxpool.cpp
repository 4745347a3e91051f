// Max-pooling, s x s windows with stride s, floor on odd sizes. Planes
// (n, c) are independent, so both directions parallelise over them.
#include <algorithm>

#include "check.h"
#include "deepid2/ops.h"

namespace deepid2 {

namespace {

std::invalid_argument bad_argmax() {
    return std::invalid_argument("maxpool: argmax holds an index outside its window");
}

// 2x2 windows, the DeepID2 case: branch-free selects over the four inputs,
// which the compiler vectorises; ties keep the first in row-major order.
void pool2_forward(int64_t planes, int h, int w, const float* x, float* y, int32_t* argmax) {
    const int oh = h / 2, ow = w / 2;
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl)
        for (int oy = 0; oy < oh; ++oy) {
            const float* __restrict r0 = x + (pl * h + 2 * oy) * w;
            const float* __restrict r1 = r0 + w;
            float* __restrict yr = y + (pl * oh + oy) * ow;
            int32_t* __restrict ar = argmax + (pl * oh + oy) * ow;
            const int base = 2 * oy * w;
            for (int ox = 0; ox < ow; ++ox) {
                const float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
                float best = a;
                int idx = base + 2 * ox;
                idx = b > best ? base + 2 * ox + 1 : idx;
                best = b > best ? b : best;
                idx = c > best ? base + w + 2 * ox : idx;
                best = c > best ? c : best;
                idx = d > best ? base + w + 2 * ox + 1 : idx;
                best = d > best ? d : best;
                yr[ox] = best;
                ar[ox] = idx;
            }
        }
}

// Writes every element of dx once (no zero pass, no scatter). Returns false
// if some argmax lies outside its window; dx is then unspecified.
bool pool2_backward(int64_t planes, int h, int w, const float* dy, const int32_t* argmax,
                    float* dx) {
    const int oh = h / 2, ow = w / 2;
    bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok)
    for (int64_t pl = 0; pl < planes; ++pl) {
        float* dxp = dx + pl * h * w;
        for (int oy = 0; oy < oh; ++oy) {
            const float* __restrict g = dy + (pl * oh + oy) * ow;
            const int32_t* __restrict ar = argmax + (pl * oh + oy) * ow;
            float* __restrict d0 = dxp + 2 * oy * w;
            float* __restrict d1 = d0 + w;
            const int base = 2 * oy * w;
            int hits = 0;
            for (int ox = 0; ox < ow; ++ox) {
                const int a = ar[ox] - base - 2 * ox;  // 0, 1, w, w + 1 inside the window
                const float v = g[ox];
                d0[2 * ox] = a == 0 ? v : 0.0f;
                d0[2 * ox + 1] = a == 1 ? v : 0.0f;
                d1[2 * ox] = a == w ? v : 0.0f;
                d1[2 * ox + 1] = a == w + 1 ? v : 0.0f;
                hits += (a == 0) | (a == 1) | (a == w) | (a == w + 1);
            }
            ok = ok && hits == ow;
            if (w & 1) d0[w - 1] = d1[w - 1] = 0.0f;
        }
        if (h & 1) std::fill(dxp + (h - 1) * w, dxp + h * w, 0.0f);
    }
    return ok;
}

}  // namespace

static void check_pool(int n, int c, int h, int w, int s) {
    detail::require_positive("maxpool", {{"n", n}, {"c", c}, {"h", h}, {"w", w}, {"s", s}});
    if (s > h || s > w)
        throw std::invalid_argument("maxpool: window " + std::to_string(s) +
                                    " is larger than the input " + std::to_string(h) + "x" +
                                    std::to_string(w));
}

void maxpool_forward(int n, int c, int h, int w, int s, const float* x, float* y,
                     int32_t* argmax) {
    check_pool(n, c, h, w, s);
    detail::require_pointer("maxpool", x, "x");
    detail::require_pointer("maxpool", y, "y");
    detail::require_pointer("maxpool", argmax, "argmax");
    const int oh = h / s, ow = w / s;
    const int64_t planes = int64_t(n) * c;
    if (s == 2) {
        pool2_forward(planes, h, w, x, y, argmax);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
        const float* xp = x + pl * h * w;
        float* yp = y + pl * oh * ow;
        int32_t* ap = argmax + pl * oh * ow;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                int best = oy * s * w + ox * s;
                float bv = xp[best];
                for (int i = 0; i < s; ++i)
                    for (int j = 0; j < s; ++j) {
                        const int idx = (oy * s + i) * w + ox * s + j;
                        if (xp[idx] > bv) {
                            bv = xp[idx];
                            best = idx;
                        }
                    }
                yp[oy * ow + ox] = bv;
                ap[oy * ow + ox] = best;
            }
    }
}

void maxpool_backward(int n, int c, int h, int w, int s, const float* dy,
                      const int32_t* argmax, float* dx) {
    check_pool(n, c, h, w, s);
    detail::require_pointer("maxpool", dy, "dy");
    detail::require_pointer("maxpool", argmax, "argmax");
    detail::require_pointer("maxpool", dx, "dx");
    const int oh = h / s, ow = w / s;
    const int64_t planes = int64_t(n) * c;
    if (s == 2) {
        if (!pool2_backward(planes, h, w, dy, argmax, dx)) throw bad_argmax();
        return;
    }
    // Validate every index before writing anything: a corrupt argmax must not
    // become an out-of-bounds write.
    bool bad = false;
#pragma omp parallel for schedule(static) reduction(|| : bad)
    for (int64_t pl = 0; pl < planes; ++pl) {
        const int32_t* ap = argmax + pl * oh * ow;
        for (int o = 0; o < oh * ow; ++o) {
            const int a = ap[o], oy = o / ow, ox = o % ow, iy = a / w, ix = a % w;
            bad = bad || a < 0 || iy / s != oy || ix / s != ox || iy >= oh * s || ix >= ow * s;
        }
    }
    if (bad) throw bad_argmax();
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
        const float* dyp = dy + pl * oh * ow;
        const int32_t* ap = argmax + pl * oh * ow;
        float* dxp = dx + pl * h * w;
        std::fill(dxp, dxp + h * w, 0.0f);
        for (int o = 0; o < oh * ow; ++o) dxp[ap[o]] = dyp[o];
    }
}

}  // namespace deepid2
