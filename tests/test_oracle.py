"""Finite-difference checks of the oracle's analytic backward (float64).

Every check is of a scalar objective L = sum(R * output) (R random), so the
analytic gradient is the oracle backward with dy = R. Inputs are chosen away
from kinks (ReLU at 0, hinge at m = d, |.| at 0, maxpool ties) by a margin
much larger than the finite-difference step.
"""
import numpy as np
import pytest

import oracle as O

EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def numgrad(f, a):
    """Central differences of the scalar f() w.r.t. every element of a (in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + EPS
        fp = f()
        a[i] = old - EPS
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * EPS)
    return g


def check(f, a, analytic, name):
    O.assert_close(analytic, numgrad(f, a), RTOL, ATOL, name)


# ----------------------------------------------------------------------------
LSCONV_CASES = [  # N, C, H, W, K, kh, kw, region
    (2, 2, 5, 6, 3, 2, 3, (2, 2)),     # OH=4, OW=4
    (1, 1, 4, 4, 2, 1, 1, (1, 1)),     # locally connected, 1x1 kernel
    (2, 3, 6, 5, 2, 3, 2, (3, 4)),     # OH=4, OW=4: regions do not divide
    (1, 2, 5, 5, 2, 3, 3, (3, 3)),     # ordinary conv (region = (OH, OW))
]


def _lsconv_inputs(rng, case, relu):
    n, c, h, w, k, kh, kw, region = case
    _, _, RY, RX = O.lsconv_grid(h, w, kh, kw, region)
    for _ in range(100):  # draw until no pre-activation is near the ReLU kink
        x = rng.standard_normal((n, c, h, w))
        wt = rng.standard_normal((RY, RX, k, c, kh, kw))
        b = rng.standard_normal((RY, RX, k))
        pre = O.lsconv_forward(x, wt, b, region, relu=False)
        if not relu or np.abs(pre).min() > 1e-3:
            return x, wt, b
    raise AssertionError("could not draw inputs away from the ReLU kink")


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", LSCONV_CASES)
def test_lsconv_gradcheck(case, relu):
    rng = np.random.default_rng(1)
    region = case[7]
    x, w, b = _lsconv_inputs(rng, case, relu)
    y = O.lsconv_forward(x, w, b, region, relu)
    if relu:
        assert (y == 0).any() and (y > 0).any()   # the mask is exercised
    R = rng.standard_normal(y.shape)
    dx, dw, db = O.lsconv_backward(x, w, y, R, region, relu)
    f = lambda: np.sum(R * O.lsconv_forward(x, w, b, region, relu))
    check(f, x, dx, "dx")
    check(f, w, dw, "dw")
    check(f, b, db, "db")


def test_lsconv_matches_naive_loops():
    """The oracle forward against seven nested scalar loops."""
    rng = np.random.default_rng(2)
    n, c, h, wd, k, kh, kw, (rh, rw) = 2, 2, 5, 6, 2, 2, 3, (2, 3)
    _, _, RY, RX = O.lsconv_grid(h, wd, kh, kw, (rh, rw))
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((RY, RX, k, c, kh, kw))
    b = rng.standard_normal((RY, RX, k))
    y = O.lsconv_forward(x, w, b, (rh, rw), relu=False)
    for ni in range(n):
        for ki in range(k):
            for oy in range(h - kh + 1):
                for ox in range(wd - kw + 1):
                    s = b[oy // rh, ox // rw, ki]
                    for ci in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                s += w[oy // rh, ox // rw, ki, ci, i, j] * x[ni, ci, oy + i, ox + j]
                    assert abs(y[ni, ki, oy, ox] - s) < 1e-12


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,s", [((2, 3, 4, 6), 2), ((1, 2, 7, 5), 2), ((2, 1, 6, 6), 3)])
def test_maxpool_gradcheck(shape, s):
    rng = np.random.default_rng(3)
    size = np.prod(shape)   # distinct values 0.1 apart (no ties), mostly < 0
    x = ((rng.permutation(size) - 0.9 * size) * 0.1).reshape(shape)
    x += rng.uniform(-0.01, 0.01, shape)
    y, arg = O.maxpool_forward(x, s)
    assert (y < 0).any()
    R = rng.standard_normal(y.shape)
    dx = O.maxpool_backward(R, arg, shape[2:])
    check(lambda: np.sum(R * O.maxpool_forward(x, s)[0]), x, dx, "dx")


def test_maxpool_ties_and_floor():
    x = np.array([[[[1, 3, 3, 0, 9],
                    [3, 2, 1, 1, 9],
                    [5, 5, 7, 7, 9],
                    [5, 5, 7, 7, 9],
                    [9, 9, 9, 9, 9]]]], dtype=np.float64)
    y, arg = O.maxpool_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [5, 7]])
    # first maximum in row-major window order: (0,1) not (1,0); (0,2); (2,0); (2,2)
    np.testing.assert_array_equal(arg[0, 0], [[1, 2], [10, 12]])
    dx = O.maxpool_backward(np.array([[[[1., 2.], [3., 4.]]]]), arg, (5, 5))
    expect = np.zeros((5, 5))
    expect[0, 1], expect[0, 2], expect[2, 0], expect[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expect)


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shapes,m", [([(3, 4)], 5), ([(2, 3), (2, 2, 2), (2, 1)], 4)])
def test_dense_gradcheck(shapes, m, relu):
    rng = np.random.default_rng(4)
    dsum = sum(int(np.prod(s[1:])) for s in shapes)
    for _ in range(100):
        xs = [rng.standard_normal(s) for s in shapes]
        w = rng.standard_normal((dsum, m))
        b = rng.standard_normal(m)
        if np.abs(O.dense_forward(xs, w, b, relu=False)).min() > 1e-3:
            break
    y = O.dense_forward(xs, w, b, relu)
    R = rng.standard_normal(y.shape)
    dxs, dw, db = O.dense_backward(xs, w, y, R, relu)
    f = lambda: np.sum(R * O.dense_forward(xs, w, b, relu))
    assert len(dxs) == len(xs)
    for i, (x, dx) in enumerate(zip(xs, dxs)):
        assert dx.shape == x.shape
        check(f, x, dx, f"dxs[{i}]")
    check(f, w, dw, "dw")
    check(f, b, db, "db")


# ----------------------------------------------------------------------------
def _pairs(rng, n, P, variant, allow_self=False):
    a = rng.integers(0, n, P)
    b = rng.integers(0, n, P)
    y = rng.choice([1, -1], P)
    if not allow_self:   # a == b only for same pairs (d = 0 there is smooth)
        bad = (a == b) & (y == -1)
        b[bad] = (a[bad] + 1) % n
    return a, b, y


def _distances(f, a, b, variant):
    diff = f[a] - f[b]
    return np.abs(diff).sum(1) if variant == "l1" else np.sqrt((diff ** 2).sum(1))


def _margin_between(ds):
    """A margin halfway between two neighbouring distances near the median."""
    ds = np.unique(ds)   # sorted, repeated pairs collapsed
    k = max(len(ds) // 2 - 1, 0)
    return (ds[k] + ds[k + 1]) / 2 if len(ds) > 1 else ds[0] * 1.5


@pytest.mark.parametrize("variant", O.VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_joint_loss_gradcheck(variant, seed):
    rng = np.random.default_rng(10 + seed)
    n, nc, D, P = 6, 5, 4, 12                    # P > N: rows repeat
    logits = rng.standard_normal((n, nc)) * 3
    labels = rng.integers(0, nc, n)
    feats = rng.standard_normal((n, D))
    a, b, y = _pairs(rng, n, P, variant, allow_self=(variant == "cosine"))
    if variant == "l1":  # keep every |fa - fb| component away from 0
        diff = feats[a] - feats[b]
        assert np.all((np.abs(diff) > 1e-3) | (a == b)[:, None])
    if variant == "cosine":
        params = np.array([rng.uniform(1, 4), rng.uniform(-1, 1)])
    else:
        ds = _distances(feats, a, b, variant)[y == -1]
        params = np.array([_margin_between(ds)])
        assert np.abs(ds - params[0]).min() > 1e-4   # away from the hinge kink
        assert (ds < params[0]).any() and (ds > params[0]).any()
    lam = rng.uniform(0.1, 2.0)
    r = O.joint_loss(logits, labels, feats, a, b, y, variant, lam, params)
    f = lambda: O.joint_loss_value(logits, labels, feats, a, b, y, variant, lam, params)
    assert r["total"] == pytest.approx(f(), rel=1e-14)
    assert r["total"] == pytest.approx(r["ident"] + lam * r["verif"], rel=1e-14)
    check(f, logits, r["dlogits"], "dlogits")
    check(f, feats, r["dfeatures"], "dfeatures")
    check(f, params, r["dparams"], "dparams (d/dm or d/dw, d/db)")


def test_joint_loss_special_cases():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 4))
    labels = np.array([0, 3, 1])
    feats = rng.standard_normal((3, 5))
    feats[2] = feats[1]
    e = np.array([], dtype=np.int64)
    # P = 0: verif 0, no verification gradient
    r = O.joint_loss(logits, labels, feats, e, e, e, "l2", 0.5, [2.0])
    assert r["verif"] == 0 and not r["dfeatures"].any() and not r["dparams"].any()
    # d = 0 different pairs (same index, identical rows): grad 0, dm = lam*m/P
    for variant in ("l2", "l1"):
        r = O.joint_loss(logits, labels, feats, [0, 1], [0, 2], [-1, -1], variant, 0.5, [2.0])
        assert r["verif"] == pytest.approx(0.5 * 2.0 ** 2)
        assert not r["dfeatures"].any()
        assert r["dparams"][0] == pytest.approx(0.5 * 2.0)
    # l2_pos: different pairs contribute 0 but still count in P
    r = O.joint_loss(logits, labels, feats, [0, 0], [1, 2], [1, -1], "l2_pos", 1.0, [9.0])
    d2 = ((feats[0] - feats[1]) ** 2).sum()
    assert r["verif"] == pytest.approx(0.5 * d2 / 2)
    # correct count: ties go to the first maximum
    tied = np.array([[2.0, 5.0, 5.0], [5.0, 5.0, 1.0]])
    assert O.ident_value(tied, [1, 1])[1] == 1
    assert O.ident_value(tied, [2, 0])[1] == 1


# ----------------------------------------------------------------------------
def test_sgd_update_formula():
    rng = np.random.default_rng(6)
    p, g, v = (rng.standard_normal(7) for _ in range(3))
    p2, v2 = O.sgd_update(p, g, v, lr=0.1, momentum=0.9, weight_decay=0.01)
    for i in range(7):
        vi = 0.9 * v[i] - 0.1 * (g[i] + 0.01 * p[i])
        assert v2[i] == pytest.approx(vi, rel=1e-15)
        assert p2[i] == pytest.approx(p[i] + vi, rel=1e-15)
