"""The cases and tolerances of the cpu joint_loss and sgd_update tests
(backends/test_cpu_loss.py), shared with the gpu tests
(backends/test_gpu_loss.py), which run the same cases."""
import numpy as np


RTOL = 1e-4


def grad_tol(ref):
    return dict(rtol=RTOL, atol=1e-5 * float(np.abs(ref).max(initial=0.0)) + 1e-12)


def i32(a):
    return np.asarray(a, dtype=np.int32)


def make_pairs(rng, feats, P, variant):
    """Random pairs, rows repeated across pairs; a == b only for same pairs
    (and for cosine, where it is smooth). Margin away from every distance."""
    n = feats.shape[0]
    a, b = rng.integers(0, n, P), rng.integers(0, n, P)
    y = rng.choice([1, -1], P) if n > 1 else np.ones(P, int)
    if variant != "cosine":
        bad = (a == b) & (y == -1)
        b[bad] = (a[bad] + 1) % n
    if variant == "cosine":
        params = np.array([rng.uniform(1, 8), rng.uniform(-2, 2)], np.float32)
    else:
        f = feats.astype(np.float64)
        diff = f[a] - f[b]
        ds = np.abs(diff).sum(1) if variant == "l1" else np.sqrt((diff ** 2).sum(1))
        ds = np.unique(ds[y == -1])
        if len(ds) == 0:
            return i32(a), i32(b), i32(y), np.array([1.0], np.float32)
        k = max(len(ds) // 2 - 1, 0)
        m = (ds[k] + ds[k + 1]) / 2 if len(ds) > 1 else 1.5 * ds[0]
        params = np.array([m], np.float32)
        gap = np.abs(ds - float(params[0])).min()
        assert gap > 1e-3 * params[0], "margin too close to a distance; change the seed"
    return i32(a), i32(b), i32(y), params


JOINT_CASES = {  # N, n_classes, D, P, logit scale
    "small": (6, 5, 4, 12, 3.0),
    "n1": (1, 3, 2, 2, 1.0),
    "deepid2": (32, 200, 160, 16, 5.0),
    "many_pairs": (8, 10, 7, 40, 2.0),
    "1000_classes_big_logits": (16, 1000, 160, 24, 300.0),
}


def joint_case(case, variant, seed=20):
    """Random inputs of a JOINT_CASES case: (logits, labels, feats, a, b, y,
    params, lam), the same on every backend's test."""
    n, nc, D, P, scale = JOINT_CASES[case]
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, nc)) * scale).astype(np.float32)
    labels = i32(rng.integers(0, nc, n))
    feats = rng.standard_normal((n, D)).astype(np.float32)
    a, b, y, params = make_pairs(rng, feats, P, variant)
    return logits, labels, feats, a, b, y, params, float(rng.uniform(0.01, 1.0))


SGD_SHAPES = [(1,), (7,), (3, 4, 5), (60, 5, 4), (160, 1000)]


SGD_HYPER = [(0.01, 0.9, 5e-4), (0.1, 0.0, 0.0), (1e-3, 0.99, 0.0)]
