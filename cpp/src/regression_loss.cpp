// Squared-error regression loss. Rows run in parallel; their sums are added
// in row order, so the result does not depend on the thread count.
#include <vector>

#include "check.h"
#include "deepid2/ops.h"

namespace deepid2 {

double regression_loss(int n, int d, const float* pred, const float* target, float* dpred) {
    detail::require_positive("regression_loss", {{"n", n}, {"d", d}});
    detail::require_pointer("regression_loss", pred, "pred");
    detail::require_pointer("regression_loss", target, "target");
    detail::require_pointer("regression_loss", dpred, "dpred");
    std::vector<double> row(n);
    const float inv_n = 1.0f / float(n);
#pragma omp parallel for schedule(static) if (int64_t(n) * d > 65536)
    for (int i = 0; i < n; ++i) {
        double s = 0.0;
        for (int j = 0; j < d; ++j) {
            const int64_t e = int64_t(i) * d + j;
            const float diff = pred[e] - target[e];
            dpred[e] = diff * inv_n;
            s += double(diff) * diff;
        }
        row[i] = s;
    }
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += row[i];
    return 0.5 * total / n;
}

}  // namespace deepid2
