"""cpu backend vs the float64 oracle: joint_loss and sgd_update.

Tolerances: losses rtol 1e-4 (+ atol 1e-5); gradient arrays rtol 1e-4 with
atol 1e-5 * max|ref| (each gradient's own scale); `correct` exactly.
"""
import numpy as np
import pytest

import oracle as O
from oracle import assert_close
from loss_cases import (JOINT_CASES, RTOL, SGD_HYPER, SGD_SHAPES, grad_tol, i32, joint_case,
                        make_pairs)

def test_cpu_backend_loads():
    from deepid2_core.backends import get_backend  # must not raise
    assert get_backend("cpu").name == "cpu"


def check_joint(be, logits, labels, feats, a, b, y, variant, lam, params):
    r = be.joint_loss(logits, labels, feats, a, b, y, variant=variant, lam=lam, params=params)
    lam64 = float(np.float32(lam))   # the op takes lam as float32
    ref = O.joint_loss(logits, labels, feats, a, b, y, variant, lam64,
                       None if params is None else params)
    for k in ("total", "ident", "verif"):
        v = getattr(r, k)
        assert isinstance(v, float) and np.isfinite(v), k
        assert abs(v - ref[k]) <= 1e-5 + RTOL * abs(ref[k]), f"{k}: {v!r} != {ref[k]!r}"
    assert isinstance(r.correct, int) and r.correct == ref["correct"]
    for k in ("dlogits", "dfeatures", "dparams"):
        got = getattr(r, k)
        assert got.dtype == np.float32, k
        assert_close(got, ref[k], name=k, **grad_tol(ref[k]))
    return r, ref


@pytest.mark.parametrize("variant", O.VARIANTS)
@pytest.mark.parametrize("case", JOINT_CASES)
def test_joint_loss(be, case, variant):
    logits, labels, feats, a, b, y, params, lam = joint_case(case, variant)
    n = len(logits)
    r, ref = check_joint(be, logits, labels, feats, a, b, y, variant, lam, params)
    if variant in ("l2", "l1") and n > 1:   # both hinge branches were exercised
        assert ref["dparams"][0] > 0
    r2 = be.joint_loss(logits, labels, feats, a, b, y, variant=variant, lam=lam, params=params)
    assert (r2.total, r2.ident, r2.verif, r2.correct) == (r.total, r.ident, r.verif, r.correct)
    for k in ("dlogits", "dfeatures", "dparams"):   # deterministic
        assert getattr(r, k).tobytes() == getattr(r2, k).tobytes(), k


@pytest.mark.parametrize("variant", O.VARIANTS)
def test_joint_loss_no_pairs_and_default_params(be, variant):
    rng = np.random.default_rng(21)
    logits, labels = rng.standard_normal((5, 7)).astype(np.float32), i32(rng.integers(0, 7, 5))
    feats = rng.standard_normal((5, 3)).astype(np.float32)
    e = i32([])
    r, _ = check_joint(be, logits, labels, feats, e, e, e, variant, 0.3, None)
    assert r.verif == 0.0 and r.total == pytest.approx(r.ident, rel=1e-12)
    assert not r.dfeatures.any() and not r.dparams.any()
    assert r.dparams.shape == ((2,) if variant == "cosine" else (1,))
    # default params ([1] / [1, 0]) with pairs
    a, b, y = i32([0, 1, 2, 0]), i32([1, 2, 3, 4]), i32([1, -1, -1, 1])
    check_joint(be, logits, labels, feats * 0.3, a, b, y, variant, 0.3, None)


@pytest.mark.parametrize("variant", ["l2", "l1"])
def test_joint_loss_zero_distance_different_pair(be, variant):
    rng = np.random.default_rng(22)
    logits, labels = rng.standard_normal((4, 3)).astype(np.float32), i32([0, 1, 2, 0])
    feats = rng.standard_normal((4, 6)).astype(np.float32)
    feats[3] = feats[2]
    a, b, y = i32([1, 2]), i32([1, 3]), i32([-1, -1])     # same index; identical rows
    m, lam = 2.5, 0.5
    r = be.joint_loss(logits, labels, feats, a, b, y, variant=variant, lam=lam,
                      params=np.array([m], np.float32))
    assert np.isfinite([r.total, r.ident, r.verif]).all()
    assert np.isfinite(r.dfeatures).all() and not r.dfeatures.any()
    assert r.verif == pytest.approx(0.5 * m * m, rel=1e-6)
    assert r.dparams[0] == pytest.approx(lam * m, rel=1e-6)   # mean of (m - 0)
    check_joint(be, logits, labels, feats, a, b, y, variant, lam, np.array([m], np.float32))


def test_joint_loss_l2_pos_and_lam_zero(be):
    rng = np.random.default_rng(23)
    logits, labels = rng.standard_normal((4, 3)).astype(np.float32), i32([2, 1, 0, 0])
    feats = rng.standard_normal((4, 5)).astype(np.float32)
    a, b = i32([0, 1, 3]), i32([1, 2, 2])
    r = be.joint_loss(logits, labels, feats, a, b, i32([-1, -1, -1]), variant="l2_pos",
                      lam=0.7, params=np.array([100.0], np.float32))
    assert r.verif == 0.0 and not r.dfeatures.any() and not r.dparams.any()
    # l2_pos: different pairs still count in P
    r = be.joint_loss(logits, labels, feats, a, b, i32([1, -1, -1]), variant="l2_pos", lam=0.7)
    d2 = float(((feats[0].astype(np.float64) - feats[1]) ** 2).sum())
    assert r.verif == pytest.approx(0.5 * d2 / 3, rel=1e-5)
    for variant in O.VARIANTS:   # lam = 0: no verification gradient
        r = be.joint_loss(logits, labels, feats, a, b, i32([1, -1, 1]), variant=variant, lam=0.0)
        assert r.total == pytest.approx(r.ident, rel=1e-12) and r.verif > 0
        assert not r.dfeatures.any() and not r.dparams.any()


def test_joint_loss_correct_ties_and_extremes(be):
    logits = np.array([[2, 5, 5, 0], [5, 5, 1, 0], [-3, -3, -3, -3], [0, 0, 0, 9]], np.float32)
    e = i32([])
    f = np.ones((4, 2), np.float32)
    for labels, correct in [([1, 0, 0, 3], 4), ([2, 1, 1, 3], 1), ([1, 0, 3, 0], 2)]:
        r = be.joint_loss(logits, i32(labels), f, e, e, e)
        assert r.correct == correct, labels
    # huge logit gaps: no overflow, loss ~ the gap
    big = np.array([[1e4, -1e4, 0.0], [-5e3, 5e3, 0.0]], np.float32)
    r, _ = check_joint(be, big, i32([1, 1]), f[:2], e, e, e, "l2", 0.05, None)
    assert r.ident == pytest.approx(1e4, rel=1e-4)
    assert np.isfinite(r.dlogits).all()


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("lr,momentum,wd", SGD_HYPER)
@pytest.mark.parametrize("shape", SGD_SHAPES)
def test_sgd_update(be, shape, lr, momentum, wd):
    rng = np.random.default_rng(24)
    p = rng.standard_normal(shape).astype(np.float32)
    v = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    p_twin, v_twin = p.copy(), v.copy()
    ptr_p, ptr_v = p.ctypes.data, v.ctypes.data
    for step in range(4):
        g = rng.standard_normal(shape).astype(np.float32)
        g_saved = g.copy()
        rp, rv = O.sgd_update(p, g, v, lr, momentum, wd)   # from the current state
        out = be.sgd_update(p, g, v, lr, momentum=momentum, weight_decay=wd)
        assert out is None
        assert p.ctypes.data == ptr_p and v.ctypes.data == ptr_v
        np.testing.assert_array_equal(g, g_saved)
        scale = float(np.abs(rv).max()) + lr * float(np.abs(g).max())
        assert_close(v, rv, 1e-6, 1e-7 * scale, f"velocity after step {step}")
        assert_close(p, rp, 1e-6, 1e-7 * (scale + float(np.abs(rp).max())), f"param after step {step}")
        be.sgd_update(p_twin, g, v_twin, lr, momentum=momentum, weight_decay=wd)
        assert p_twin.tobytes() == p.tobytes() and v_twin.tobytes() == v.tobytes()


def test_sgd_update_many_is_sgd_update_on_each_tensor(be):
    """The loop's one call for every parameter: the bits of sgd_update on each
    tensor with its own hyperparameters, and one clear error on lengths."""
    rng = np.random.default_rng(31)
    shapes = [tuple(int(d) for d in rng.integers(1, 9, size=rng.integers(1, 4))) for _ in range(5)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    vs = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    lrs = [float(x) for x in rng.uniform(0.001, 0.1, len(shapes))]
    wds = [float(x) for x in rng.uniform(0.0, 0.01, len(shapes))]
    p1, v1 = [p.copy() for p in ps], [v.copy() for v in vs]
    be.sgd_update_many(ps, gs, vs, lrs, 0.9, wds)
    for p, g, v, lr, wd in zip(p1, gs, v1, lrs, wds):
        be.sgd_update(p, g, v, lr, momentum=0.9, weight_decay=wd)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ps + vs, p1 + v1))
    with pytest.raises(ValueError, match="one length"):
        be.sgd_update_many(ps, gs[:-1], vs, 0.01)
    with pytest.raises(ValueError, match="lr: 2 values for 5 tensors"):
        be.sgd_update_many(ps, gs, vs, [0.1, 0.2])


# ----------------------------------------------------------------------------
# regression_loss (the landmark nets)

@pytest.mark.parametrize("n,d", [(1, 1), (3, 10), (128, 10), (700, 37)])
def test_regression_loss_matches_the_oracle(be, n, d):
    rng = np.random.default_rng(n * 100 + d)
    pred = rng.standard_normal((n, d)).astype(np.float32)
    target = rng.standard_normal((n, d)).astype(np.float32)
    loss, dpred = be.regression_loss(pred, target)
    rloss, rd = O.regression_loss(pred, target)
    assert abs(loss - rloss) <= 1e-6 * abs(rloss)
    assert_close(dpred, rd, rtol=1e-6, atol=1e-8, name="dpred")


def test_regression_loss_oracle_by_finite_differences():
    rng = np.random.default_rng(4)
    p, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    _, g = O.regression_loss(p, t)
    eps = 1e-6
    for idx in [(0, 0), (2, 3), (4, 1)]:
        q = p.copy(); q[idx] += eps
        r = p.copy(); r[idx] -= eps
        fd = (O.regression_loss(q, t)[0] - O.regression_loss(r, t)[0]) / (2 * eps)
        assert abs(fd - g[idx]) <= 1e-7


def test_regression_loss_errors(be):
    good = np.ones((4, 10), np.float32)
    with pytest.raises(TypeError, match="pred"):
        be.regression_loss(good.astype(np.float64), good)
    with pytest.raises(ValueError, match="target"):
        be.regression_loss(good, np.ones((4, 9), np.float32))
    with pytest.raises(ValueError, match="pred"):
        be.regression_loss(np.ones((4, 10, 1), np.float32), good)
