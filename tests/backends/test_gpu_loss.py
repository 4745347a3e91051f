"""gpu backend vs the float64 oracle and the cpu backend: joint_loss,
regression_loss, sgd_update, and assemble_batch vs the cpu backend's.

Runs on the GPU ("cuda") and in the kernels' CPU emulator ("emu"); see
tests/gpu_support.py. Tolerances are the cpu tests' (tests/backends/test_cpu_loss.py).
"""
import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, bits, dev, gpu_fixture, host, restore
from oracle import assert_close
from loss_cases import (JOINT_CASES, RTOL, SGD_HYPER, SGD_SHAPES, grad_tol, i32, joint_case,
                        make_pairs)


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    yield g
    restore(g, saved)


def gpu_joint(gpu, logits, labels, feats, a, b, y, variant, lam, params):
    p = None if params is None else dev(gpu, params)
    return gpu.be.joint_loss(*dev(gpu, [logits, labels, feats, a, b, y]), variant=variant,
                             lam=lam, params=p)


def check_joint(gpu, be, logits, labels, feats, a, b, y, variant, lam, params):
    r = gpu_joint(gpu, logits, labels, feats, a, b, y, variant, lam, params)
    ref = O.joint_loss(logits, labels, feats, a, b, y, variant, float(np.float32(lam)), params)
    for k in ("total", "ident", "verif"):
        v = getattr(r, k)
        assert isinstance(v, float) and np.isfinite(v), k
        assert abs(v - ref[k]) <= 1e-5 + RTOL * abs(ref[k]), f"{k}: {v!r} != {ref[k]!r}"
    assert isinstance(r.correct, int) and r.correct == ref["correct"]
    c = be.joint_loss(logits, labels, feats, a, b, y, variant=variant, lam=lam, params=params)
    assert r.correct == c.correct
    for k in ("dlogits", "dfeatures", "dparams"):
        got = getattr(r, k)
        assert isinstance(got, gpu.cp.ndarray) and got.dtype == np.float32, k
        assert_close(host(got), ref[k], name=k, **grad_tol(ref[k]))
        t = grad_tol(ref[k])
        assert_close(host(got), getattr(c, k), name=f"{k} vs cpu", rtol=2 * t["rtol"],
                     atol=2 * t["atol"])
    return r, ref


@pytest.mark.parametrize("variant", O.VARIANTS)
@pytest.mark.parametrize("case", JOINT_CASES)
def test_joint_loss(gpu, be, case, variant):
    logits, labels, feats, a, b, y, params, lam = joint_case(case, variant)
    n = len(logits)
    r, ref = check_joint(gpu, be, logits, labels, feats, a, b, y, variant, lam, params)
    if variant in ("l2", "l1") and n > 1:
        assert ref["dparams"][0] > 0
    r2 = gpu_joint(gpu, logits, labels, feats, a, b, y, variant, lam, params)
    assert (r2.total, r2.ident, r2.verif, r2.correct) == (r.total, r.ident, r.verif, r.correct)
    for k in ("dlogits", "dfeatures", "dparams"):   # deterministic
        assert bits(getattr(r, k)) == bits(getattr(r2, k)), k


@pytest.mark.parametrize("variant", O.VARIANTS)
def test_joint_loss_no_pairs_and_default_params(gpu, be, variant):
    rng = np.random.default_rng(21)
    logits, labels = rng.standard_normal((5, 7)).astype(np.float32), i32(rng.integers(0, 7, 5))
    feats = rng.standard_normal((5, 3)).astype(np.float32)
    e = i32([])
    r, _ = check_joint(gpu, be, logits, labels, feats, e, e, e, variant, 0.3, None)
    assert r.verif == 0.0 and r.total == pytest.approx(r.ident, rel=1e-12)
    assert not host(r.dfeatures).any() and not host(r.dparams).any()
    assert r.dparams.shape == ((2,) if variant == "cosine" else (1,))
    a, b, y = i32([0, 1, 2, 0]), i32([1, 2, 3, 4]), i32([1, -1, -1, 1])
    check_joint(gpu, be, logits, labels, feats * 0.3, a, b, y, variant, 0.3, None)


@pytest.mark.parametrize("variant", ["l2", "l1"])
def test_joint_loss_zero_distance_different_pair(gpu, be, variant):
    rng = np.random.default_rng(22)
    logits, labels = rng.standard_normal((4, 3)).astype(np.float32), i32([0, 1, 2, 0])
    feats = rng.standard_normal((4, 6)).astype(np.float32)
    feats[3] = feats[2]
    a, b, y = i32([1, 2]), i32([1, 3]), i32([-1, -1])
    m, lam = 2.5, 0.5
    params = np.array([m], np.float32)
    r = gpu_joint(gpu, logits, labels, feats, a, b, y, variant, lam, params)
    df = host(r.dfeatures)
    assert np.isfinite(df).all() and not df.any()
    assert r.verif == pytest.approx(0.5 * m * m, rel=1e-6)
    assert host(r.dparams)[0] == pytest.approx(lam * m, rel=1e-6)
    check_joint(gpu, be, logits, labels, feats, a, b, y, variant, lam, params)


def test_joint_loss_l2_pos_and_lam_zero(gpu):
    rng = np.random.default_rng(23)
    logits, labels = rng.standard_normal((4, 3)).astype(np.float32), i32([2, 1, 0, 0])
    feats = rng.standard_normal((4, 5)).astype(np.float32)
    a, b = i32([0, 1, 3]), i32([1, 2, 2])
    r = gpu_joint(gpu, logits, labels, feats, a, b, i32([-1, -1, -1]), "l2_pos", 0.7,
                  np.array([100.0], np.float32))
    assert r.verif == 0.0 and not host(r.dfeatures).any() and not host(r.dparams).any()
    r = gpu_joint(gpu, logits, labels, feats, a, b, i32([1, -1, -1]), "l2_pos", 0.7, None)
    d2 = float(((feats[0].astype(np.float64) - feats[1]) ** 2).sum())
    assert r.verif == pytest.approx(0.5 * d2 / 3, rel=1e-5)
    for variant in O.VARIANTS:
        r = gpu_joint(gpu, logits, labels, feats, a, b, i32([1, -1, 1]), variant, 0.0, None)
        assert r.total == pytest.approx(r.ident, rel=1e-12) and r.verif > 0
        assert not host(r.dfeatures).any() and not host(r.dparams).any()


def test_joint_loss_correct_ties_and_extremes(gpu, be):
    logits = np.array([[2, 5, 5, 0], [5, 5, 1, 0], [-3, -3, -3, -3], [0, 0, 0, 9]], np.float32)
    e = i32([])
    f = np.ones((4, 2), np.float32)
    for labels, correct in [([1, 0, 0, 3], 4), ([2, 1, 1, 3], 1), ([1, 0, 3, 0], 2)]:
        r = gpu_joint(gpu, logits, i32(labels), f, e, e, e, "l2", 0.05, None)
        assert r.correct == correct, labels
    # ties beyond the first 256 columns (the kernel's per-thread stride)
    wide = np.zeros((3, 700), np.float32)
    wide[0, [3, 300, 650]] = 7.0
    wide[1, [600, 299]] = 7.0
    wide[2, :] = -1.0
    for labels, correct in [([3, 299, 0], 3), ([300, 600, 1], 0)]:
        r = gpu_joint(gpu, wide, i32(labels), f[:3], e, e, e, "l2", 0.05, None)
        assert r.correct == correct, labels
    big = np.array([[1e4, -1e4, 0.0], [-5e3, 5e3, 0.0]], np.float32)
    r, _ = check_joint(gpu, be, big, i32([1, 1]), f[:2], e, e, e, "l2", 0.05, None)
    assert r.ident == pytest.approx(1e4, rel=1e-4)
    assert np.isfinite(host(r.dlogits)).all()


def test_joint_loss_debug_poison(gpu, be):
    gpu.be.set_debug(True)
    rng = np.random.default_rng(24)
    n, nc, D, P = 9, 300, 17, 11
    logits = (rng.standard_normal((n, nc)) * 3).astype(np.float32)
    labels = i32(rng.integers(0, nc, n))
    feats = rng.standard_normal((n, D)).astype(np.float32)
    for variant in O.VARIANTS:
        a, b, y, params = make_pairs(rng, feats, P, variant)
        check_joint(gpu, be, logits, labels, feats, a, b, y, variant, 0.2, params)


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (128, 10), (7, 300)])
def test_regression_loss(gpu, be, shape):
    gpu.be.set_debug(True)
    rng = np.random.default_rng(30)
    pred, target = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    loss, dpred = gpu.be.regression_loss(dev(gpu, pred), dev(gpu, target))
    rl, rd = O.regression_loss(pred, target)
    assert isinstance(loss, float) and abs(loss - rl) <= 1e-6 + 1e-5 * abs(rl)
    assert dpred.dtype == np.float32
    assert_close(host(dpred), rd, name="dpred", rtol=1e-6, atol=1e-7)
    cl, cd = be.regression_loss(pred, target)
    np.testing.assert_array_equal(host(dpred), cd)   # same float expression
    assert loss == pytest.approx(cl, rel=1e-12, abs=1e-12)
    l2, d2 = gpu.be.regression_loss(dev(gpu, pred), dev(gpu, target))
    assert l2 == loss and bits(d2) == bits(dpred)


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("lr,momentum,wd", SGD_HYPER)
@pytest.mark.parametrize("shape", SGD_SHAPES)
def test_sgd_update(gpu, be, shape, lr, momentum, wd):
    """As the cpu test (tests/backends/test_cpu_loss.py), plus the cpu backend as a twin."""
    rng = np.random.default_rng(24)
    p = rng.standard_normal(shape).astype(np.float32)
    v = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    gp, gv = dev(gpu, p), dev(gpu, v)
    cp_, cv = p.copy(), v.copy()
    for step in range(3):
        g = rng.standard_normal(shape).astype(np.float32)
        gg = dev(gpu, g)
        rp, rv = O.sgd_update(host(gp), g, host(gv), lr, momentum, wd)
        assert gpu.be.sgd_update(gp, gg, gv, lr, momentum=momentum, weight_decay=wd) is None
        np.testing.assert_array_equal(host(gg), g)   # grad untouched
        scale = float(np.abs(rv).max()) + lr * float(np.abs(g).max())
        assert_close(host(gv), rv, 1e-6, 1e-7 * scale, f"velocity after step {step}")
        pscale = scale + float(np.abs(rp).max())
        assert_close(host(gp), rp, 1e-6, 1e-7 * pscale, f"param after step {step}")
        be.sgd_update(cp_, g, cv, lr, momentum=momentum, weight_decay=wd)
        assert_close(host(gp), cp_, 2e-6, 2e-7 * pscale, f"param vs cpu after step {step}")


# ----------------------------------------------------------------------------
# batch assembly: bit-identical to the cpu backend's assemble_batch
@pytest.mark.parametrize("channels", [3, 1])
def test_assemble_batch(gpu, channels):
    from deepid2_core.backends.cpu import assemble_batch
    gpu.be.set_debug(True)
    rng = np.random.default_rng(40)
    patches = rng.integers(0, 256, (11, 55, 47, channels), dtype=np.uint8)
    idx = rng.integers(0, 11, 9)
    flip = rng.random(9) < 0.5
    want = assemble_batch(patches, idx, flip)
    gp = dev(gpu, patches)
    for indices in (idx, dev(gpu, idx), idx.astype(np.int32)):
        got = gpu.be.assemble_batch(gp, indices, flip)
        assert got.dtype == np.float32 and got.shape == (9, channels, 55, 47)
        assert bits(got) == want.tobytes()
    out = gpu.cp.empty((9, channels, 55, 47), dtype=np.float32)
    got = gpu.be.assemble_batch(gp, idx, dev(gpu, flip), out=out, mean=100.0, scale=0.01)
    assert got is out
    assert bits(out) == assemble_batch(patches, idx, flip, mean=100.0, scale=0.01).tobytes()
    assert bits(gpu.be.assemble_batch(gp, idx)) == assemble_batch(patches, idx).tobytes()


def test_assemble_batch_errors(gpu):
    rng = np.random.default_rng(41)
    patches = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    gp = dev(gpu, patches)
    for bad in ([0, 4], [-1, 2]):
        with pytest.raises(ValueError, match="indices"):
            gpu.be.assemble_batch(gp, np.array(bad))
        with pytest.raises(ValueError, match="indices"):
            gpu.be.assemble_batch(gp, dev(gpu, np.array(bad)))
    with pytest.raises(ValueError, match="patches"):
        gpu.be.assemble_batch(patches, [0])   # numpy: not on the device
    with pytest.raises(ValueError, match="flip"):
        gpu.be.assemble_batch(gp, [0, 1], flip=[True])
    with pytest.raises(ValueError, match="out"):
        gpu.be.assemble_batch(gp, [0, 1], out=gpu.cp.empty((2, 3, 5, 5), dtype=np.float32))
