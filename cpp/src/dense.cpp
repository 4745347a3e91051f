// Dense layer over a concatenation of inputs, y = act([x_0, x_1, ...] W + b).
// The concatenation is never materialised: input i meets its own row block
// W_i of W, and the partial products are accumulated in input order.
#include <algorithm>
#include <vector>

#include "check.h"
#include "deepid2/ops.h"
#include "gemm.h"

namespace deepid2 {

namespace {

// C [m x n] = A [m x k] * B [k x n] for a long reduction and a small result
// (dx of the ident layer: k = the classes): sgemm_parallel would split C and
// pack the operands once per tile. Blocks of kBlock along k instead, each one
// GEMM into its own partial C, added in block order; the block size depends
// on the shapes only, so the result does not depend on the thread count.
constexpr int kBlock = 1024;

void sgemm_ksplit(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs,
                  const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t c_rs) {
    const int blocks = (k + kBlock - 1) / kBlock;
    if (blocks < 2 || int64_t(m) * n > int64_t(k) * 64) {
        sgemm_parallel(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, false, c, c_rs);
        return;
    }
    std::vector<float> part(size_t(blocks) * m * n);
#pragma omp parallel for schedule(dynamic)
    for (int bi = 0; bi < blocks; ++bi) {
        const int k0 = bi * kBlock;
        sgemm(m, n, std::min(kBlock, k - k0), a + k0 * a_cs, a_rs, a_cs, b + k0 * b_rs, b_rs,
              b_cs, false, part.data() + size_t(bi) * m * n, n);
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
            float sum = part[size_t(i) * n + j];
            for (int bi = 1; bi < blocks; ++bi) sum += part[(size_t(bi) * m + i) * n + j];
            c[i * c_rs + j] = sum;
        }
}

}  // namespace

static void check_dense(int n, int n_inputs, const int* dims, const float* const* xs, int m,
                        const float* w) {
    detail::require_positive("dense", {{"n", n}, {"n_inputs", n_inputs}, {"m", m}});
    detail::require_pointer("dense", dims, "dims");
    detail::require_pointer("dense", xs, "xs");
    detail::require_pointer("dense", w, "w");
    for (int i = 0; i < n_inputs; ++i) {
        detail::require_positive("dense", {{"dims[i]", dims[i]}});
        detail::require_pointer("dense", xs[i], "xs[i]");
    }
}

void dense_forward(int n, int n_inputs, const int* dims, const float* const* xs, int m,
                   const float* w, const float* b, bool relu, float* y) {
    check_dense(n, n_inputs, dims, xs, m, w);
    detail::require_pointer("dense", b, "b");
    detail::require_pointer("dense", y, "y");
    int64_t row0 = 0;
    for (int i = 0; i < n_inputs; ++i) {
        sgemm_parallel(n, m, dims[i], xs[i], dims[i], 1, w + row0 * m, m, 1, i > 0, y, m);
        row0 += dims[i];
    }
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n; ++r) {
        float* yr = y + int64_t(r) * m;
        for (int j = 0; j < m; ++j) {
            const float v = yr[j] + b[j];
            yr[j] = relu ? std::max(v, 0.0f) : v;
        }
    }
}

void dense_backward(int n, int n_inputs, const int* dims, const float* const* xs, int m,
                    const float* w, const float* y, const float* dy, bool relu,
                    float* const* dxs, float* dw, float* db) {
    check_dense(n, n_inputs, dims, xs, m, w);
    detail::require_pointer("dense", dy, "dy");
    detail::require_pointer("dense", dw, "dw");
    detail::require_pointer("dense", db, "db");
    if (relu) detail::require_pointer("dense", y, "y");
    // The ReLU-masked gradient, once, so the three products below share it.
    std::vector<float> masked;
    const float* g = dy;
    if (relu) {
        masked.resize(size_t(n) * m);
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < int64_t(n) * m; ++e) masked[e] = y[e] > 0.0f ? dy[e] : 0.0f;
        g = masked.data();
    }
    // Column sums by blocks of columns, rows in order: contiguous reads.
    constexpr int B = 64;
#pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < m; j0 += B) {
        const int w = std::min(B, m - j0);
        float sum[B] = {};
        for (int r = 0; r < n; ++r) {
            const float* gr = g + int64_t(r) * m + j0;
            for (int j = 0; j < w; ++j) sum[j] += gr[j];
        }
        for (int j = 0; j < w; ++j) db[j0 + j] += sum[j];
    }
    int64_t row0 = 0;
    for (int i = 0; i < n_inputs; ++i) {
        const float* wi = w + row0 * m;
        // dW_i [d_i x m] += x_i^T [d_i x n] * g [n x m]
        sgemm_parallel(dims[i], m, n, xs[i], 1, dims[i], g, m, 1, true, dw + row0 * m, m);
        // dx_i [n x d_i] = g [n x m] * W_i^T [m x d_i]
        if (dxs && dxs[i]) sgemm_ksplit(n, dims[i], m, g, m, 1, wi, 1, m, dxs[i], dims[i]);
        row0 += dims[i];
    }
}

}  // namespace deepid2
