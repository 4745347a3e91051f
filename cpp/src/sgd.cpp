#include "check.h"
#include "deepid2/ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepid2 {

void sgd_update(int64_t count, float* param, const float* grad, float* velocity, float lr,
                float momentum, float weight_decay) {
    if (count < 0) throw std::invalid_argument("sgd_update: count must be >= 0");
    detail::require_pointer("sgd_update", param, "param");
    detail::require_pointer("sgd_update", grad, "grad");
    detail::require_pointer("sgd_update", velocity, "velocity");
#pragma omp parallel for simd schedule(static) if (count > 65536)
    for (int64_t i = 0; i < count; ++i) {
        const float v = momentum * velocity[i] - lr * (grad[i] + weight_decay * param[i]);
        velocity[i] = v;
        param[i] += v;
    }
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace deepid2
