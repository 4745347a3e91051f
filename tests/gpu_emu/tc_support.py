"""deepid2_core/backends/gpu_tc.py for the gpu tests: in "cuda" mode the
module itself (bound to gpu.py); in "emu" mode a copy of it bound to the
emulated gpu backend of tests/gpu_support.py (its fake CuPy), so that the
variants run in the kernel emulator."""
import contextlib
import importlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import oracle as O
from gpu_support import load
from test_cpu_ops import CONV, randn

_loaded = {}


def load_tc(mode):
    """SimpleNamespace(be, cp, mode, tc, step): the backend of gpu_support.load,
    its gpu_tc and its gpu_step."""
    if mode in _loaded:
        return _loaded[mode]
    g = load(mode)
    mods = {}
    for name in ("gpu_tc", "gpu_step"):
        if mode == "cuda":
            mods[name] = importlib.import_module(f"deepid2_core.backends.{name}")
        else:
            import deepid2_core.backends as backends
            spec = importlib.util.spec_from_file_location(
                f"deepid2_core.backends._{name}_emulated",
                Path(backends.__file__).with_name(f"{name}.py"))
            mods[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
        mods[name].bind(g.be)
    _loaded[mode] = SimpleNamespace(be=g.be, cp=g.cp, mode=mode, tc=mods["gpu_tc"],
                                    step=mods["gpu_step"])
    return _loaded[mode]


@contextlib.contextmanager
def variant_modes(mode, debug=True):
    """load_tc(mode) in deterministic mode, debug mode as given (on: outputs
    poisoned with NaN, then checked); the modes and precision restored after."""
    g = load_tc(mode)
    saved = g.be.is_deterministic(), g.be.is_debug(), g.tc.get_precision()
    g.be.set_deterministic(True)
    g.be.set_debug(debug)
    try:
        yield g
    finally:
        g.be.set_deterministic(saved[0])
        g.be.set_debug(saved[1])
        g.tc.set_precision(saved[2])


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
