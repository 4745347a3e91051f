// Max-pooling, s x s windows with stride s, floor on odd sizes. Planes
// (n, c) are independent, so both directions parallelise over them.
#include <algorithm>
#include <cstring>
#include <vector>

#include "check.h"
#include "deepid2/ops.h"
#include "pool.h"
#include "runs.h"

namespace deepid2 {

namespace {

std::invalid_argument bad_argmax() {
    return std::invalid_argument("maxpool: argmax holds an index outside its window");
}

// 2x2 windows, the DeepID2 case. Sixteen outputs at a time: the inputs are
// deinterleaved into even/odd columns with vector shuffles (the compiler
// will not vectorise the stride-2 loads itself), then branch-free selects.
// Window code k: 0, 1 top row, 2, 3 bottom row; ties keep the first.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
#if defined(__clang__)
#define DEINTERLEAVE(lo, hi, odd)                                                          \
    __builtin_shufflevector(lo, hi, 0 + odd, 2 + odd, 4 + odd, 6 + odd, 8 + odd, 10 + odd,   \
                            12 + odd, 14 + odd, 16 + odd, 18 + odd, 20 + odd, 22 + odd,      \
                            24 + odd, 26 + odd, 28 + odd, 30 + odd)
#define INTERLEAVE(a, b, half)                                                             \
    __builtin_shufflevector(a, b, 8 * half + 0, 8 * half + 16, 8 * half + 1, 8 * half + 17,  \
                            8 * half + 2, 8 * half + 18, 8 * half + 3, 8 * half + 19,        \
                            8 * half + 4, 8 * half + 20, 8 * half + 5, 8 * half + 21,        \
                            8 * half + 6, 8 * half + 22, 8 * half + 7, 8 * half + 23)
#else
#define DEINTERLEAVE(lo, hi, odd)                                                        \
    __builtin_shuffle(lo, hi, v16i{0 + odd, 2 + odd, 4 + odd, 6 + odd, 8 + odd, 10 + odd,  \
                                   12 + odd, 14 + odd, 16 + odd, 18 + odd, 20 + odd,       \
                                   22 + odd, 24 + odd, 26 + odd, 28 + odd, 30 + odd})
#define INTERLEAVE(a, b, half)                                                            \
    __builtin_shuffle(a, b, v16i{8 * half + 0, 8 * half + 16, 8 * half + 1, 8 * half + 17,  \
                                 8 * half + 2, 8 * half + 18, 8 * half + 3, 8 * half + 19,  \
                                 8 * half + 4, 8 * half + 20, 8 * half + 5, 8 * half + 21,  \
                                 8 * half + 6, 8 * half + 22, 8 * half + 7, 8 * half + 23})
#endif

template <typename V>
inline V load(const void* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <typename V>
inline void store(void* p, const V& v) {
    std::memcpy(p, &v, sizeof v);
}

constexpr int kBatchOutputs = 512;  // outputs per task, in whole planes
constexpr int kPool2MaxOutputs = 1 << 20;  // keeps Batch2's float divisions exact

// Outputs are taken in flattened order over a batch of whole planes,
// o = (plane * OH + oy) * OW + ox, 16 at a time, so the narrow maps of
// DeepID2 (OW = 10, 4) vectorise as well as wide ones. The top and bottom
// rows of the windows are first gathered into contiguous buffers (2 * OW
// floats per output row).
struct Batch2 {
    int h, w, oh, ow, count;  // count = OH * OW outputs per plane
    int per;                  // planes per batch
    int64_t planes;

    Batch2(int64_t planes_, int h_, int w_)
        : h(h_), w(w_), oh(h_ / 2), ow(w_ / 2), count(oh * ow),
          per(std::max(1, kBatchOutputs / count)), planes(planes_) {}
    int64_t batches() const { return (planes + per - 1) / per; }
    // Batch bi: its first plane, its number of planes, outputs, padded outputs.
    void span(int64_t bi, int64_t& p0, int& np, int& total, int& padded) const {
        p0 = bi * per;
        np = int(std::min<int64_t>(per, planes - p0));
        total = np * count;
        padded = (total + 15) / 16 * 16;
    }
    // In-plane input index of the top-left of output o's window, 16 lanes.
    // Divisions go through float: exact, as o stays far below 2^23.
    v16i base(int o0) const {
        const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        const v16i o = lane + o0;
        const v16i pi = div(o, count), rem = o - pi * count, oy = div(rem, ow);
        return 2 * oy * w + 2 * (rem - oy * ow);
    }
    static v16i div(v16i a, int b) {
        return __builtin_convertvector(
            (__builtin_convertvector(a, v16f) + 0.5f) * (1.0f / float(b)), v16i);
    }
    int base1(int o) const {
        const int rem = o % count, oy = rem / ow;
        return 2 * oy * w + 2 * (rem - oy * ow);
    }
};


float* plane_scratch(int slot, size_t n) {
    static thread_local std::vector<float> bufs[2];
    if (bufs[slot].size() < n) bufs[slot].resize(n);
    return bufs[slot].data();
}

// Batch bi of B: its planes' outputs and argmax.
void pool2_forward_batch(const Batch2& B, int64_t bi, const float* x, float* y, int32_t* argmax) {
    const int h = B.h, w = B.w;
    int64_t p0;
    int np, total, padded;
    B.span(bi, p0, np, total, padded);
    float* top = plane_scratch(0, size_t(padded) * 2);
    float* bot = plane_scratch(1, size_t(padded) * 2);
    float ybuf[16];
    int32_t abuf[16];
    for (int r = 0; r < np * B.oh; ++r) {  // output row r of the batch
        const float* xr = x + (p0 + r / B.oh) * h * w + 2 * (r % B.oh) * w;
        copy_floats(xr, 2 * B.ow, top + 2 * r * B.ow);
        copy_floats(xr + w, 2 * B.ow, bot + 2 * r * B.ow);
    }
    std::fill(top + 2 * total, top + 2 * padded, 0.0f);
    std::fill(bot + 2 * total, bot + 2 * padded, 0.0f);
    for (int o = 0; o < padded; o += 16) {
        const v16f t0 = load<v16f>(top + 2 * o), t1 = load<v16f>(top + 2 * o + 16);
        const v16f b0 = load<v16f>(bot + 2 * o), b1 = load<v16f>(bot + 2 * o + 16);
        const v16f a = DEINTERLEAVE(t0, t1, 0), b = DEINTERLEAVE(t0, t1, 1);
        const v16f c = DEINTERLEAVE(b0, b1, 0), d = DEINTERLEAVE(b0, b1, 1);
        const v16i zero{};
        v16f best = a;
        v16i off = zero;
        off = b > best ? zero + 1 : off;
        best = b > best ? b : best;
        off = c > best ? zero + w : off;
        best = c > best ? c : best;
        off = d > best ? zero + w + 1 : off;
        best = d > best ? d : best;
        const v16i idx = B.base(o) + off;
        if (o + 16 <= total) {  // straight to the outputs; only the tail goes through buffers
            store(y + p0 * B.count + o, best);
            store(argmax + p0 * B.count + o, idx);
        } else {
            store(ybuf, best);
            store(abuf, idx);
            std::copy_n(ybuf, total - o, y + p0 * B.count + o);
            std::copy_n(abuf, total - o, argmax + p0 * B.count + o);
        }
    }
}

void pool2_forward(int64_t planes, int h, int w, const float* x, float* y, int32_t* argmax) {
    const Batch2 B(planes, h, w);
#pragma omp parallel for schedule(static)
    for (int64_t bi = 0; bi < B.batches(); ++bi) pool2_forward_batch(B, bi, x, y, argmax);
}

// One plane, any window size: the first maximum of each window.
void pool_plane(int h, int w, int s, const float* xp, float* yp, int32_t* ap) {
    const int oh = h / s, ow = w / s;
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

// Writes every element of dx once (no zero pass, no scatter). Returns false
// if some argmax lies outside its window; dx is then unspecified.
bool pool2_backward(int64_t planes, int h, int w, const float* dy, const int32_t* argmax,
                    float* dx) {
    const Batch2 B(planes, h, w);
    bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok)
    for (int64_t bi = 0; bi < B.batches(); ++bi) {
        int64_t p0;
        int np, total, padded;
        B.span(bi, p0, np, total, padded);
        float* top = plane_scratch(0, size_t(padded) * 2);
        float* bot = plane_scratch(1, size_t(padded) * 2);
        const float* g = dy + p0 * B.count;
        const int32_t* am = argmax + p0 * B.count;
        float gtail[16];
        int32_t atail[16];
        for (int o = total / 16 * 16, l = 0; l < 16; ++o, ++l) {  // the last, partial vector
            gtail[l] = o < total ? g[o] : 0.0f;
            atail[l] = o < total ? am[o] : B.base1(o);  // padding lanes hit their window
        }
        v16i hits{};
        for (int o = 0; o < padded; o += 16) {
            const bool full = o + 16 <= total;
            const v16i a = load<v16i>(full ? am + o : atail) - B.base(o);
            const v16f v = load<v16f>(full ? g + o : gtail), z{};
            const v16f e0 = a == 0 ? v : z, e1 = a == 1 ? v : z;
            const v16f e2 = a == w ? v : z, e3 = a == w + 1 ? v : z;
            store(top + 2 * o, INTERLEAVE(e0, e1, 0));
            store(top + 2 * o + 16, INTERLEAVE(e0, e1, 1));
            store(bot + 2 * o, INTERLEAVE(e2, e3, 0));
            store(bot + 2 * o + 16, INTERLEAVE(e2, e3, 1));
            hits += (a == 0) | (a == 1) | (a == w) | (a == w + 1);  // -1 per hit
        }
        int count = 0;
        for (int l = 0; l < 16; ++l) count -= hits[l];
        ok = ok && count == padded;
        for (int p = 0; p < np; ++p) {
            float* dxp = dx + (p0 + p) * h * w;
            for (int oy = 0; oy < B.oh; ++oy) {
                const int r = p * B.oh + oy;
                float* d0 = dxp + 2 * oy * w;
                copy_floats(top + 2 * r * B.ow, 2 * B.ow, d0);
                copy_floats(bot + 2 * r * B.ow, 2 * B.ow, d0 + w);
                if (w & 1) d0[w - 1] = d0[2 * w - 1] = 0.0f;
            }
            if (h & 1) std::fill(dxp + (h - 1) * w, dxp + h * w, 0.0f);
        }
    }
    return ok;
}

}  // namespace

namespace detail {

void maxpool_planes(int64_t planes, int h, int w, int s, const float* x, float* y,
                    int32_t* argmax) {
    const int oh = h / s, ow = w / s;
    if (s == 2 && oh * ow <= kPool2MaxOutputs) {
        const Batch2 B(planes, h, w);
        for (int64_t bi = 0; bi < B.batches(); ++bi) pool2_forward_batch(B, bi, x, y, argmax);
        return;
    }
    for (int64_t pl = 0; pl < planes; ++pl)
        pool_plane(h, w, s, x + pl * h * w, y + pl * oh * ow, argmax + pl * oh * ow);
}

}  // namespace detail

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
    if (s == 2 && oh * ow <= kPool2MaxOutputs) {
        pool2_forward(planes, h, w, x, y, argmax);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl)
        pool_plane(h, w, s, x + pl * h * w, y + pl * oh * ow, argmax + pl * oh * ow);
}

void maxpool_backward(int n, int c, int h, int w, int s, const float* dy,
                      const int32_t* argmax, float* dx) {
    check_pool(n, c, h, w, s);
    detail::require_pointer("maxpool", dy, "dy");
    detail::require_pointer("maxpool", argmax, "argmax");
    detail::require_pointer("maxpool", dx, "dx");
    const int oh = h / s, ow = w / s;
    const int64_t planes = int64_t(n) * c;
    if (s == 2 && oh * ow <= kPool2MaxOutputs) {
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
