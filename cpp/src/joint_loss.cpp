// Joint identification-verification loss (DeepID2, Algorithm 1).
// Softmax rows are independent and run in parallel; per-row losses are then
// summed in row order, so the result does not depend on the thread count.
// Pairs are few (about N/2 of D = 160), so the verification term runs
// serially in pair order, which also keeps the scatter into dfeatures exact
// when a row appears in several pairs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "deepid2/ops.h"

namespace deepid2 {

int verif_n_params(Verif v) { return v == Verif::COSINE ? 2 : 1; }

namespace {

// exp(x) for x <= 0, 16 at a time (Cephes expf: 2^n times a polynomial on
// |r| <= ln2/2). Written with vector extensions so it vectorises, and the
// same on every platform rather than whatever libm provides. Relative error
// about 2e-7; exp(x) = 0 below -87.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16f exp16_nonpositive(v16f x) {
    const v16f lo = v16f{} - 87.0f;
    const v16f xc = x < lo ? lo : x;
    const v16f t = xc * 1.44269504088896341f + 0.5f;
    v16f n = __builtin_convertvector(__builtin_convertvector(t, v16i), v16f);
    n = n > t ? n - 1.0f : n;  // floor, as truncation rounds negatives up
    const v16f r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    v16f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    const v16f e = p * (v16f)bits;
    return x < lo ? v16f{} : e;
}

// g[j] = exp(z[j] - mx) for j < count; returns their sum (16 lanes, fixed order).
double exp_shifted(const float* z, float mx, int count, float* g) {
    v16f sum{};
    int j = 0;
    for (; j + 16 <= count; j += 16) {
        v16f v;
        std::memcpy(&v, z + j, sizeof v);
        const v16f e = exp16_nonpositive(v - mx);
        std::memcpy(g + j, &e, sizeof e);
        sum += e;
    }
    if (j < count) {  // tail: pad with -inf-like values that give exp = 0
        float buf[16];
        for (int l = 0; l < 16; ++l) buf[l] = j + l < count ? z[j + l] - mx : -1e30f;
        v16f v;
        std::memcpy(&v, buf, sizeof v);
        const v16f e = exp16_nonpositive(v);
        std::memcpy(buf, &e, sizeof e);
        std::copy(buf, buf + (count - j), g + j);
        sum += e;
    }
    double total = 0.0;
    for (int l = 0; l < 16; ++l) total += sum[l];
    return total;
}

// Returns the verification loss summed over pairs; adds lam/P-scaled
// gradients into dfeatures and dparams.
double verification(int d, const float* f, int n_pairs, const int32_t* pa, const int32_t* pb,
                    const int32_t* py, Verif v, const float* params, double scale,
                    float* df, double* dparams) {
    double sum = 0.0;
    std::vector<double> diff(d);
    for (int p = 0; p < n_pairs; ++p) {
        const float* fa = f + int64_t(pa[p]) * d;
        const float* fb = f + int64_t(pb[p]) * d;
        float* ga = df + int64_t(pa[p]) * d;
        float* gb = df + int64_t(pb[p]) * d;
        const bool same = py[p] > 0;
        if (v == Verif::COSINE) {
            double ab = 0, aa = 0, bb = 0;
            for (int i = 0; i < d; ++i) {
                ab += double(fa[i]) * fb[i];
                aa += double(fa[i]) * fa[i];
                bb += double(fb[i]) * fb[i];
            }
            const double eps = 1e-8, na2 = aa + eps, nb2 = bb + eps;
            const double inv = 1.0 / std::sqrt(na2 * nb2), cs = ab * inv;
            const double wv = params[0], bv = params[1];
            const double s = 1.0 / (1.0 + std::exp(-(wv * cs + bv)));
            const double t = same ? 1.0 : 0.0;
            sum += 0.5 * (t - s) * (t - s);
            const double dz = (s - t) * s * (1.0 - s);  // dL/d(w cos + b)
            dparams[0] += scale * dz * cs;
            dparams[1] += scale * dz;
            const double dc = scale * dz * wv;  // dL/dcos
            for (int i = 0; i < d; ++i) {
                ga[i] += float(dc * (fb[i] * inv - cs * fa[i] / na2));
                gb[i] += float(dc * (fa[i] * inv - cs * fb[i] / nb2));
            }
            continue;
        }
        double dist = 0.0;
        for (int i = 0; i < d; ++i) {
            diff[i] = double(fa[i]) - fb[i];
            dist += v == Verif::L1 ? std::fabs(diff[i]) : diff[i] * diff[i];
        }
        if (v != Verif::L1) dist = std::sqrt(dist);
        const double m = params[0];
        double dd;  // dL/d dist
        if (same) {
            sum += 0.5 * dist * dist;
            dd = dist;
        } else if (v == Verif::L2_POS || dist >= m) {
            continue;
        } else {
            sum += 0.5 * (m - dist) * (m - dist);
            dd = -(m - dist);
            dparams[0] += scale * (m - dist);
        }
        if (v == Verif::L1) {
            for (int i = 0; i < d; ++i) {
                const double sg = (diff[i] > 0) - (diff[i] < 0);
                ga[i] += float(scale * dd * sg);
                gb[i] -= float(scale * dd * sg);
            }
        } else if (dist > 0.0) {
            // d dist / d fa = diff / dist; for "same" dd = dist, so this is diff.
            const double k = scale * dd / dist;
            for (int i = 0; i < d; ++i) {
                ga[i] += float(k * diff[i]);
                gb[i] -= float(k * diff[i]);
            }
        }
    }
    return sum;
}

}  // namespace

JointLossResult joint_loss(int n, int n_classes, const float* logits, const int32_t* labels,
                           int d, const float* features, int n_pairs, const int32_t* pair_a,
                           const int32_t* pair_b, const int32_t* pair_y, Verif variant,
                           float lambda, const float* params, float* dlogits, float* dfeatures,
                           float* dparams) {
    detail::require_positive("joint_loss", {{"n", n}, {"n_classes", n_classes}, {"d", d}});
    if (n_pairs < 0) throw std::invalid_argument("joint_loss: n_pairs must be >= 0");
    if (int(variant) < 0 || int(variant) > 3)
        throw std::invalid_argument("joint_loss: unknown verification variant");
    for (auto [p, name] : {std::pair<const void*, const char*>{logits, "logits"},
                           {labels, "labels"}, {features, "features"}, {params, "params"},
                           {dlogits, "dlogits"}, {dfeatures, "dfeatures"}, {dparams, "dparams"}})
        detail::require_pointer("joint_loss", p, name);
    if (n_pairs > 0)
        for (auto [p, name] : {std::pair<const void*, const char*>{pair_a, "pair_a"},
                               {pair_b, "pair_b"}, {pair_y, "pair_y"}})
            detail::require_pointer("joint_loss", p, name);
    for (int i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= n_classes)
            throw std::invalid_argument("joint_loss: labels[" + std::to_string(i) + "] = " +
                                        std::to_string(labels[i]) + " is outside [0, " +
                                        std::to_string(n_classes) + ")");
    for (int p = 0; p < n_pairs; ++p) {
        if (pair_a[p] < 0 || pair_a[p] >= n || pair_b[p] < 0 || pair_b[p] >= n)
            throw std::invalid_argument("joint_loss: pair_a/pair_b[" + std::to_string(p) +
                                        "] is outside [0, " + std::to_string(n) + ")");
        if (pair_y[p] != 1 && pair_y[p] != -1)
            throw std::invalid_argument("joint_loss: pair_y[" + std::to_string(p) +
                                        "] must be +1 or -1");
    }

    std::vector<double> row_loss(n);
    std::vector<int> row_correct(n);
    const float inv_n = 1.0f / float(n);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) {
        const float* z = logits + int64_t(i) * n_classes;
        float* g = dlogits + int64_t(i) * n_classes;
        float lanes[16];
        std::fill(lanes, lanes + 16, z[0]);
        int j = 0;
        for (; j + 16 <= n_classes; j += 16)
            for (int l = 0; l < 16; ++l) lanes[l] = std::max(lanes[l], z[j + l]);
        float mx = *std::max_element(lanes, lanes + 16);
        for (; j < n_classes; ++j) mx = std::max(mx, z[j]);
        const int arg = int(std::find(z, z + n_classes, mx) - z);  // first maximum
        const double se = exp_shifted(z, mx, n_classes, g);
        const float inv = float(1.0 / se) * inv_n;
        for (j = 0; j < n_classes; ++j) g[j] *= inv;
        g[labels[i]] -= inv_n;
        row_loss[i] = std::log(se) - (double(z[labels[i]]) - mx);
        row_correct[i] = arg == labels[i];
    }
    JointLossResult res{};
    for (int i = 0; i < n; ++i) {
        res.ident += row_loss[i];
        res.correct += row_correct[i];
    }
    res.ident /= n;

    std::fill(dfeatures, dfeatures + int64_t(n) * d, 0.0f);
    double dp[2] = {0.0, 0.0};
    const double scale = n_pairs > 0 ? double(lambda) / n_pairs : 0.0;
    const double vsum = n_pairs > 0 ? verification(d, features, n_pairs, pair_a, pair_b, pair_y,
                                                   variant, params, scale, dfeatures, dp)
                                    : 0.0;
    res.verif = n_pairs > 0 ? vsum / n_pairs : 0.0;
    for (int i = 0; i < verif_n_params(variant); ++i) dparams[i] = float(dp[i]);
    res.total = res.ident + double(lambda) * res.verif;
    return res;
}

}  // namespace deepid2
