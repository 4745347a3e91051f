"""Float64 numpy oracle for the deepid2 ops (see docs/ops.md).

Written plainly, for obviousness rather than speed: explicit loops over
output positions with einsum inside. Every backward is an analytic formula
written independently of its forward, so that finite differences
(tests/test_oracle.py) can check it.

All functions take arrays of any float dtype, compute in float64 and return
fresh float64 arrays (argmax: int64). Nothing is modified in place.
"""
import numpy as np

VARIANTS = ("l2", "l2_pos", "l1", "cosine")
COS_EPS = 1e-8
DEFAULT_PARAMS = {"l2": [1.0], "l2_pos": [1.0], "l1": [1.0], "cosine": [1.0, 0.0]}


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------------------
# lsconv: locally-shared convolution, stride 1, no padding
def lsconv_grid(h, w, kh, kw, region):
    """(OH, OW, RY, RX) for an H x W input, kh x kw kernel, rh x rw regions."""
    oh, ow = h - kh + 1, w - kw + 1
    rh, rw = region
    return oh, ow, -(-oh // rh), -(-ow // rw)


def lsconv_forward(x, w, b, region, relu=True):
    x, w, b = f64(x), f64(w), f64(b)
    n, c, h, wd = x.shape
    ry_, rx_, k, c2, kh, kw = w.shape
    assert c2 == c and b.shape == (ry_, rx_, k)
    oh, ow, RY, RX = lsconv_grid(h, wd, kh, kw, region)
    assert (RY, RX) == (ry_, rx_)
    rh, rw = region
    y = np.zeros((n, k, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            ry, rx = oy // rh, ox // rw
            patch = x[:, :, oy:oy + kh, ox:ox + kw]              # N C kh kw
            y[:, :, oy, ox] = np.einsum("ncij,kcij->nk", patch, w[ry, rx]) + b[ry, rx]
    return np.maximum(y, 0.0) if relu else y


def lsconv_backward(x, w, y, dy, region, relu=True):
    """(dx, dw, db); dy is masked where the saved output y <= 0 when relu."""
    x, w, y, dy = f64(x), f64(w), f64(y), f64(dy)
    n, c, h, wd = x.shape
    kh, kw = w.shape[4], w.shape[5]
    rh, rw = region
    g = np.where(y > 0, dy, 0.0) if relu else dy
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    db = np.zeros(w.shape[:3])
    for oy in range(y.shape[2]):
        for ox in range(y.shape[3]):
            ry, rx = oy // rh, ox // rw
            gy = g[:, :, oy, ox]                                  # N K
            patch = x[:, :, oy:oy + kh, ox:ox + kw]
            dw[ry, rx] += np.einsum("nk,ncij->kcij", gy, patch)
            db[ry, rx] += gy.sum(axis=0)
            dx[:, :, oy:oy + kh, ox:ox + kw] += np.einsum("nk,kcij->ncij", gy, w[ry, rx])
    return dx, dw, db


# ----------------------------------------------------------------------------
# maxpool: s x s windows, stride s, floor
def maxpool_forward(x, s=2):
    x = f64(x)
    n, c, h, w = x.shape
    oh, ow = h // s, w // s
    y = np.zeros((n, c, oh, ow))
    arg = np.zeros((n, c, oh, ow), dtype=np.int64)
    for oy in range(oh):
        for ox in range(ow):
            best = np.full((n, c), -np.inf)
            best_i = np.full((n, c), -1, dtype=np.int64)
            for i in range(s):               # row-major window order;
                for j in range(s):           # strict ">" keeps the first max
                    iy, ix = oy * s + i, ox * s + j
                    v = x[:, :, iy, ix]
                    better = v > best
                    best = np.where(better, v, best)
                    best_i = np.where(better, iy * w + ix, best_i)
            y[:, :, oy, ox] = best
            arg[:, :, oy, ox] = best_i
    return y, arg


def maxpool_backward(dy, argmax, in_hw):
    dy = f64(dy)
    n, c, oh, ow = dy.shape
    h, w = in_hw
    dx = np.zeros((n, c, h * w))
    for ni in range(n):
        for ci in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    dx[ni, ci, argmax[ni, ci, oy, ox]] += dy[ni, ci, oy, ox]
    return dx.reshape(n, c, h, w)


# ----------------------------------------------------------------------------
# dense over a concatenation of inputs
def _as_list(xs):
    return list(xs) if isinstance(xs, (list, tuple)) else [xs]


def dense_forward(xs, w, b, relu=True):
    xs = [f64(a) for a in _as_list(xs)]
    X = np.concatenate([a.reshape(a.shape[0], -1) for a in xs], axis=1)
    y = np.einsum("nd,dm->nm", X, f64(w)) + f64(b)
    return np.maximum(y, 0.0) if relu else y


def dense_backward(xs, w, y, dy, relu=True):
    """(list of dx in the inputs' shapes, dw, db)."""
    xs = [f64(a) for a in _as_list(xs)]
    w, y, dy = f64(w), f64(y), f64(dy)
    g = np.where(y > 0, dy, 0.0) if relu else dy
    X = np.concatenate([a.reshape(a.shape[0], -1) for a in xs], axis=1)
    dX = np.einsum("nm,dm->nd", g, w)
    dxs, start = [], 0
    for a in xs:
        d = a[0].size
        dxs.append(dX[:, start:start + d].reshape(a.shape))
        start += d
    return dxs, np.einsum("nd,nm->dm", X, g), g.sum(axis=0)


# ----------------------------------------------------------------------------
# joint identification-verification loss
def _pair_value(fa, fb, same, variant, params):
    """Verification loss of one pair (forward only)."""
    if variant == "cosine":
        w, b = params
        cos = fa @ fb / np.sqrt((fa @ fa + COS_EPS) * (fb @ fb + COS_EPS))
        s = 1.0 / (1.0 + np.exp(-(w * cos + b)))
        return 0.5 * ((1.0 if same else 0.0) - s) ** 2
    m = params[0]
    diff = fa - fb
    d = np.abs(diff).sum() if variant == "l1" else np.sqrt(diff @ diff)
    if same:
        return 0.5 * d * d
    if variant == "l2_pos":
        return 0.0
    return 0.5 * max(0.0, m - d) ** 2


def _pair_grad(fa, fb, same, variant, params):
    """Analytic (d/dfa, d/dfb, d/dparams) of one pair's loss."""
    zero = np.zeros_like(fa)
    if variant == "cosine":
        w, b = params
        na, nb = fa @ fa + COS_EPS, fb @ fb + COS_EPS
        cos = fa @ fb / np.sqrt(na * nb)
        s = 1.0 / (1.0 + np.exp(-(w * cos + b)))
        dz = (s - (1.0 if same else 0.0)) * s * (1.0 - s)   # dL/d(w cos + b)
        dcos_dfa = fb / np.sqrt(na * nb) - cos * fa / na
        dcos_dfb = fa / np.sqrt(na * nb) - cos * fb / nb
        return dz * w * dcos_dfa, dz * w * dcos_dfb, np.array([dz * cos, dz])
    m = params[0]
    diff = fa - fb
    if variant == "l1":
        d, ddiff = np.abs(diff).sum(), np.sign(diff)        # sign(0) = 0
    else:
        d = np.sqrt(diff @ diff)
        ddiff = diff / d if d > 0 else zero                  # d=0: taken as 0
    if same:
        g = d * ddiff                                        # d(1/2 d^2)
        return g, -g, np.array([0.0])
    if variant == "l2_pos":
        return zero, zero.copy(), np.array([0.0])
    h = max(0.0, m - d)
    g = -h * ddiff                                           # d(1/2 h^2)/dfa
    return g, -g, np.array([h])


def _check_variant(variant, params):
    if variant not in VARIANTS:
        raise ValueError(variant)
    params = DEFAULT_PARAMS[variant] if params is None else params
    params = [float(p) for p in np.ravel(params)]
    assert len(params) == len(DEFAULT_PARAMS[variant])
    return params


def ident_value(logits, labels):
    """(mean softmax cross-entropy, correct count)."""
    logits = f64(logits)
    total, correct = 0.0, 0
    for i in range(logits.shape[0]):
        z = logits[i] - logits[i].max()
        total += np.log(np.exp(z).sum()) - z[labels[i]]
        correct += int(np.argmax(logits[i]) == labels[i])    # first max wins
    return total / logits.shape[0], correct


def verif_value(features, pair_a, pair_b, pair_y, variant="l2", params=None):
    params = _check_variant(variant, params)
    features = f64(features)
    P = len(pair_a)
    if P == 0:
        return 0.0
    return sum(_pair_value(features[a], features[b], y == 1, variant, params)
               for a, b, y in zip(pair_a, pair_b, pair_y)) / P


def joint_loss_value(logits, labels, features, pair_a, pair_b, pair_y,
                     variant="l2", lam=0.05, params=None):
    return (ident_value(logits, labels)[0]
            + lam * verif_value(features, pair_a, pair_b, pair_y, variant, params))


def joint_loss(logits, labels, features, pair_a, pair_b, pair_y,
               variant="l2", lam=0.05, params=None):
    """dict with total, ident, verif, correct, dlogits, dfeatures, dparams."""
    params = _check_variant(variant, params)
    logits, features = f64(logits), f64(features)
    n, n_classes = logits.shape
    ident, correct = ident_value(logits, labels)
    verif = verif_value(features, pair_a, pair_b, pair_y, variant, params)

    dlogits = np.zeros_like(logits)
    for i in range(n):                       # (softmax - onehot) / N
        e = np.exp(logits[i] - logits[i].max())
        dlogits[i] = e / e.sum()
        dlogits[i, labels[i]] -= 1.0
    dlogits /= n

    dfeatures = np.zeros_like(features)
    dparams = np.zeros(len(params))
    P = len(pair_a)
    for a, b, y in zip(pair_a, pair_b, pair_y):
        ga, gb, gp = _pair_grad(features[a], features[b], y == 1, variant, params)
        dfeatures[a] += lam / P * ga
        dfeatures[b] += lam / P * gb
        dparams += lam / P * gp
    return dict(total=ident + lam * verif, ident=ident, verif=verif,
                correct=correct, dlogits=dlogits, dfeatures=dfeatures,
                dparams=dparams)


# ----------------------------------------------------------------------------
def sgd_update(param, grad, velocity, lr, momentum=0.9, weight_decay=0.0):
    """Returns the new (param, velocity); inputs are left untouched."""
    p, g, v = f64(param), f64(grad), f64(velocity)
    v = momentum * v - lr * (g + weight_decay * p)
    return p + v, v


# ----------------------------------------------------------------------------
# comparison helper shared by the tests
def assert_close(x, ref, rtol, atol, name):
    """Assert |x - ref| <= atol + rtol*|ref| elementwise; report the worst."""
    x = np.asarray(x)
    ref = np.asarray(ref)
    assert x.shape == ref.shape, f"{name}: shape {x.shape} != expected {ref.shape}"
    xd, rd = x.astype(np.float64), ref.astype(np.float64)
    assert np.all(np.isfinite(xd)), f"{name}: non-finite values {xd[~np.isfinite(xd)][:5]}"
    if xd.size == 0:
        return
    err = np.abs(xd - rd)
    excess = err - (atol + rtol * np.abs(rd))
    worst = np.unravel_index(np.argmax(excess), xd.shape)
    n_bad = int((excess > 0).sum())
    assert n_bad == 0, (
        f"{name}: {n_bad}/{xd.size} elements out of tolerance (rtol={rtol:g}, "
        f"atol={atol:g}); worst at {tuple(int(i) for i in worst)}: got "
        f"{xd[worst]!r}, expected {rd[worst]!r}, |err|={err[worst]:.3g}; "
        f"max |err| overall {err.max():.3g}")


# ----------------------------------------------------------------------------
def regression_loss(pred, target):
    """(loss, dpred): mean over rows of 1/2 ||pred - target||^2."""
    p, t = f64(pred), f64(target)
    n = p.shape[0]
    loss = sum(0.5 * np.sum((p[i] - t[i]) ** 2) for i in range(n)) / n
    return loss, (p - t) / n


# ----------------------------------------------------------------------------
def check_param_gradients(loss, params, grads, samples=4, seed=7, eps=1e-6, atol=1e-7,
                          rtol=1e-4):
    """Central differences of loss() (a float of the float64 params, changed
    in place and restored) against grads, at `samples` random entries of every
    parameter."""
    rng = np.random.default_rng(seed)
    for name in sorted(params):
        p = params[name]
        for flat in rng.choice(p.size, size=min(samples, p.size), replace=False):
            idx = np.unravel_index(flat, p.shape)
            old = p[idx]
            p[idx] = old + eps
            up = loss()
            p[idx] = old - eps
            dn = loss()
            p[idx] = old
            fd = (up - dn) / (2 * eps)
            assert abs(fd - grads[name][idx]) <= atol + rtol * abs(fd), \
                (name, idx, fd, grads[name][idx])
