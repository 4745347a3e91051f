"""What the gpu tests (tests/backends/test_gpu_*.py) share: the ``gpu`` fixture's
backends, host/device helpers and tolerances.

The fixture runs each test in two modes:
- ``cuda``: the real gpu backend, get_backend("gpu") on CuPy. Skipped, with
  the reason, where CuPy or a usable GPU is missing; with
  DEEPID2_REQUIRE_GPU=1 (bench/gpu_check.sh sets it) that is a failure.
- ``emu``: the same backend module (deepid2_core/backends/gpu.py) loaded
  against tests/gpu_emu/fake_cupy.py, which runs the same kernel sources on
  the CPU in an emulator (one fiber per GPU thread). It checks the kernels'
  logic and the backend's code where no GPU exists; it proves nothing about
  speed, races between real threads or memory errors. Needs a C++17
  compiler (g++); skipped with the reason otherwise.
DEEPID2_GPU_TEST_MODES="cuda" (or "emu") picks the modes.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUIRE_GPU = os.environ.get("DEEPID2_REQUIRE_GPU", "0") == "1"
# The tests check this source tree's kernels, also where the package itself
# was installed elsewhere (CI's `pip install .` copies no kernels/).
os.environ.setdefault("DEEPID2_KERNELS_DIR", str(ROOT / "kernels"))
MODES = [m for m in os.environ.get("DEEPID2_GPU_TEST_MODES", "cuda,emu").split(",") if m]

RTOL = 1e-4
ATOL_UNIT = 1e-5


def tol(L, scale=1.0, factor=1.0):
    """The cpu tests' bound (tests/backends/test_cpu_ops.py), times `factor`."""
    return dict(rtol=RTOL * factor, atol=ATOL_UNIT * np.sqrt(L) * scale * factor)


def _unavailable(reason):
    if REQUIRE_GPU:
        pytest.fail(f"DEEPID2_REQUIRE_GPU=1 but the gpu backend is unavailable: {reason}",
                    pytrace=False)
    pytest.skip(reason)


_loaded = {}


def load(mode):
    """SimpleNamespace(be=backend module, cp=its cupy, mode) or skip."""
    if mode in _loaded:
        return _loaded[mode]
    if mode == "cuda":
        try:
            import cupy
        except ImportError as e:
            _unavailable(f"CuPy is not installed ({e}): the gpu tests need a CUDA GPU with "
                         "CuPy (cupy-cuda13x); the emulated ('emu') variants still run")
        from deepid2_core.backends import BackendUnavailable, get_backend
        try:
            be = get_backend("gpu")
        except BackendUnavailable as e:
            _unavailable(f"gpu backend unavailable: {e}")
        ns = SimpleNamespace(be=be, cp=cupy, mode=mode)
    elif mode == "emu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            pytest.skip(f"the kernel emulator needs a C++17 compiler ({cxx} not found)")
        fake = _load_file("deepid2_gpu_emu_fake_cupy", HERE / "gpu_emu" / "fake_cupy.py")
        be = _load_gpu_backend(fake)
        be.probe()
        ns = SimpleNamespace(be=be, cp=fake, mode=mode)
    else:
        raise ValueError(f"unknown gpu test mode {mode!r}")
    _loaded[mode] = ns
    return ns


def _load_file(modname, path):
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def _load_gpu_backend(fake_cupy):
    """deepid2_core/backends/gpu.py as a separate module bound to the fake CuPy."""
    import deepid2_core.backends as backends
    path = Path(backends.__file__).with_name("gpu.py")
    spec = importlib.util.spec_from_file_location("deepid2_core.backends._gpu_emulated", path)
    mod = importlib.util.module_from_spec(spec)
    missing = object()
    saved = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = fake_cupy
    try:
        spec.loader.exec_module(mod)
    finally:
        if saved is missing:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return mod


def gpu_fixture(request):
    """Body of the ``gpu`` fixtures: the backend in request.param's mode, with
    the deterministic / debug modes restored after each test."""
    g = load(request.param)
    det, dbg = g.be.is_deterministic(), g.be.is_debug()
    g.be.set_deterministic(True)
    g.be.set_debug(False)
    return g, (det, dbg)


def restore(g, saved):
    g.be.set_deterministic(saved[0])
    g.be.set_debug(saved[1])


def dev(g, a):
    """numpy -> the mode's device array (lists element-wise)."""
    if isinstance(a, (list, tuple)):
        return [dev(g, v) for v in a]
    if isinstance(a, np.ndarray):
        return g.cp.asarray(a)
    return a


def host(a):
    """device array -> numpy (None, lists and numbers pass through)."""
    if a is None or isinstance(a, (int, float)):
        return a
    if isinstance(a, (list, tuple)):
        return [host(v) for v in a]
    if hasattr(a, "get"):
        return np.asarray(a.get())
    return np.asarray(a)


def bits(a):
    return host(a).tobytes()
