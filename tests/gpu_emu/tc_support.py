"""The gpu backend's newer variants (TF32 lsconv, fused lsconv + max-pool;
deepid2_core/backends/gpu_tc.py) for the gpu tests, run through the
backend's own ops and variant registry: a precision (set_precision) and a
forced variant (gpu_tiling.forced), on a GPU ("cuda") or in the emulator
("emu")."""
import contextlib
from types import SimpleNamespace

import numpy as np

import oracle as O
from deepid2_core.backends import gpu_tiling as tiling
from gpu_support import load
from op_cases import CONV, randn

_loaded = {}


class Variants:
    """The variants by name: each runs the backend's op at its precision,
    with its family forced (2 x 2 windows only for the fused ones, as
    before: other windows run the composition)."""

    def __init__(self, be):
        self.be = be

    def _run(self, precision, force, fn, *a, **k):
        old = self.be.set_precision(precision)
        try:
            with tiling.forced(force):
                return fn(*a, **k)
        finally:
            self.be.set_precision(old)

    @staticmethod
    def _pool(op, family, s):
        return {op: family} if family == "composed" or s == 2 else {}

    def lsconv_forward_tf32(self, *a, **k):
        return self._run("tf32", {}, self.be.lsconv_forward, *a, **k)

    def lsconv_backward_tf32(self, *a, **k):
        return self._run("tf32", {}, self.be.lsconv_backward, *a, **k)

    def lsconv_pool_forward(self, family, *a, s=2, **k):
        return self._run("fp32", self._pool("lsconv_pool_fwd", family, s),
                         self.be.lsconv_pool_forward, *a, s=s, **k)

    def lsconv_pool_backward(self, family, *a, s=2, precision="fp32", **k):
        return self._run(precision, self._pool("lsconv_pool_bwd", family, s),
                         self.be.lsconv_pool_backward, *a, s=s, **k)

    def lsconv_pool_forward_fused(self, *a, **k):
        return self.lsconv_pool_forward("fused", *a, **k)

    def lsconv_pool_backward_fused(self, *a, **k):
        return self.lsconv_pool_backward("fused", *a, **k)

    def lsconv_pool_backward_tf32(self, *a, **k):
        return self.lsconv_pool_backward("fused", *a, precision="tf32", **k)


def load_tc(mode):
    """SimpleNamespace(be, cp, mode, tc): the backend of gpu_support.load and
    its Variants."""
    if mode not in _loaded:
        g = load(mode)
        _loaded[mode] = SimpleNamespace(be=g.be, cp=g.cp, mode=mode, tc=Variants(g.be))
    return _loaded[mode]


@contextlib.contextmanager
def variant_modes(mode, debug=True):
    """load_tc(mode) in deterministic mode, debug mode as given (on: outputs
    poisoned with NaN, then checked); the modes and precision restored after."""
    g = load_tc(mode)
    saved = g.be.is_deterministic(), g.be.is_debug(), g.be.get_precision()
    g.be.set_deterministic(True)
    g.be.set_debug(debug)
    try:
        yield g
    finally:
        g.be.set_deterministic(saved[0])
        g.be.set_debug(saved[1])
        g.be.set_precision(saved[2])


def lsconv_case(spec, seed):
    """(x, w, b, region, rng, L) for spec = (N, C, H, W, K, kh, kw, region or
    CONV): random values, never zeros; L: the terms per element of y, dx, dw, db."""
    n, c, h, w, k, kh, kw, region = spec
    oh, ow = h - kh + 1, w - kw + 1
    region = (oh, ow) if region == CONV else region
    _, _, ry, rx = O.lsconv_grid(h, w, kh, kw, region)
    rng = np.random.default_rng(seed)
    x, wt, b = randn(rng, (n, c, h, w)), randn(rng, (ry, rx, k, c, kh, kw)), randn(rng, (ry, rx, k))
    cols = n * min(region[0], oh) * min(region[1], ow)
    return x, wt, b, region, rng, {"y": c * kh * kw, "dx": k * kh * kw, "dw": cols, "db": cols}


def tf32(a):
    """numpy float32 -> the nearest TF32 values (ties away from zero), as float32:
    what cvt.rna.tf32.f32 gives (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


# TF32 rounding: relative error at most U = 2^-11 per operand (docs/ops.md, "TF32").
U = 2.0 ** -11


def tf32_bound(sum_abs, sum_sq):
    """Bound on |TF32 result - exact| per element (docs/ops.md, "TF32"), from
    sum |a b| and sum (a b)^2 over the element's products: the worst case
    (2U + U^2) sum |a b|, or, tighter for long sums, Hoeffding's bound at
    probability 1e-12 for independent rounding errors of at most 2U |a b|:
    15 U sqrt(sum (a b)^2)."""
    return np.minimum((2 * U + U * U) * sum_abs, 15 * U * np.sqrt(sum_sq))


def lsconv_terms(x, w, y, dy, region, relu):
    """(sum |a b|, sum (a b)^2) per element of the forward's output and of dx,
    dw, db (the float64 oracle on |.| and on squares; dy masked by the saved y)."""
    zb = np.zeros(w.shape[:3])
    fa = O.lsconv_forward(np.abs(x), np.abs(w), zb, region, False)
    fs = O.lsconv_forward(np.square(x), np.square(w), zb, region, False)
    ba = O.lsconv_backward(np.abs(x), np.abs(w), y, np.abs(dy), region, relu)
    bs = O.lsconv_backward(np.square(x), np.square(w), y, np.square(dy), region, relu)
    return {"y": (fa, fs), "dx": (ba[0], bs[0]), "dw": (ba[1], bs[1]), "db": (ba[2], bs[2])}
