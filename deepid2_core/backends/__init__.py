"""Backends by name. Each exposes the same ops with the same meaning
(docs/ops.md): ``cpu`` takes numpy arrays, ``gpu`` takes CuPy arrays."""

import importlib

NAMES = ("cpu", "gpu")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


def get_backend(name="cpu"):
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "gpu":
        raise BackendUnavailable(
            "the gpu backend is not built yet (issue 3); use backend='cpu'")
    return importlib.import_module(f"deepid2_core.backends.{name}")
