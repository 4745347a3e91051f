"""gpu backend vs the float64 oracle and vs the cpu backend: lsconv, maxpool,
dense. The shapes and region grids are the cpu tests' (tests/backends/test_cpu_ops.py)
plus a few that reach the GPU kernels' other paths (several tiles of maps,
taps and columns; many column chunks in the weight gradient; the kernel too
large for the shared-memory input gradient).

Each test runs on the real GPU ("cuda", skipped without CuPy / a GPU) and in
the CPU emulator of the kernels ("emu"); see tests/gpu_support.py.
Tolerances: the cpu tests' (|got - ref| <= 1e-5 sqrt(L) + 1e-4 |ref|)
against the oracle; twice that against the cpu backend.
"""
import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, bits, dev, gpu_fixture, host, restore, tol
from oracle import assert_close
from op_cases import (CONV, DENSE_CASES, LSCONV_CASES, LSCONV_POOL_CASES, POOL_CASES, POOL_VALUES,
                      make_dense, make_pool_input, pool_oracle, randn)


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    yield g
    restore(g, saved)


# ----------------------------------------------------------------------------
# lsconv
GPU_LSCONV_CASES = {  # N, C, H, W, K, kh, kw, region
    **LSCONV_CASES,
    "k_tiles_70": (2, 3, 7, 6, 70, 2, 2, (3, 2)),             # 3 tiles of 32 maps
    "q_tiles_c9_3x3": (3, 9, 8, 9, 5, 3, 3, CONV),             # Q = 81: 2 tap tiles (+ bias)
    "many_columns": (16, 2, 20, 18, 6, 3, 3, CONV),            # 4608 columns: column chunks
    "local_many_regions": (3, 4, 9, 9, 5, 2, 2, (1, 1)),       # 64 regions of 1 neuron
    "q_tiles_c31_k45": (2, 31, 7, 8, 45, 3, 3, (2, 3)),     # Q + 1 = 280: 3 tiles of 128 taps
    "k_tiles_130": (2, 2, 5, 6, 130, 2, 2, (2, 2)),           # 3 tiles of 60 maps (or 7 of 20)
    "big_kernel_px2": (2, 2, 12, 12, 3, 10, 10, CONV),       # dx: the gather kernel, 2 positions
    "huge_kernel_fallback": (1, 1, 100, 100, 2, 100, 99, CONV),  # too big for shared memory
}


def make_lsconv(case, seed):
    n, c, h, w, k, kh, kw, region = GPU_LSCONV_CASES[case]
    oh, ow = h - kh + 1, w - kw + 1
    region = (oh, ow) if region == CONV else region
    _, _, RY, RX = O.lsconv_grid(h, w, kh, kw, region)
    rng = np.random.default_rng(seed)
    x, wt, b = (randn(rng, (n, c, h, w)), randn(rng, (RY, RX, k, c, kh, kw)),
                randn(rng, (RY, RX, k)))
    Ls = (c * kh * kw, k * kh * kw, n * min(region[0], oh) * min(region[1], ow))
    return x, wt, b, region, rng, Ls


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", GPU_LSCONV_CASES)
def test_lsconv_forward(gpu, be, case, relu):
    x, w, b, region, _, (L, _, _) = make_lsconv(case, 0)
    dx_, dw_, db_ = dev(gpu, [x, w, b])
    y = gpu.be.lsconv_forward(dx_, dw_, db_, region, relu=relu)
    assert isinstance(y, gpu.cp.ndarray) and y.dtype == np.float32 and y.flags.c_contiguous
    yh = host(y)
    assert_close(yh, O.lsconv_forward(x, w, b, region, relu), name="y", **tol(L))
    assert_close(yh, be.lsconv_forward(x, w, b, region, relu=relu), name="y vs cpu",
                 **tol(L, factor=2))
    for a, s in zip((dx_, dw_, db_), (x, w, b)):
        np.testing.assert_array_equal(host(a), s)   # inputs untouched


BACKWARD_MODES = [(True, True), (False, True), (True, False)]  # (relu, deterministic)


@pytest.mark.parametrize("relu,det", BACKWARD_MODES, ids=["relu", "linear", "relu-fast"])
@pytest.mark.parametrize("case", GPU_LSCONV_CASES)
def test_lsconv_backward(gpu, be, case, relu, det):
    gpu.be.set_deterministic(det)
    x, w, b, region, rng, (_, Ldx, Ldw) = make_lsconv(case, 1)
    y = be.lsconv_forward(x, w, b, region, relu=relu)   # the same saved y on both sides
    dy = randn(rng, y.shape)
    args = dev(gpu, [x, w, y, dy])
    dx, dw, db = gpu.be.lsconv_backward(*args, region, relu=relu)
    rdx, rdw, rdb = O.lsconv_backward(x, w, y, dy, region, relu)
    cdx, cdw, cdb = be.lsconv_backward(x, w, y, dy, region, relu=relu)
    for got, ref, cpu, nm, L in [(dx, rdx, cdx, "dx", Ldx), (dw, rdw, cdw, "dw", Ldw),
                                 (db, rdb, cdb, "db", Ldw)]:
        assert got.dtype == np.float32 and got.shape == ref.shape, nm
        assert_close(host(got), ref, name=nm, **tol(L))
        assert_close(host(got), cpu, name=f"{nm} vs cpu", **tol(L, factor=2))
    for a, s in zip(args, (x, w, y, dy)):
        np.testing.assert_array_equal(host(a), s)
    if det:   # bit-identical on a second run
        again = gpu.be.lsconv_backward(*args, region, relu=relu)
        for a1, a2, nm in zip((dx, dw, db), again, ("dx", "dw", "db")):
            assert bits(a1) == bits(a2), f"{nm} differs between two deterministic runs"


@pytest.mark.parametrize("det", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("case", ["ragged_3x2_regions", "conv_3x3", "deepid2_conv3",
                                  "deepid2_conv4", "many_columns"])
def test_lsconv_backward_accumulates_and_skips_dx(gpu, case, det):
    gpu.be.set_deterministic(det)
    x, w, b, region, rng, (_, _, Ldw) = make_lsconv(case, 2)
    y = O.lsconv_forward(x, w, b, region).astype(np.float32)
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    dw, db = dev(gpu, [dw0, db0])
    out = gpu.be.lsconv_backward(*dev(gpu, [x, w, y, dy]), region, relu=True, need_dx=False,
                                 dw=dw, db=db)
    assert out[0] is None and out[1] is dw and out[2] is db
    _, rdw, rdb = O.lsconv_backward(x, w, y, dy, region, True)
    assert_close(host(dw), dw0 + rdw, name="dw (accumulated)", **tol(Ldw + 1))
    assert_close(host(db), db0 + rdb, name="db (accumulated)", **tol(Ldw + 1))
    gpu.be.lsconv_backward(*dev(gpu, [x, w, y, dy]), region, need_dx=False, dw=dw, db=db)
    assert_close(host(dw), dw0 + 2 * rdw, name="dw (twice)", **tol(2 * Ldw + 1))


@pytest.mark.parametrize("case", ["ragged_5x4_kernel", "deepid2_conv1", "deepid2_conv3",
                                  "many_columns"])
def test_lsconv_deterministic(gpu, case):
    """Deterministic mode (the default): every output bit-identical run to run."""
    assert gpu.be.is_deterministic()
    x, w, b, region, rng, _ = make_lsconv(case, 3)
    args = dev(gpu, [x, w, b])
    y1, y2 = (gpu.be.lsconv_forward(*args, region) for _ in range(2))
    assert bits(y1) == bits(y2)
    dy = dev(gpu, randn(rng, y1.shape))
    g1, g2 = (gpu.be.lsconv_backward(args[0], args[1], y1, dy, region) for _ in range(2))
    for a1, a2, nm in zip(g1, g2, ("dx", "dw", "db")):
        assert bits(a1) == bits(a2), nm


@pytest.mark.parametrize("case", ["ragged_3x2_regions", "deepid2_conv3", "kernel_is_input",
                                  "huge_kernel_fallback"])
def test_lsconv_debug_poison(gpu, case):
    """Debug mode poisons every output (and the weight-gradient workspace) with
    NaN before the kernels run and checks that none is left: every element
    is written."""
    gpu.be.set_debug(True)
    x, w, b, region, rng, (L, Ldx, Ldw) = make_lsconv(case, 4)
    args = dev(gpu, [x, w, b])
    y = gpu.be.lsconv_forward(*args, region)
    dy = randn(rng, y.shape)
    dx, dw, db = gpu.be.lsconv_backward(args[0], args[1], y, dev(gpu, dy), region)
    rdx, rdw, _ = O.lsconv_backward(x, w, host(y), dy, region, True)
    assert_close(host(dx), rdx, name="dx", **tol(Ldx))
    assert_close(host(dw), rdw, name="dw", **tol(Ldw))


# ----------------------------------------------------------------------------
# lsconv_pool (composed of lsconv and maxpool on the gpu)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", ["conv_3x3_floor", "ragged_regions_s3", "local_s2"])
def test_lsconv_pool(gpu, be, case, relu):
    conv, s = LSCONV_POOL_CASES[case]
    x, w, b, region, rng, (L, Ldx, Ldw) = make_lsconv(conv, 4)
    y, am = gpu.be.lsconv_pool_forward(*dev(gpu, [x, w, b]), region, relu=relu, s=s)
    cy, cam = be.lsconv_pool_forward(x, w, b, region, relu=relu, s=s)
    assert_close(host(y), cy, name="y vs cpu", **tol(L))
    ry, _, backward = pool_oracle(x, w, b, region, relu, s)
    assert_close(host(y), ry, name="y", **tol(L))
    dy = randn(rng, cy.shape)
    dx, dw, db = gpu.be.lsconv_pool_backward(*dev(gpu, [x, w, cy, cam, dy]), region, relu=relu,
                                             s=s)
    rdx, rdw, rdb = backward(cy, cam, dy)
    assert_close(host(dx), rdx, name="dx", **tol(Ldx))
    assert_close(host(dw), rdw, name="dw", **tol(Ldw))
    assert_close(host(db), rdb, name="db", **tol(Ldw))


# ----------------------------------------------------------------------------
# maxpool
@pytest.mark.parametrize("values", POOL_VALUES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool(gpu, be, case, values):
    n, c, h, w, s = POOL_CASES[case]
    rng = np.random.default_rng(4)
    x = make_pool_input(rng, (n, c, h, w), values)
    y, arg = gpu.be.maxpool_forward(dev(gpu, x), s)
    ry, rarg = O.maxpool_forward(x, s)
    assert y.dtype == np.float32 and arg.dtype == np.int32
    assert y.shape == arg.shape == (n, c, h // s, w // s)
    np.testing.assert_array_equal(host(y), ry)
    np.testing.assert_array_equal(host(arg), rarg)   # ties: first max, row-major
    cy, carg = be.maxpool_forward(x, s)
    np.testing.assert_array_equal(host(arg), carg)
    dy = randn(rng, ry.shape)
    dx = gpu.be.maxpool_backward(dev(gpu, dy), arg, (h, w))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(host(dx), O.maxpool_backward(dy, rarg, (h, w)))
    np.testing.assert_array_equal(host(dx), be.maxpool_backward(dy, carg, (h, w)))


def test_maxpool_backward_arbitrary_argmax(gpu):
    rng = np.random.default_rng(5)
    n, c, h, w, s = 2, 3, 7, 8, 3
    oh, ow = h // s, w // s
    iy = np.arange(oh)[:, None] * s + rng.integers(0, s, (n, c, oh, ow))
    ix = np.arange(ow)[None, :] * s + rng.integers(0, s, (n, c, oh, ow))
    arg = (iy * w + ix).astype(np.int32)
    dy = randn(rng, (n, c, oh, ow))
    dx = host(gpu.be.maxpool_backward(dev(gpu, dy), dev(gpu, arg), (h, w)))
    np.testing.assert_array_equal(dx, O.maxpool_backward(dy, arg, (h, w)))
    assert not dx[:, :, oh * s:, :].any() and not dx[:, :, :, ow * s:].any()


def test_maxpool_explicit_s(gpu):
    """in_hw 8x8 onto a 2x2 map: s defaults to 4; s = 3 is the floor pooling."""
    rng = np.random.default_rng(6)
    x = randn(rng, (2, 3, 8, 8))
    for s in (3, 4):
        y, arg = gpu.be.maxpool_forward(dev(gpu, x), s)
        ry, rarg = O.maxpool_forward(x, s)
        np.testing.assert_array_equal(host(arg), rarg)
        dy = randn(rng, ry.shape)
        dx = gpu.be.maxpool_backward(dev(gpu, dy), arg, (8, 8), s if s == 3 else None)
        np.testing.assert_array_equal(host(dx), O.maxpool_backward(dy, rarg, (8, 8)))


# (window oy=3, ox=1 of an 8x7 map: rows 6-7, columns 2-3) -> a bad index
@pytest.mark.parametrize("bad_index", [6 * 7 + 4, 4 * 7 + 2, 7 * 7 + 6, -1, 10 ** 6],
                         ids=["next_window", "window_above", "dropped_column", "negative",
                              "outside_plane"])
def test_maxpool_backward_rejects_argmax_outside_window(gpu, bad_index):
    rng = np.random.default_rng(7)
    x = randn(rng, (2, 3, 8, 7))
    _, arg = gpu.be.maxpool_forward(dev(gpu, x), 2)
    bad = host(arg).copy()
    bad[1, 2, 3, 1] = bad_index
    dy = randn(rng, (2, 3, 4, 3))
    with pytest.raises(ValueError, match=r"\bargmax\b"):
        gpu.be.maxpool_backward(dev(gpu, dy), dev(gpu, bad), (8, 7))
    old = gpu.be.set_index_checks(False)   # no wait, no error: that gradient is dropped
    try:
        dx = host(gpu.be.maxpool_backward(dev(gpu, dy), dev(gpu, bad), (8, 7)))
    finally:
        gpu.be.set_index_checks(old)
    dy_kept = dy.copy()
    dy_kept[1, 2, 3, 1] = 0.0
    ref = O.maxpool_backward(dy_kept, host(arg), (8, 7))
    np.testing.assert_array_equal(dx, ref)


# ----------------------------------------------------------------------------
# dense
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense(gpu, be, case, relu):
    xs, w, b, rng, (d, m, n) = make_dense(case, 6)
    gxs, gw, gb = dev(gpu, xs), dev(gpu, w), dev(gpu, b)
    y = gpu.be.dense_forward(gxs, gw, gb, relu=relu)
    assert y.dtype == np.float32 and y.shape == (n, m)
    assert_close(host(y), O.dense_forward(xs, w, b, relu), name="y", **tol(d))
    yc = be.dense_forward(xs, w, b, relu=relu)
    assert_close(host(y), yc, name="y vs cpu", **tol(d, factor=2))
    dy = randn(rng, yc.shape)
    dxs, dw, db = gpu.be.dense_backward(gxs, gw, dev(gpu, yc), dev(gpu, dy), relu=relu)
    rdxs, rdw, rdb = O.dense_backward(xs, w, yc, dy, relu)
    assert isinstance(dxs, (list, tuple)) and len(dxs) == len(xs)
    for i, (dx, rdx, x) in enumerate(zip(dxs, rdxs, xs)):
        assert dx.dtype == np.float32 and dx.shape == x.shape
        assert_close(host(dx), rdx, name=f"dxs[{i}]", **tol(m))
    assert_close(host(dw), rdw, name="dw", **tol(n))
    assert_close(host(db), rdb, name="db", **tol(n))
    again = gpu.be.dense_backward(gxs, gw, dev(gpu, yc), dev(gpu, dy), relu=relu)
    for a1, a2 in zip([*dxs, dw, db], [*again[0], again[1], again[2]]):
        assert bits(a1) == bits(a2)   # deterministic


@pytest.mark.parametrize("case", ["deepid2_fc160", "three_inputs"])
def test_dense_accumulates_and_skips_dx(gpu, case):
    xs, w, b, rng, (d, m, n) = make_dense(case, 7)
    y = O.dense_forward(xs, w, b).astype(np.float32)
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    dw, db = dev(gpu, dw0), dev(gpu, db0)
    out = gpu.be.dense_backward(dev(gpu, xs), dev(gpu, w), dev(gpu, y), dev(gpu, dy), relu=True,
                                need_dx=False, dw=dw, db=db)
    assert out[0] is None and out[1] is dw and out[2] is db
    _, rdw, rdb = O.dense_backward(xs, w, y, dy, True)
    assert_close(host(dw), dw0 + rdw, name="dw (accumulated)", **tol(n + 1))
    assert_close(host(db), db0 + rdb, name="db (accumulated)", **tol(n + 1))


def test_dense_single_array_input_and_debug(gpu):
    gpu.be.set_debug(True)
    rng = np.random.default_rng(8)
    x, w, b = randn(rng, (4, 3, 2)), randn(rng, (6, 5)), randn(rng, 5)
    y = gpu.be.dense_forward(dev(gpu, x), dev(gpu, w), dev(gpu, b))
    assert_close(host(y), O.dense_forward([x], w, b), name="y", **tol(6))
    dy = randn(rng, y.shape)
    dxs, dw, db = gpu.be.dense_backward(dev(gpu, x), dev(gpu, w), y, dev(gpu, dy))
    assert len(dxs) == 1 and dxs[0].shape == x.shape
    rdxs, rdw, _ = O.dense_backward([x], w, host(y), dy)
    assert_close(host(dxs[0]), rdxs[0], name="dxs[0]", **tol(5))
    assert_close(host(dw), rdw, name="dw", **tol(4))
