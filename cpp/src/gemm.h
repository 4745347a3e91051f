// Single-threaded packed SGEMM used by every op:  C (=|+=) A * B
//   A: M x K, element (i, p) at a[i * a_rs + p * a_cs]
//   B: K x N, element (p, j) at b[p * b_rs + j * b_cs]
//   C: M x N, element (i, j) at c[i * c_rs + j]   (rows contiguous)
// Strides let callers pass transposed operands without copying; A and B are
// packed into MR-row / NR-column panels (zero padded), so edges cost nothing
// special and the micro-kernel only ever sees full tiles.
// The summation order over K is fixed (ascending in KC blocks), so a result
// depends only on the operands, never on the caller's threading.
// Callers parallelise above this level.
#pragma once
#include <cstdint>

namespace deepid2 {

void sgemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs,
           const float* b, int64_t b_rs, int64_t b_cs, bool accumulate,
           float* c, int64_t c_rs);

// C = A * B split into column/row tiles over the OpenMP threads. Each element
// of C is computed by exactly one thread in sgemm's order: deterministic.
void sgemm_parallel(int m, int n, int k, const float* a, int64_t a_rs,
                    int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs,
                    bool accumulate, float* c, int64_t c_rs);

}  // namespace deepid2
