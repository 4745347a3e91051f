"""The TF32 tensor-core lsconv variants (family "tc" of lsconv_fwd/dx/dw,
the default at precision tf32; deepid2_core/backends/gpu_tc.py,
kernels/lsconv_tc.cu) against the float64 oracle, at small random shapes:
DeepID2's conv2, conv3 (a 2 x 2 grid of regions) and conv4 (locally
connected) at batches of 2 to 3, and shapes that are not multiples of any
tile. Outputs are poisoned with NaN first (debug mode) and must be written.

Two checks per result (docs/ops.md, "TF32"):
- sharp: equal to the oracle run on the TF32-rounded inputs, within the
  float32 tolerance of the other gpu tests: the kernels round every operand
  exactly once, to nearest, and add every product;
- stated: within the TF32 bound of the oracle on the inputs as given.
Each runs on a GPU ("cuda", skipped without one) and in the emulator ("emu")."""
import numpy as np
import pytest

import oracle as O
from deepid2_core.backends import gpu_tiling as tiling
from gpu_support import MODES, bits, host, tol
from oracle import assert_close
from tc_support import lsconv_case, lsconv_terms, tf32, tf32_bound, variant_modes
from op_cases import CONV, randn

CASES = {  # N, C, H, W, K, kh, kw, region
    "conv_3x3": (2, 3, 8, 7, 4, 3, 3, CONV),
    "ragged_3x2_regions": (3, 2, 9, 6, 5, 3, 2, (3, 2)),
    "ragged_5x4_kernel": (2, 4, 11, 9, 3, 5, 4, (3, 4)),
    "local_4x1": (2, 1, 7, 7, 3, 4, 1, (1, 1)),
    "k70_rows_past_a_tile": (2, 3, 7, 6, 70, 2, 2, (3, 2)),
    "q279_taps": (2, 31, 7, 8, 45, 3, 3, (2, 3)),
    "many_column_chunks": (16, 2, 20, 18, 6, 3, 3, CONV),
    "big_kernel_one_region": (2, 2, 12, 12, 3, 10, 10, CONV),
    "deepid2_conv2": (2, 20, 26, 22, 40, 3, 3, CONV),
    "deepid2_conv3": (2, 40, 12, 10, 60, 3, 3, (5, 4)),
    "deepid2_conv4": (3, 60, 5, 4, 80, 2, 2, (1, 1)),
}


@pytest.fixture(params=MODES)
def gpu(request):
    with variant_modes(request.param) as g:
        yield g


def make(case, seed):
    return lsconv_case(CASES[case], seed)


def check(name, got, sharp_ref, exact_ref, terms, L):
    """Both checks of the module docstring for one result."""
    assert_close(got, sharp_ref, name=f"{name} vs TF32-rounded oracle", **tol(L, factor=2))
    t = tol(L)
    bound = tf32_bound(*terms) + t["atol"] + t["rtol"] * np.abs(exact_ref)
    err = np.abs(got.astype(np.float64) - exact_ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{name}: beyond the TF32 bound at {worst}: |err| "
                                  f"{err[worst]:.3g} > {bound[worst]:.3g}")


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", CASES)
def test_tf32_forward(gpu, case, relu):
    x, w, b, region, rng, ls = make(case, 0)
    y = host(gpu.tc.lsconv_forward_tf32(*(gpu.cp.asarray(a) for a in (x, w, b)), region,
                                        relu=relu))
    dy = randn(rng, y.shape)
    terms = lsconv_terms(x, w, y, dy, region, relu)
    check("y", y, O.lsconv_forward(tf32(x), tf32(w), b, region, relu),
          O.lsconv_forward(x, w, b, region, relu), terms["y"], ls["y"])


@pytest.mark.parametrize("relu,det", [(True, True), (False, True), (True, False)],
                         ids=["relu", "linear", "relu-fast"])
@pytest.mark.parametrize("case", CASES)
def test_tf32_backward(gpu, case, relu, det):
    gpu.be.set_deterministic(det)
    x, w, b, region, rng, ls = make(case, 1)
    y = O.lsconv_forward(x, w, b, region, relu).astype(np.float32)  # the saved output
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)     # dw, db are added to
    d = gpu.cp.asarray
    dx, dw, db = gpu.tc.lsconv_backward_tf32(d(x), d(w), d(y), d(dy), region, relu=relu,
                                             dw=d(dw0), db=d(db0))
    sharp = O.lsconv_backward(tf32(x), tf32(w), y, tf32(dy), region, relu)
    exact = O.lsconv_backward(x, w, y, dy, region, relu)
    terms = lsconv_terms(x, w, y, dy, region, relu)
    check("dx", host(dx), sharp[0], exact[0], terms["dx"], ls["dx"])
    check("dw", host(dw) - dw0, sharp[1], exact[1], terms["dw"], ls["dw"])
    check("db", host(db) - db0, sharp[2], exact[2], terms["db"], ls["db"])


@pytest.mark.parametrize("rows", [32, 48, 64, 80])
def test_every_tile_shape(gpu, monkeypatch, rows):
    """Each lsconv_tc_*_m<rows> kernel, forced (and the one launched), on a case
    with several regions."""
    launched, launch = [], gpu.be.KIT.launch
    monkeypatch.setattr(gpu.be.KIT, "launch", lambda f, k, *a, **kw: (launched.append(k),
                                                                      launch(f, k, *a, **kw)))
    with tiling.forced(lsconv_fwd=f"tc.m{rows}", lsconv_dx=f"tc.m{rows}",
                       lsconv_dw=f"tc.m{rows}"):
        check_every_op(gpu)
    tc = sorted(k for k in launched if k.startswith("lsconv_tc_"))
    assert tc == sorted(f"lsconv_tc_{op}_m{rows}" for op in ("fwd", "dcol", "bwd_w")), tc
    x, w, b, region, _, _ = make("q279_taps", 2)
    with tiling.forced(lsconv_fwd="tc.m40"), pytest.raises(ValueError, match="m = 40 rows"):
        gpu.tc.lsconv_forward_tf32(*(gpu.cp.asarray(a) for a in (x, w, b)), region)


def check_every_op(gpu):
    x, w, b, region, rng, ls = make("q279_taps", 2)
    d = gpu.cp.asarray
    y = host(gpu.tc.lsconv_forward_tf32(d(x), d(w), d(b), region))
    assert_close(y, O.lsconv_forward(tf32(x), tf32(w), b, region), name="y", **tol(ls["y"], 2))
    dy = randn(rng, y.shape)
    dx, dw, db = gpu.tc.lsconv_backward_tf32(d(x), d(w), d(y), d(dy), region)
    sharp = O.lsconv_backward(tf32(x), tf32(w), y, tf32(dy), region)
    for name, got, ref in zip(("dx", "dw", "db"), (dx, dw, db), sharp):
        assert_close(host(got), ref, name=name, **tol(ls[name], 2))


def test_tf32_is_run_to_run_identical(gpu):
    x, w, b, region, rng, _ = make("deepid2_conv3", 3)
    d = gpu.cp.asarray
    y = gpu.tc.lsconv_forward_tf32(d(x), d(w), d(b), region)
    dy = d(randn(rng, y.shape))
    runs = [(gpu.tc.lsconv_forward_tf32(d(x), d(w), d(b), region),
             *gpu.tc.lsconv_backward_tf32(d(x), d(w), y, dy, region)) for _ in range(2)]
    for a, b_ in zip(*runs):
        assert bits(a) == bits(b_)


def test_precision_switch(gpu):
    """set_precision picks the TF32 variants as the default; fp32 keeps the bits."""
    x, w, b, region, _, _ = make("ragged_3x2_regions", 4)
    d = gpu.cp.asarray
    assert gpu.be.get_precision() == "fp32"     # the default
    fp32 = host(gpu.be.lsconv_forward(d(x), d(w), d(b), region))
    with tiling.forced(lsconv_fwd="tiled"):
        assert bits(fp32) == bits(gpu.be.lsconv_forward(d(x), d(w), d(b), region))
    assert gpu.be.set_precision("tf32") == "fp32"
    tf = host(gpu.be.lsconv_forward(d(x), d(w), d(b), region))
    with tiling.forced(lsconv_fwd="tc"):
        assert bits(tf) == bits(gpu.be.lsconv_forward(d(x), d(w), d(b), region))
    assert bits(tf) != bits(fp32)
    assert gpu.be.set_precision("fp32") == "tf32"
    with tiling.forced(lsconv_fwd="tc"), pytest.raises(ValueError, match="is tf32"):
        gpu.be.lsconv_forward(d(x), d(w), d(b), region)
    with pytest.raises(ValueError, match="'fp32' or 'tf32'"):
        gpu.be.set_precision("bf16")


def test_tf32_refuses_an_older_gpu(gpu, monkeypatch):
    if gpu.mode != "emu":
        pytest.skip("the compute capability of a real GPU cannot be faked")
    monkeypatch.setattr(gpu.cp.cuda.Device, "compute_capability", "75")
    x, w, b, region, _, _ = make("conv_3x3", 5)
    d = gpu.cp.asarray
    with pytest.raises(RuntimeError, match=r"compute capability 8.0 or newer \(this one: 7.5\)"):
        gpu.tc.lsconv_forward_tf32(d(x), d(w), d(b), region)
