// TF32 tensor-core primitives (sm_80 and newer) for the *_tc kernels, as
// inline PTX: NVRTC has no <mma.h>, and the PTX fragment layout is
// documented (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32), so the
// CPU emulator (tests/gpu_emu/emu.h) can model it lane by lane.
//
// One warp computes D (16 x 8) += A (16 x 8) B (8 x 8). With g = lane / 4
// and t = lane % 4, each lane holds
//   a[0] = A[g][t], a[1] = A[g+8][t], a[2] = A[g][t+4], a[3] = A[g+8][t+4]
//   b[0] = B[t][g], b[1] = B[t+4][g]
//   d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1]
// The operands are TF32 bit patterns (tf32_bits: round to nearest, ties away
// from zero, as cvt.rna.tf32.f32 and wmma::__float_to_tf32 do); the products
// are exact and the accumulator is float32.
#ifndef DEEPID2_KERNELS_TC_CUH
#define DEEPID2_KERNELS_TC_CUH
#include "common.cuh"

#ifdef DEEPID2_EMU
DEV unsigned tf32_bits(float v) { return emu::cvt_rna_tf32_f32(v); }
DEV void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emu::mma_m16n8k8_tf32(d, a, b, d);
}
#else
DEV unsigned tf32_bits(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
}
DEV void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Fragments from shared tiles of TF32 bits. A tile stored row by row
// (s[m * ld + k]) or, with AT, column by column (s[k * ld + m]); a B tile
// stored s[k * ld + n] or, with BT, s[n * ld + k]. (m0, k0) / (k0, n0): the
// corner of the 16 x 8 / 8 x 8 piece.
template <bool AT>
DEV void load_a_frag(unsigned (&a)[4], const unsigned* s, int ld, int m0, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int r0 = m0 + g, r1 = r0 + 8, c0 = k0 + t, c1 = c0 + 4;
    if (AT) {
        a[0] = s[c0 * ld + r0];
        a[1] = s[c0 * ld + r1];
        a[2] = s[c1 * ld + r0];
        a[3] = s[c1 * ld + r1];
    } else {
        a[0] = s[r0 * ld + c0];
        a[1] = s[r1 * ld + c0];
        a[2] = s[r0 * ld + c1];
        a[3] = s[r1 * ld + c1];
    }
}

template <bool BT>
DEV void load_b_frag(unsigned (&b)[2], const unsigned* s, int ld, int k0, int n0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const int n = n0 + g;
    if (BT) {
        b[0] = s[n * ld + k0 + t];
        b[1] = s[n * ld + k0 + t + 4];
    } else {
        b[0] = s[(k0 + t) * ld + n];
        b[1] = s[(k0 + t + 4) * ld + n];
    }
}

#endif  // DEEPID2_KERNELS_TC_CUH
