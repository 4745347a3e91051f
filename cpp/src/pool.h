// Max-pooling over a range of planes on the calling thread, for ops that
// pool inside their own parallel loop (lsconv_pool_forward). Same meaning as
// maxpool_forward (deepid2/ops.h) on `planes` H x W maps.
#pragma once
#include <cstdint>

namespace deepid2 {
namespace detail {

void maxpool_planes(int64_t planes, int h, int w, int s, const float* x, float* y,
                    int32_t* argmax);

}  // namespace detail
}  // namespace deepid2
