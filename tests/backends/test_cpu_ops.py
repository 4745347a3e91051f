"""cpu backend vs the float64 oracle: lsconv, maxpool, dense.

Tolerances (float32 op vs float64 oracle on the same float32 inputs):
|got - ref| <= ATOL_UNIT * sqrt(L) * scale + RTOL * |ref|, with L the length
of the reduction behind one output element and scale the size of its terms
(1 for the unit-normal inputs used here). A wrong index or a missed term
gives errors O(1), far outside these bounds.
"""
import numpy as np
import pytest

import oracle as O
from oracle import assert_close
from op_cases import (CONV, DENSE_CASES, LSCONV_CASES, LSCONV_POOL_CASES, POOL_CASES, POOL_VALUES,
                      make_dense, make_pool_input, pool_oracle, randn)

RTOL = 1e-4
ATOL_UNIT = 1e-5


def tol(L, scale=1.0):
    return dict(rtol=RTOL, atol=ATOL_UNIT * np.sqrt(L) * scale)


def test_cpu_backend_loads():
    from deepid2_core.backends import get_backend  # must not raise
    assert get_backend("cpu").name == "cpu"


# ----------------------------------------------------------------------------
# lsconv
def make_lsconv(case, seed):
    n, c, h, w, k, kh, kw, region = LSCONV_CASES[case]
    oh, ow = h - kh + 1, w - kw + 1
    region = (oh, ow) if region == CONV else region
    _, _, RY, RX = O.lsconv_grid(h, w, kh, kw, region)
    rng = np.random.default_rng(seed)
    x, wt, b = randn(rng, (n, c, h, w)), randn(rng, (RY, RX, k, c, kh, kw)), randn(rng, (RY, RX, k))
    # reduction lengths: y / dx / (dw, db)
    Ls = (c * kh * kw, k * kh * kw, n * min(region[0], oh) * min(region[1], ow))
    return x, wt, b, region, rng, Ls


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", LSCONV_CASES)
def test_lsconv_forward(be, case, relu):
    x, w, b, region, _, (L, _, _) = make_lsconv(case, 0)
    saved = [a.copy() for a in (x, w, b)]
    y = be.lsconv_forward(x, w, b, region, relu=relu)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert_close(y, O.lsconv_forward(x, w, b, region, relu), name="y", **tol(L))
    if relu:
        assert y.min() == 0.0
    else:
        assert y.min() < 0
    for a, s in zip((x, w, b), saved):
        np.testing.assert_array_equal(a, s)   # inputs untouched


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", LSCONV_CASES)
def test_lsconv_backward(be, case, relu):
    x, w, b, region, rng, (_, Ldx, Ldw) = make_lsconv(case, 1)
    y = be.lsconv_forward(x, w, b, region, relu=relu)
    dy = randn(rng, y.shape)
    saved = [a.copy() for a in (x, w, y, dy)]
    dx, dw, db = be.lsconv_backward(x, w, y, dy, region, relu=relu)
    rdx, rdw, rdb = O.lsconv_backward(x, w, y, dy, region, relu)   # same saved y
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    assert_close(dx, rdx, name="dx", **tol(Ldx))
    assert_close(dw, rdw, name="dw", **tol(Ldw))
    assert_close(db, rdb, name="db", **tol(Ldw))
    for a, s in zip((x, w, y, dy), saved):
        np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("case", ["ragged_3x2_regions", "conv_3x3", "deepid2_conv3", "deepid2_conv4"])
def test_lsconv_backward_accumulates_and_skips_dx(be, case):
    x, w, b, region, rng, (_, _, Ldw) = make_lsconv(case, 2)
    y = be.lsconv_forward(x, w, b, region)
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    dw, db = dw0.copy(), db0.copy()
    out = be.lsconv_backward(x, w, y, dy, region, relu=True, need_dx=False, dw=dw, db=db)
    assert out[0] is None
    assert np.shares_memory(out[1], dw) and np.shares_memory(out[2], db)
    _, rdw, rdb = O.lsconv_backward(x, w, y, dy, region, True)
    assert_close(dw, dw0 + rdw, name="dw (accumulated)", **tol(Ldw + 1))
    assert_close(db, db0 + rdb, name="db (accumulated)", **tol(Ldw + 1))
    # a second call adds the gradient again
    be.lsconv_backward(x, w, y, dy, region, need_dx=False, dw=dw, db=db)
    assert_close(dw, dw0 + 2 * rdw, name="dw (twice)", **tol(2 * Ldw + 1))


@pytest.mark.parametrize("case", ["ragged_5x4_kernel", "deepid2_conv1", "deepid2_conv3"])
def test_lsconv_deterministic(be, case):
    x, w, b, region, rng, _ = make_lsconv(case, 3)
    y1, y2 = (be.lsconv_forward(x, w, b, region) for _ in range(2))
    np.testing.assert_array_equal(y1, y2)
    dy = randn(rng, y1.shape)
    g1, g2 = (be.lsconv_backward(x, w, y1, dy, region) for _ in range(2))
    for a1, a2 in zip(g1, g2):
        assert a1.tobytes() == a2.tobytes()


# ----------------------------------------------------------------------------
# lsconv_pool: lsconv followed by a max-pool, as one op
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", LSCONV_POOL_CASES)
def test_lsconv_pool(be, case, relu):
    conv, s = LSCONV_POOL_CASES[case]
    x, w, b, region, rng, (L, Ldx, Ldw) = make_lsconv(conv, 4)
    saved = [a.copy() for a in (x, w, b)]
    y, am = be.lsconv_pool_forward(x, w, b, region, relu=relu, s=s)
    assert y.dtype == np.float32 and am.dtype == np.int32
    # the same as the two ops, bit for bit
    y2, am2 = be.maxpool_forward(be.lsconv_forward(x, w, b, region, relu=relu), s)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(am, am2)
    ry, ram, backward = pool_oracle(x, w, b, region, relu, s)
    assert_close(y, ry, name="y", **tol(L))
    assert (am == ram).mean() > 0.99   # float32 vs float64 ties aside
    dy = randn(rng, y.shape)
    dx, dw, db = be.lsconv_pool_backward(x, w, y, am, dy, region, relu=relu, s=s)
    rdx, rdw, rdb = backward(y, am, dy)   # the same argmax on both sides
    assert_close(dx, rdx, name="dx", **tol(Ldx))
    assert_close(dw, rdw, name="dw", **tol(Ldw))
    assert_close(db, rdb, name="db", **tol(Ldw))
    for a, sv in zip((x, w, b), saved):
        np.testing.assert_array_equal(a, sv)


@pytest.mark.parametrize("case", ["ragged_regions_s3", "deepid2_conv3"])
def test_lsconv_pool_backward_accumulates_skips_dx_and_repeats(be, case):
    conv, s = LSCONV_POOL_CASES[case]
    x, w, b, region, rng, (_, _, Ldw) = make_lsconv(conv, 5)
    y, am = be.lsconv_pool_forward(x, w, b, region, s=s)
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    dw, db = dw0.copy(), db0.copy()
    out = be.lsconv_pool_backward(x, w, y, am, dy, region, need_dx=False, dw=dw, db=db, s=s)
    assert out[0] is None
    assert np.shares_memory(out[1], dw) and np.shares_memory(out[2], db)
    _, _, backward = pool_oracle(x, w, b, region, True, s)
    _, rdw, rdb = backward(y, am, dy)
    assert_close(dw, dw0 + rdw, name="dw (accumulated)", **tol(Ldw + 1))
    assert_close(db, db0 + rdb, name="db (accumulated)", **tol(Ldw + 1))
    g1, g2 = (be.lsconv_pool_backward(x, w, y, am, dy, region, s=s) for _ in range(2))
    for a1, a2 in zip(g1, g2):
        assert a1.tobytes() == a2.tobytes()


def test_lsconv_pool_backward_rejects_argmax_outside_window(be):
    x, w, b, region, rng, _ = make_lsconv("conv_3x3", 6)
    y, am = be.lsconv_pool_forward(x, w, b, region)
    dy = randn(rng, y.shape)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    ow = x.shape[3] - w.shape[5] + 1   # the unpooled map's width
    for bad in (am + 2 * ow, am - 1, am + 10 ** 6):   # the window below, ..., off the map
        bad = np.ascontiguousarray(bad, dtype=np.int32)
        with pytest.raises(ValueError, match="argmax"):
            be.lsconv_pool_backward(x, w, y, bad, dy, region, dw=dw, db=db)
        assert not dw.any() and not db.any()   # nothing of the caller's touched


# ----------------------------------------------------------------------------
# maxpool
@pytest.mark.parametrize("values", POOL_VALUES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool(be, case, values):
    n, c, h, w, s = POOL_CASES[case]
    rng = np.random.default_rng(4)
    x = make_pool_input(rng, (n, c, h, w), values)
    y, arg = be.maxpool_forward(x, s)
    ry, rarg = O.maxpool_forward(x, s)
    assert y.dtype == np.float32 and arg.dtype == np.int32
    assert y.shape == arg.shape == (n, c, h // s, w // s)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)   # ties: first max, row-major
    dy = randn(rng, y.shape)
    dx = be.maxpool_backward(dy, arg, (h, w))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(dx, O.maxpool_backward(dy, rarg, (h, w)))
    np.testing.assert_array_equal(dx, be.maxpool_backward(dy, arg, (h, w)))  # deterministic


def test_maxpool_backward_arbitrary_argmax(be):
    """Any in-window argmax (not only forward's) is scattered; the rest is 0."""
    rng = np.random.default_rng(5)
    n, c, h, w, s = 2, 3, 7, 8, 3
    oh, ow = h // s, w // s
    iy = np.arange(oh)[:, None] * s + rng.integers(0, s, (n, c, oh, ow))
    ix = np.arange(ow)[None, :] * s + rng.integers(0, s, (n, c, oh, ow))
    arg = (iy * w + ix).astype(np.int32)
    dy = randn(rng, (n, c, oh, ow))
    dx = be.maxpool_backward(dy, arg, (h, w))
    np.testing.assert_array_equal(dx, O.maxpool_backward(dy, arg, (h, w)))
    assert not dx[:, :, oh * s:, :].any() and not dx[:, :, :, ow * s:].any()


# ----------------------------------------------------------------------------
# dense
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense(be, case, relu):
    xs, w, b, rng, (d, m, n) = make_dense(case, 6)
    y = be.dense_forward(xs, w, b, relu=relu)
    assert y.dtype == np.float32 and y.shape == (n, m)
    assert_close(y, O.dense_forward(xs, w, b, relu), name="y", **tol(d))
    dy = randn(rng, y.shape)
    dxs, dw, db = be.dense_backward(xs, w, y, dy, relu=relu)
    rdxs, rdw, rdb = O.dense_backward(xs, w, y, dy, relu)
    assert isinstance(dxs, (list, tuple)) and len(dxs) == len(xs)
    for i, (dx, rdx) in enumerate(zip(dxs, rdxs)):
        assert dx.dtype == np.float32
        assert_close(dx, rdx, name=f"dxs[{i}]", **tol(m))
    assert_close(dw, rdw, name="dw", **tol(n))
    assert_close(db, rdb, name="db", **tol(n))
    # deterministic
    np.testing.assert_array_equal(be.dense_forward(xs, w, b, relu=relu), y)
    again = be.dense_backward(xs, w, y, dy, relu=relu)
    for a1, a2 in zip([*dxs, dw, db], [*again[0], again[1], again[2]]):
        assert a1.tobytes() == a2.tobytes()


@pytest.mark.parametrize("case", ["deepid2_fc160", "three_inputs"])
def test_dense_accumulates_and_skips_dx(be, case):
    xs, w, b, rng, (d, m, n) = make_dense(case, 7)
    y = be.dense_forward(xs, w, b)
    dy = randn(rng, y.shape)
    dw0, db0 = randn(rng, w.shape), randn(rng, b.shape)
    dw, db = dw0.copy(), db0.copy()
    out = be.dense_backward(xs, w, y, dy, relu=True, need_dx=False, dw=dw, db=db)
    assert out[0] is None
    assert np.shares_memory(out[1], dw) and np.shares_memory(out[2], db)
    _, rdw, rdb = O.dense_backward(xs, w, y, dy, True)
    assert_close(dw, dw0 + rdw, name="dw (accumulated)", **tol(n + 1))
    assert_close(db, db0 + rdb, name="db (accumulated)", **tol(n + 1))


def test_dense_single_array_input(be):
    rng = np.random.default_rng(8)
    x, w, b = randn(rng, (4, 3, 2)), randn(rng, (6, 5)), randn(rng, 5)
    y = be.dense_forward(x, w, b)
    assert_close(y, O.dense_forward([x], w, b), name="y", **tol(6))
    np.testing.assert_array_equal(y, be.dense_forward([x], w, b))
    dy = randn(rng, y.shape)
    dxs, dw, db = be.dense_backward(x, w, y, dy)
    assert len(dxs) == 1 and dxs[0].shape == x.shape
    rdxs, rdw, _ = O.dense_backward([x], w, y, dy)
    assert_close(dxs[0], rdxs[0], name="dxs[0]", **tol(5))
    assert_close(dw, rdw, name="dw", **tol(4))


# ----------------------------------------------------------------------------
# results must not depend on the number of OpenMP threads (cpp/include/deepid2/ops.h)
THREAD_SCRIPT = r"""
import sys, numpy as np
from deepid2_core.backends import get_backend
be = get_backend("cpu")
rng = np.random.default_rng(0)
r = lambda *s: rng.standard_normal(s).astype(np.float32)
out = {"threads": np.array(be.max_threads())}
for name, (n, c, h, w, k, kh, kw, region) in {
        "c1": (3, 3, 31, 29, 20, 4, 4, (28, 26)), "c3": (5, 40, 12, 10, 60, 3, 3, (5, 4)),
        "c4": (5, 60, 5, 4, 80, 2, 2, (1, 1)),
        "c3n40": (40, 8, 12, 10, 12, 3, 3, (5, 4))}.items():   # lsconv_pool's image blocks
    oh, ow = h - kh + 1, w - kw + 1
    ry, rx = -(-oh // region[0]), -(-ow // region[1])
    x, wt, b = r(n, c, h, w), r(ry, rx, k, c, kh, kw), r(ry, rx, k)
    y = be.lsconv_forward(x, wt, b, region)
    dx, dw, db = be.lsconv_backward(x, wt, y, r(*y.shape), region)
    out.update({name + "_y": y, name + "_dx": dx, name + "_dw": dw, name + "_db": db})
    out[name + "_pool"], out[name + "_arg"] = be.maxpool_forward(y, 2)
    yp, am = be.lsconv_pool_forward(x, wt, b, region)
    dx, dw, db = be.lsconv_pool_backward(x, wt, yp, am, r(*yp.shape), region)
    out.update({name + "_pdx": dx, name + "_pdw": dw, name + "_pdb": db})
xs, w, b = [r(9, 60, 5, 4), r(9, 80, 4, 3)], r(2160, 160), r(160)
y = be.dense_forward(xs, w, b)
(dx0, dx1), dw, db = be.dense_backward(xs, w, y, r(9, 160))
out.update(fc_y=y, fc_dx0=dx0, fc_dx1=dx1, fc_dw=dw, fc_db=db)
lg, f = r(9, 500) * 10, r(9, 160)
pa, pb = np.int32([0, 1, 2, 3, 0, 5]), np.int32([1, 2, 3, 4, 8, 0])
jl = be.joint_loss(lg, rng.integers(0, 500, 9).astype(np.int32), f, pa, pb,
                   np.int32([1, -1, 1, -1, -1, 1]), variant="l2", lam=0.1,
                   params=np.float32([20.0]))
out.update(jl_total=np.array(jl.total), jl_dl=jl.dlogits, jl_df=jl.dfeatures, jl_dp=jl.dparams)
np.savez(sys.argv[1], **out)
"""


def test_results_do_not_depend_on_thread_count(be, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import deepid2_core
    # wherever the parent found the package (source tree or site-packages)
    root = Path(deepid2_core.__file__).resolve().parents[1]
    runs = {}
    for t in (1, 2, 3):
        env = dict(os.environ, OMP_NUM_THREADS=str(t),
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        path = tmp_path / f"t{t}.npz"
        proc = subprocess.run([sys.executable, "-c", THREAD_SCRIPT, str(path)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[t] = dict(np.load(path))
        assert int(runs[t]["threads"]) in (1, t)   # 1: built without OpenMP
    for t in (2, 3):
        for k, a in runs[1].items():
            if k != "threads":
                assert a.tobytes() == runs[t][k].tobytes(), f"{k}: 1 vs {t} threads differ"
