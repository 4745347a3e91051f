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

// Pre-packed operands, for callers that produce an operand once and use it
// many times (weights) or can write it straight into panel order (im2col).
// Packed A (m x k): panels of MR rows, element (i, p) at
//   [(i / MR) * k * MR + p * MR + i % MR]; rows past m are zero.
// Packed B (k x n): panels of NR columns, element (p, j) at
//   [(j / NR) * k * NR + p * NR + j % NR]; columns past n are zero.
int gemm_mr();
int gemm_nr();
inline int64_t packed_a_size(int m, int k) {
    return int64_t((m + gemm_mr() - 1) / gemm_mr()) * gemm_mr() * k;
}
inline int64_t packed_b_size(int k, int n) {
    return int64_t((n + gemm_nr() - 1) / gemm_nr()) * gemm_nr() * k;
}
void pack_a(int m, int k, const float* a, int64_t a_rs, int64_t a_cs, float* out);
void pack_b(int k, int n, const float* b, int64_t b_rs, int64_t b_cs, float* out);
void sgemm_packed(int m, int n, int k, const float* ap, const float* bp, bool accumulate,
                  float* c, int64_t c_rs);
// Packed A times a B whose NR-column panels lie b_panel floats apart with
// rows b_rs apart: packed B is (NR, k * NR); a plain row-major matrix whose
// row length is a multiple of NR (zero padded) is (ld, NR), used unpacked.
void sgemm_panels(int m, int n, int k, const float* ap, const float* b, int64_t b_rs,
                  int64_t b_panel, bool accumulate, float* c, int64_t c_rs);

// dst (n x m, rows dst_ld apart) = the transpose of src (m x n, rows src_ld
// apart), in register blocks where whole.
void transpose(int m, int n, const float* src, int64_t src_ld, float* dst, int64_t dst_ld);

// C = A * B split into column/row tiles over the OpenMP threads. Each element
// of C is computed by exactly one thread in sgemm's order: deterministic.
void sgemm_parallel(int m, int n, int k, const float* a, int64_t a_rs,
                    int64_t a_cs, const float* b, int64_t b_rs, int64_t b_cs,
                    bool accumulate, float* c, int64_t c_rs);

}  // namespace deepid2
