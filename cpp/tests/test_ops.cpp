// C++ checks of the ops against plain double-precision loops, plus the error
// paths. Python's tests/ hold the full oracle suite; this one proves the
// library works without Python.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "deepid2/ops.h"

using namespace deepid2;

static int failures = 0;

static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::printf("FAIL %s\n", what.c_str());
        ++failures;
    }
}

static void expect_close(const std::vector<float>& got, const std::vector<double>& ref,
                         double rtol, double atol, const std::string& what) {
    double worst = 0;
    bool ok = got.size() == ref.size();
    for (size_t i = 0; ok && i < got.size(); ++i) {
        const double err = std::fabs(got[i] - ref[i]);
        worst = std::max(worst, err);
        if (!(err <= atol + rtol * std::fabs(ref[i]))) ok = false;
    }
    if (!ok) std::printf("  worst abs error %.3e\n", worst);
    expect(ok, what);
}

static void expect_throws(const std::function<void()>& f, const std::string& what) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return;
    }
    expect(false, what + " should throw std::invalid_argument");
}

static std::vector<float> randn(size_t n, std::mt19937& g) {
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

static void test_lsconv(const LsconvShape& s, bool relu, std::mt19937& g) {
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx(), OH = s.oh(), OW = s.ow();
    auto x = randn(size_t(s.n) * s.c * s.h * s.w, g);
    auto w = randn(size_t(R) * s.k * q, g);
    auto b = randn(size_t(R) * s.k, g);
    auto dy = randn(size_t(s.n) * s.k * OH * OW, g);
    std::vector<double> yref(dy.size()), dxref(x.size()), dwref(w.size()), dbref(b.size());
    auto X = [&](int n, int c, int i, int j) { return x[((size_t(n) * s.c + c) * s.h + i) * s.w + j]; };
    for (int n = 0; n < s.n; ++n)
        for (int k = 0; k < s.k; ++k)
            for (int oy = 0; oy < OH; ++oy)
                for (int ox = 0; ox < OW; ++ox) {
                    const int r = (oy / s.rh) * s.rx() + ox / s.rw;
                    double z = b[r * s.k + k];
                    for (int c = 0; c < s.c; ++c)
                        for (int i = 0; i < s.kh; ++i)
                            for (int j = 0; j < s.kw; ++j)
                                z += double(w[((size_t(r) * s.k + k) * s.c + c) * s.kh * s.kw + i * s.kw + j]) *
                                     X(n, c, oy + i, ox + j);
                    const size_t yi = ((size_t(n) * s.k + k) * OH + oy) * OW + ox;
                    yref[yi] = relu ? std::max(z, 0.0) : z;
                    const double gz = (relu && z <= 0) ? 0.0 : dy[yi];
                    dbref[r * s.k + k] += gz;
                    for (int c = 0; c < s.c; ++c)
                        for (int i = 0; i < s.kh; ++i)
                            for (int j = 0; j < s.kw; ++j) {
                                const size_t wi = ((size_t(r) * s.k + k) * s.c + c) * s.kh * s.kw + i * s.kw + j;
                                dwref[wi] += gz * X(n, c, oy + i, ox + j);
                                dxref[((size_t(n) * s.c + c) * s.h + oy + i) * s.w + ox + j] += gz * w[wi];
                            }
                }
    std::vector<float> y(yref.size(), NAN), dx(x.size(), NAN), dw(w.size(), 0.f), db(b.size(), 0.f);
    lsconv_forward(s, x.data(), w.data(), b.data(), relu, y.data());
    lsconv_backward(s, x.data(), w.data(), y.data(), dy.data(), relu, dx.data(), dw.data(), db.data());
    const std::string tag = "lsconv n" + std::to_string(s.n) + " c" + std::to_string(s.c) + " " +
                            std::to_string(s.h) + "x" + std::to_string(s.w) + " k" + std::to_string(s.k) +
                            " region " + std::to_string(s.rh) + "x" + std::to_string(s.rw);
    expect_close(y, yref, 1e-4, 1e-4, tag + " y");
    expect_close(dx, dxref, 1e-4, 1e-4, tag + " dx");
    expect_close(dw, dwref, 1e-4, 1e-3, tag + " dw");
    expect_close(db, dbref, 1e-4, 1e-3, tag + " db");
}

// lsconv_pool_* against lsconv_* and maxpool_* (checked above): the forward
// bit for bit, the backward to rounding; and a corrupt argmax.
static void test_lsconv_pool(const LsconvShape& s, int ps, bool relu, std::mt19937& g) {
    const int q = s.c * s.kh * s.kw, R = s.ry() * s.rx(), OH = s.oh(), OW = s.ow();
    const size_t pooled = size_t(s.n) * s.k * (OH / ps) * (OW / ps);
    auto x = randn(size_t(s.n) * s.c * s.h * s.w, g);
    auto w = randn(size_t(R) * s.k * q, g);
    auto b = randn(size_t(R) * s.k, g);
    auto dyp = randn(pooled, g);
    std::vector<float> y(size_t(s.n) * s.k * OH * OW), yp(pooled), yp2(pooled), dy(y.size()),
        dx(x.size()), dw(w.size(), 0.f), db(b.size(), 0.f), dx2(x.size()), dw2(w.size(), 0.f),
        db2(b.size(), 0.f);
    std::vector<int32_t> am(pooled), am2(pooled);
    lsconv_forward(s, x.data(), w.data(), b.data(), relu, y.data());
    maxpool_forward(s.n, s.k, OH, OW, ps, y.data(), yp.data(), am.data());
    maxpool_backward(s.n, s.k, OH, OW, ps, dyp.data(), am.data(), dy.data());
    lsconv_backward(s, x.data(), w.data(), y.data(), dy.data(), relu, dx.data(), dw.data(),
                    db.data());
    lsconv_pool_forward(s, x.data(), w.data(), b.data(), relu, ps, yp2.data(), am2.data());
    lsconv_pool_backward(s, x.data(), w.data(), yp2.data(), am2.data(), dyp.data(), relu, ps,
                         dx2.data(), dw2.data(), db2.data());
    const std::string tag = "lsconv_pool n" + std::to_string(s.n) + " region " +
                            std::to_string(s.rh) + "x" + std::to_string(s.rw) + " s" +
                            std::to_string(ps);
    expect(yp == yp2 && am == am2, tag + " forward = lsconv + maxpool");
    auto f64 = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    expect_close(dx2, f64(dx), 1e-4, 1e-4, tag + " dx");
    expect_close(dw2, f64(dw), 1e-4, 1e-3, tag + " dw");
    expect_close(db2, f64(db), 1e-4, 1e-3, tag + " db");
    am2.back() += ps * OW;  // the window below: out of the map, or another window
    std::fill(dw2.begin(), dw2.end(), 0.f);
    expect_throws([&] {
        lsconv_pool_backward(s, x.data(), w.data(), yp2.data(), am2.data(), dyp.data(), relu, ps,
                             dx2.data(), dw2.data(), db2.data());
    }, tag + " with a corrupt argmax");
    expect(std::all_of(dw2.begin(), dw2.end(), [](float v) { return v == 0.f; }),
           tag + " corrupt argmax leaves dw untouched");
}

static void test_maxpool(std::mt19937& g) {
    const int n = 2, c = 3, h = 7, w = 9, s = 2, oh = h / s, ow = w / s;
    auto x = randn(size_t(n) * c * h * w, g);
    auto dy = randn(size_t(n) * c * oh * ow, g);
    std::vector<float> y(dy.size(), NAN), dx(x.size(), NAN);
    std::vector<int32_t> am(dy.size(), -7);
    maxpool_forward(n, c, h, w, s, x.data(), y.data(), am.data());
    maxpool_backward(n, c, h, w, s, dy.data(), am.data(), dx.data());
    std::vector<double> yref(y.size()), dxref(x.size(), 0.0);
    for (int p = 0; p < n * c; ++p)
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                int best = -1;
                for (int i = 0; i < s; ++i)
                    for (int j = 0; j < s; ++j) {
                        const int idx = (oy * s + i) * w + ox * s + j;
                        if (best < 0 || x[size_t(p) * h * w + idx] > x[size_t(p) * h * w + best]) best = idx;
                    }
                yref[(size_t(p) * oh + oy) * ow + ox] = x[size_t(p) * h * w + best];
                dxref[size_t(p) * h * w + best] = dy[(size_t(p) * oh + oy) * ow + ox];
            }
    expect_close(y, yref, 0, 0, "maxpool y");
    expect_close(dx, dxref, 0, 0, "maxpool dx");
    am[3] = h * w + 5;
    expect_throws([&] { maxpool_backward(n, c, h, w, s, dy.data(), am.data(), dx.data()); },
                  "maxpool_backward with a corrupt argmax");
}

static void test_dense(std::mt19937& g) {
    const int n = 5, m = 37, d0 = 13, d1 = 70;
    auto x0 = randn(size_t(n) * d0, g), x1 = randn(size_t(n) * d1, g);
    auto w = randn(size_t(d0 + d1) * m, g), b = randn(m, g), dy = randn(size_t(n) * m, g);
    const int dims[2] = {d0, d1};
    const float* xs[2] = {x0.data(), x1.data()};
    std::vector<float> y(size_t(n) * m, NAN), dx0(x0.size(), NAN), dx1(x1.size(), NAN);
    std::vector<float> dw(w.size(), 0.f), db(m, 0.f);
    float* dxs[2] = {dx0.data(), dx1.data()};
    dense_forward(n, 2, dims, xs, m, w.data(), b.data(), true, y.data());
    dense_backward(n, 2, dims, xs, m, w.data(), y.data(), dy.data(), true, dxs, dw.data(), db.data());
    std::vector<double> yref(y.size()), dx0r(x0.size()), dx1r(x1.size()), dwr(w.size()), dbr(m);
    auto xin = [&](int r, int i) { return i < d0 ? x0[r * d0 + i] : x1[r * d1 + i - d0]; };
    for (int r = 0; r < n; ++r)
        for (int j = 0; j < m; ++j) {
            double z = b[j];
            for (int i = 0; i < d0 + d1; ++i) z += double(xin(r, i)) * w[size_t(i) * m + j];
            yref[r * m + j] = std::max(z, 0.0);
            const double gz = z > 0 ? dy[r * m + j] : 0.0;
            dbr[j] += gz;
            for (int i = 0; i < d0 + d1; ++i) {
                dwr[size_t(i) * m + j] += gz * xin(r, i);
                (i < d0 ? dx0r[r * d0 + i] : dx1r[r * d1 + i - d0]) += gz * w[size_t(i) * m + j];
            }
        }
    expect_close(y, yref, 1e-4, 1e-4, "dense y");
    expect_close(dx0, dx0r, 1e-4, 1e-4, "dense dx0");
    expect_close(dx1, dx1r, 1e-4, 1e-4, "dense dx1");
    expect_close(dw, dwr, 1e-4, 1e-4, "dense dw");
    expect_close(db, dbr, 1e-4, 1e-4, "dense db");
}

static void test_joint_loss(std::mt19937& g) {
    const int n = 4, nc = 6, d = 5;
    auto logits = randn(size_t(n) * nc, g), f = randn(size_t(n) * d, g);
    std::vector<int32_t> labels = {0, 5, 2, 2}, pa = {0, 1}, pb = {2, 3}, py = {-1, 1};
    const float m = 100.0f;  // large margin: the different pair is inside it
    std::vector<float> dl(logits.size()), df(f.size()), dp(1);
    auto r = joint_loss(n, nc, logits.data(), labels.data(), d, f.data(), 2, pa.data(), pb.data(),
                        py.data(), Verif::L2, 0.5f, &m, dl.data(), df.data(), dp.data());
    double ident = 0;
    for (int i = 0; i < n; ++i) {
        double se = 0;
        for (int j = 0; j < nc; ++j) se += std::exp(double(logits[i * nc + j]));
        ident += std::log(se) - logits[i * nc + labels[i]];
    }
    double d02 = 0, d13 = 0;
    for (int i = 0; i < d; ++i) {
        d02 += std::pow(double(f[i]) - f[2 * d + i], 2);
        d13 += std::pow(double(f[d + i]) - f[3 * d + i], 2);
    }
    const double verif = (0.5 * std::pow(m - std::sqrt(d02), 2) + 0.5 * d13) / 2;
    expect(std::fabs(r.ident - ident / n) < 1e-5, "joint_loss ident");
    expect(std::fabs(r.verif - verif) < 1e-3 * verif, "joint_loss verif");
    expect(std::fabs(dp[0] - 0.5 * (m - std::sqrt(d02)) / 2) < 1e-3, "joint_loss dm");
    labels[1] = nc;
    expect_throws([&] {
        joint_loss(n, nc, logits.data(), labels.data(), d, f.data(), 2, pa.data(), pb.data(),
                   py.data(), Verif::L2, 0.5f, &m, dl.data(), df.data(), dp.data());
    }, "joint_loss with a label out of range");
}

int main() {
    std::mt19937 g(1234);
    test_lsconv({2, 3, 9, 8, 4, 3, 2, 7, 7}, true, g);    // ordinary conv
    test_lsconv({3, 2, 7, 6, 5, 2, 2, 1, 1}, true, g);    // locally connected
    test_lsconv({1, 1, 12, 10, 3, 3, 3, 4, 3}, false, g); // regions that do not divide
    test_lsconv({17, 4, 6, 5, 6, 2, 2, 2, 2}, true, g);   // several image blocks
    test_lsconv_pool({2, 3, 9, 8, 4, 3, 2, 7, 7}, 2, true, g);    // 7x7 output: floor
    test_lsconv_pool({3, 2, 11, 9, 5, 2, 2, 3, 4}, 3, false, g);  // windows across regions
    test_lsconv_pool({17, 4, 6, 5, 6, 2, 2, 1, 1}, 2, true, g);   // locally connected
    test_maxpool(g);
    test_dense(g);
    test_joint_loss(g);
    std::vector<float> p = {1, 2}, gr = {0.5f, -1}, v = {0.1f, 0};
    sgd_update(2, p.data(), gr.data(), v.data(), 0.1f, 0.9f, 0.01f);
    expect(std::fabs(p[0] - (1 + 0.09f - 0.1f * (0.5f + 0.01f))) < 1e-6, "sgd_update");
    LsconvShape bad{1, 1, 3, 3, 1, 4, 4, 1, 1};
    float buf[16] = {};
    expect_throws([&] { lsconv_forward(bad, buf, buf, buf, true, buf); }, "lsconv kernel > input");
    LsconvShape nul{1, 1, 3, 3, 1, 2, 2, 1, 1};
    expect_throws([&] { lsconv_forward(nul, nullptr, buf, buf, true, buf); }, "lsconv null x");
    expect_throws([&] { maxpool_forward(1, 1, 1, 1, 2, buf, buf, nullptr); }, "maxpool window > input");
    std::printf("%s (%d failures, %d threads)\n", failures ? "FAILED" : "ok", failures, max_threads());
    return failures ? 1 : 0;
}
