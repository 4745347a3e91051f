"""The emulator's tensor-core model (tests/gpu_emu/emu.h) on its own: the
m16n8k8 TF32 mma and cvt.rna.tf32.f32 of kernels/tc.cuh against numpy, and
the launches the hardware would not run (part of a warp at the mma) refused.

The fragment layout checked here is the PTX ISA's as emu.h reads it; that the
hardware agrees is for the first GPU run (test_tc_variants.py, "cuda" mode)."""
import shutil

import numpy as np
import pytest

from gpu_support import load
from deepid2_core.backends import _kernel_src

KERNELS = r'''
#include "tc.cuh"

// One warp (or blockDim.x threads): D = A B + C for a 16 x 8 x 8 product,
// the fragments read from row-major A, B, C as the PTX layout says. `skip`:
// a lane that leaves before the mma (-1: none).
extern "C" __global__ void mma_once(const float* A, const float* B, const float* C, float* D,
                                    int skip) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (lane == skip) return;
    unsigned a[4] = {tf32_bits(A[g * 8 + t]), tf32_bits(A[(g + 8) * 8 + t]),
                     tf32_bits(A[g * 8 + t + 4]), tf32_bits(A[(g + 8) * 8 + t + 4])};
    unsigned b[2] = {tf32_bits(B[t * 8 + g]), tf32_bits(B[(t + 4) * 8 + g])};
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                  C[(g + 8) * 8 + 2 * t + 1]};
    mma_tf32(d, a, b);
    mma_tf32(d, a, b);  // twice: D = 2 A B + C, the second post in the other buffer
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

extern "C" __global__ void round_tf32(const float* x, unsigned* out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = tf32_bits(x[i]);
}
'''


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    g = load("emu")
    d = tmp_path_factory.mktemp("tc_kernels")
    for f in ("common.cuh", "tc.cuh"):
        shutil.copy(_kernel_src.kernel_dir() / f, d / f)
    (d / "t.cu").write_text(KERNELS)
    return g.cp, g.cp.RawModule(code=_kernel_src.source("t", d))


def tf32(a):
    """Round to nearest TF32, ties away from zero (numpy, for the reference)."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


def test_tf32_rounding_is_to_nearest_ties_away(emu):
    cp, mod = emu
    one = np.float32(1.0).view(np.uint32)
    vals = np.array([1.0, -1.0, 0.0, -0.0, 3.1415927, -2.7182817, 1e-30, 6.5e4,
                     np.finfo(np.float32).max, np.inf, -np.inf], np.float32)
    # exact halfway between two TF32 values (1 + 2^-11), and just below/above it
    half = np.array([one + 0x1000, one + 0x0FFF, one + 0x1001, one + 0x3000], np.uint32)
    vals = np.concatenate([vals, half.view(np.float32), -half.view(np.float32)])
    x = cp.asarray(vals)
    out = cp.empty(len(vals), dtype=np.uint32)
    mod.get_function("round_tf32")((1,), (32,), (x, out, np.int32(len(vals))))
    got = out.get()
    want = tf32(vals).view(np.uint32)
    want[np.isinf(vals)] = vals[np.isinf(vals)].view(np.uint32)
    np.testing.assert_array_equal(got, want)
    g = got.view(np.float32)
    assert g[11] == np.float32(1 + 2 ** -10)          # the tie went away from zero
    assert g[12] == 1.0 and g[13] == np.float32(1 + 2 ** -10)
    assert g[14] == np.float32(1 + 2 * 2 ** -10)      # 1 + 3 * 2^-11 -> tie, up
    assert g[8] == np.inf                              # past the largest TF32: inf
    assert np.all(got & 0x1FFF == 0)


def test_mma_matches_numpy_with_the_ptx_layout(emu):
    cp, mod = emu
    rng = np.random.default_rng(5)
    A, B, C = (rng.standard_normal(s).astype(np.float32) for s in ((16, 8), (8, 8), (16, 8)))
    D = cp.full((16, 8), np.nan, dtype=np.float32)
    mod.get_function("mma_once")((1,), (32,), (cp.asarray(A), cp.asarray(B), cp.asarray(C),
                                               D, np.int32(-1)))
    ref = 2 * (tf32(A).astype(np.float64) @ tf32(B).astype(np.float64)) + C
    np.testing.assert_allclose(D.get(), ref, rtol=1e-5, atol=1e-5)
    # the unrounded product differs: the operands really were rounded
    assert np.abs(D.get() - (2 * (A.astype(np.float64) @ B) + C)).max() > 1e-5


@pytest.mark.parametrize("block,skip,what", [(16, -1, "16 lanes"), (32, 5, "lane 5 returned")])
def test_mma_needs_the_whole_warp(emu, block, skip, what):
    cp, mod = emu
    z = cp.zeros((16, 8), dtype=np.float32)
    with pytest.raises(RuntimeError, match="warp-collective"):
        mod.get_function("mma_once")((1,), (block,), (z, z[:8], z, cp.zeros((16, 8)),
                                                     np.int32(skip)))
