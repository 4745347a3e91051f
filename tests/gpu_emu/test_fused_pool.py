"""lsconv + bias + ReLU + 2 x 2 max-pool fused (kernels/lsconv_pool.cu) and
its backward through the pooled argmax (the *_pooled kernels), from
deepid2_core/backends/gpu_tc.py; the lsconv_pool_fwd/bwd family "fused",
the default for 2 x 2 windows): bit-identical to family "composed", the
composition of the two ops (the same sums in the same order), checked
against the float64 oracle, on a GPU ("cuda") and in the emulator ("emu").
The TF32 pooled backward: against the oracle on TF32-rounded inputs."""
import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, bits, host, tol
from oracle import assert_close
from tc_support import lsconv_case, tf32, variant_modes
from op_cases import CONV, pool_oracle, randn

CASES = {  # N, C, H, W, K, kh, kw, region, pool window s
    "conv_3x3_floor": (2, 3, 8, 7, 4, 3, 3, CONV, 2),           # 6 x 5: a column dropped
    "regions_straddled": (2, 4, 11, 9, 35, 5, 4, (3, 4), 2),     # windows across regions
    "region_rows": (3, 2, 6, 6, 2, 2, 2, (1, 5), 2),
    "local": (2, 1, 7, 7, 3, 4, 1, (1, 1), 2),                   # 4 regions per window
    "big_kernel_px2": (2, 2, 12, 12, 3, 10, 10, CONV, 2),        # dx: the gather kernel
    "huge_kernel_simple": (1, 1, 80, 80, 2, 78, 77, CONV, 2),    # dx: the simple kernel
    "deepid2_conv1": (2, 3, 55, 47, 20, 4, 4, CONV, 2),
    "deepid2_conv2": (2, 20, 26, 22, 40, 3, 3, CONV, 2),
    "deepid2_conv3": (3, 40, 12, 10, 60, 3, 3, (5, 4), 2),
    "window_3_composed": (2, 4, 11, 9, 3, 5, 4, (3, 4), 3),      # s != 2: the two ops
}


@pytest.fixture(params=MODES)
def gpu(request):
    with variant_modes(request.param) as g:
        yield g


def make(case, seed):
    """(x, w, b, region, s, rng, (L of y, of dx, of dw))."""
    x, w, b, region, rng, ls = lsconv_case(CASES[case][:8], seed)
    return x, w, b, region, CASES[case][8], rng, (ls["y"], ls["dx"], ls["dw"])


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", CASES)
def test_fused_equals_the_composition(gpu, case, relu):
    x, w, b, region, s, rng, (L, Ldx, Ldw) = make(case, 4)
    d = gpu.cp.asarray
    y, am = gpu.tc.lsconv_pool_forward_fused(d(x), d(w), d(b), region, relu=relu, s=s)
    y2, am2 = gpu.tc.lsconv_pool_forward("composed", d(x), d(w), d(b), region, relu=relu, s=s)
    assert bits(y) == bits(y2) and bits(am) == bits(am2)
    y3, am3 = gpu.be.lsconv_pool_forward(d(x), d(w), d(b), region, relu=relu, s=s)  # default
    assert bits(y3) == bits(y) and bits(am3) == bits(am)
    ry, _, backward = pool_oracle(x, w, b, region, relu, s)
    assert_close(host(y), ry, name="y", **tol(L))
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    got = gpu.tc.lsconv_pool_backward_fused(d(x), d(w), y, am, d(dy), region, relu=relu,
                                            dw=d(dw0), db=d(db0), s=s)
    ref = gpu.tc.lsconv_pool_backward("composed", d(x), d(w), y, am, d(dy), region, relu=relu,
                                      dw=d(dw0), db=d(db0), s=s)
    for name, a, r in zip(("dx", "dw", "db"), got, ref):
        assert bits(a) == bits(r), name
    rdx, rdw, rdb = backward(host(y), host(am), dy)
    assert_close(host(got[0]), rdx, name="dx", **tol(Ldx))
    assert_close(host(got[1]) - dw0, rdw, name="dw", **tol(Ldw))
    assert_close(host(got[2]) - db0, rdb, name="db", **tol(Ldw))


@pytest.mark.parametrize("case", ["regions_straddled", "deepid2_conv2", "deepid2_conv3"])
def test_fast_mode_and_no_dx(gpu, case):
    gpu.be.set_deterministic(False)
    x, w, b, region, s, rng, (_, _, Ldw) = make(case, 5)
    d = gpu.cp.asarray
    y, am = gpu.tc.lsconv_pool_forward_fused(d(x), d(w), d(b), region)
    dy = randn(rng, y.shape)
    dx, dw, db = gpu.tc.lsconv_pool_backward_fused(d(x), d(w), y, am, d(dy), region,
                                                   need_dx=False)
    assert dx is None
    _, rdw, rdb = pool_oracle(x, w, b, region, True, s)[2](host(y), host(am), dy)
    assert_close(host(dw), rdw, name="dw", **tol(Ldw))
    assert_close(host(db), rdb, name="db", **tol(Ldw))


@pytest.mark.parametrize("case", ["regions_straddled", "deepid2_conv2", "deepid2_conv3",
                                  "window_3_composed"])
def test_tf32_pooled_backward(gpu, case):
    x, w, b, region, s, rng, (_, Ldx, Ldw) = make(case, 6)
    d = gpu.cp.asarray
    y, am = gpu.tc.lsconv_pool_forward_fused(d(x), d(w), d(b), region, s=s)
    dy = randn(rng, y.shape)
    dx, dw, db = gpu.tc.lsconv_pool_backward_tf32(d(x), d(w), y, am, d(dy), region, s=s)
    out_hw = (x.shape[2] - w.shape[4] + 1, x.shape[3] - w.shape[5] + 1)
    dconv = O.maxpool_backward(np.where(host(y) > 0, tf32(dy), 0.0), host(am), out_hw)
    rdx, rdw, rdb = O.lsconv_backward(tf32(x), tf32(w), dconv, dconv, region, relu=False)
    assert_close(host(dx), rdx, name="dx", **tol(Ldx, factor=2))
    assert_close(host(dw), rdw, name="dw", **tol(Ldw, factor=2))
    assert_close(host(db), rdb, name="db", **tol(Ldw, factor=2))


def test_bad_argmax_is_refused_before_dw_is_touched(gpu):
    x, w, b, region, s, rng, _ = make("deepid2_conv3", 7)
    d = gpu.cp.asarray
    y, am = gpu.tc.lsconv_pool_forward_fused(d(x), d(w), d(b), region)
    bad = host(am).copy()
    bad[1, 2, 0, 0] += 2          # two columns right: the next window's
    dw0 = randn(rng, w.shape)
    dw = d(dw0)
    with pytest.raises(ValueError, match="argmax holds an index outside its window"):
        gpu.tc.lsconv_pool_backward_fused(d(x), d(w), y, d(bad), d(randn(rng, y.shape)), region,
                                          dw=dw)
    np.testing.assert_array_equal(host(dw), dw0)
