"""Backends by name. Each exposes the same ops with the same meaning
(docs/ops.md): ``cpu`` takes numpy arrays, ``gpu`` takes CuPy arrays.

Importing this package (and the cpu backend) never imports CuPy; only
``get_backend("gpu")`` does."""

import importlib
import sys

NAMES = ("cpu", "gpu")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


def get_backend(name="cpu"):
    """The backend module `name`. For "gpu": BackendUnavailable, with one line
    saying why, where CuPy or a usable NVIDIA GPU is missing."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "gpu":
        return _gpu()
    return importlib.import_module(f"deepid2_core.backends.{name}")


def _gpu():
    reason = None
    try:
        mod = importlib.import_module("deepid2_core.backends.gpu")
    except BackendUnavailable as e:  # no CuPy (raised by gpu.py itself)
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - whatever a broken install raises
        sys.modules.pop("deepid2_core.backends.gpu", None)
        reason = (f"the gpu backend could not be loaded ({type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                  "use backend='cpu'")
    if reason is None:
        try:
            mod.probe()  # a device, a driver, NVRTC and the kernel sources
            return mod
        except BackendUnavailable as e:
            reason = str(e)
    raise BackendUnavailable(reason)  # raised here: no chained CuPy traceback


def sgd_hyperparameters(params, grads, velocities, lr, momentum, weight_decay):
    """[(lr, momentum, weight_decay)] per tensor of sgd_update_many: each given
    as one number or one per tensor; ValueError (one line) on lengths."""
    n = len(params)
    if not n == len(grads) == len(velocities):
        raise ValueError(f"params, grads and velocities must be lists of one length, got "
                         f"{n}, {len(grads)} and {len(velocities)}")
    cols = []
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        vals = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(vals) != n:
            raise ValueError(f"{name}: {len(vals)} values for {n} tensors")
        cols.append(vals)
    return list(zip(*cols))
