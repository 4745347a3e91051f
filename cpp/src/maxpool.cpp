// Max-pooling, s x s windows with stride s, floor on odd sizes. Planes
// (n, c) are independent, so both directions parallelise over them.
#include <algorithm>

#include "check.h"
#include "deepid2/ops.h"

namespace deepid2 {

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
    if (bad) throw std::invalid_argument("maxpool: argmax holds an index outside its window");
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
