"""Error paths of the gpu backend (the cpu backend's cases, tests/backends/test_cpu_errors.py,
on device arrays), and get_backend("gpu") where CuPy or a GPU is missing.

The BackendUnavailable tests at the end need neither CuPy nor a GPU: they
run everywhere.
"""
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpu_support import MODES, dev, gpu_fixture, host, restore
from error_cases import CASES, arr, valid



def _env():
    """PYTHONPATH for a child: wherever this process found the package (the
    source tree, or site-packages after `pip install .`), as test_cpu_ops does."""
    import deepid2_core
    where = Path(deepid2_core.__file__).resolve().parents[1]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(where),
                                                        os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    yield g
    restore(g, saved)


def to_device(gpu, kw):
    out = {}
    for k, v in kw.items():
        out[k] = dev(gpu, v) if isinstance(v, (np.ndarray, list)) else v
    return out


def on_device(gpu, v):
    """A bad value made from a device array, on the device with its layout."""
    if isinstance(v, list):
        return [on_device(gpu, a) for a in v]
    if isinstance(v, np.ndarray) and not isinstance(v, gpu.cp.ndarray):
        if v.flags.c_contiguous or gpu.mode != "emu":
            return gpu.cp.asarray(v)
        return v.view(gpu.cp.ndarray)   # emulator: keep the strides
    return v


def test_valid_calls(gpu):
    for op, kw in valid().items():
        getattr(gpu.be, op)(**to_device(gpu, kw))
    kw = to_device(gpu, valid()["joint_loss"])
    gpu.be.joint_loss(**dict(kw, variant="cosine", params=dev(gpu, np.float32([1.0, 0.0]))))


GPU_CASES = {k: v for k, v in CASES.items() if not k.endswith("_readonly")}  # no such flag on CuPy


@pytest.mark.parametrize("case", GPU_CASES)
def test_error(gpu, case):
    op, changes, exc, pattern = GPU_CASES[case]
    kw = to_device(gpu, valid()[op])
    for nm, make_bad in changes.items():
        if make_bad is np.asfortranarray and gpu.mode == "cuda":
            make_bad = gpu.cp.asfortranarray   # numpy's would copy to the host
        kw[nm] = on_device(gpu, make_bad(kw[nm]))
        if gpu.mode == "cuda" and make_bad is gpu.cp.asfortranarray:
            assert not kw[nm].flags.c_contiguous
    with pytest.raises(exc, match=pattern):
        getattr(gpu.be, op)(**kw)


def test_host_arrays_are_type_errors(gpu):
    """numpy arrays are not device arrays: TypeError naming the argument."""
    kw = to_device(gpu, valid()["lsconv_forward"])
    with pytest.raises(TypeError, match=r"\bx\b.*cupy"):
        gpu.be.lsconv_forward(**dict(kw, x=valid()["lsconv_forward"]["x"]))
    kw = to_device(gpu, valid()["sgd_update"])
    with pytest.raises(TypeError, match=r"\bgrad\b"):
        gpu.be.sgd_update(**dict(kw, grad=arr(5, 4)))


def test_failed_calls_leave_outputs_untouched(gpu):
    kw = to_device(gpu, valid()["lsconv_backward"])
    dw0, db0 = host(kw["dw"]).copy(), host(kw["db"]).copy()
    with pytest.raises(ValueError, match=r"\bdy\b"):
        gpu.be.lsconv_backward(**dict(kw, dy=dev(gpu, arr(2, 4, 5, 6))))
    np.testing.assert_array_equal(host(kw["dw"]), dw0)
    np.testing.assert_array_equal(host(kw["db"]), db0)
    kw = to_device(gpu, valid()["sgd_update"])
    p0, v0 = host(kw["param"]).copy(), host(kw["velocity"]).copy()
    with pytest.raises(ValueError, match=r"\bgrad\b"):
        gpu.be.sgd_update(**dict(kw, grad=dev(gpu, arr(4, 5))))
    np.testing.assert_array_equal(host(kw["param"]), p0)
    np.testing.assert_array_equal(host(kw["velocity"]), v0)


def test_message_states_expected_shape(gpu):
    kw = to_device(gpu, valid()["lsconv_forward"])
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):
        gpu.be.lsconv_forward(**dict(kw, b=dev(gpu, arr(2, 2, 5))))


def test_empty_dimensions_are_rejected(gpu):
    kw = {op: to_device(gpu, a) for op, a in valid().items()}
    d = lambda *s: dev(gpu, arr(*s))  # noqa: E731
    e = dev(gpu, np.array([], np.int32))
    bad_calls = [
        ("lsconv_forward", dict(kw["lsconv_forward"], x=d(0, 3, 8, 7))),
        ("lsconv_forward", dict(kw["lsconv_forward"], w=d(2, 2, 0, 3, 3, 2), b=d(2, 2, 0))),
        ("maxpool_forward", dict(kw["maxpool_forward"], x=d(0, 3, 8, 7))),
        ("dense_forward", dict(kw["dense_forward"], xs=[d(2, 0)], w=d(0, 5))),
        ("joint_loss", dict(kw["joint_loss"], logits=d(0, 6), labels=e, features=d(0, 3),
                            pair_a=e, pair_b=e, pair_y=e)),
    ]
    for op, args in bad_calls:
        with pytest.raises(ValueError):
            getattr(gpu.be, op)(**args)


def test_joint_loss_index_errors_name_the_entry(gpu):
    kw = to_device(gpu, valid()["joint_loss"])
    with pytest.raises(ValueError, match=r"labels\[2\] = -1"):
        gpu.be.joint_loss(**dict(kw, labels=dev(gpu, np.int32([0, 5, -1, 1]))))
    with pytest.raises(ValueError, match=r"pair_a/pair_b\[1\]"):
        gpu.be.joint_loss(**dict(kw, pair_b=dev(gpu, np.int32([1, 7, 3]))))
    with pytest.raises(ValueError, match=r"pair_y\[2\]"):
        gpu.be.joint_loss(**dict(kw, pair_y=dev(gpu, np.int32([1, -1, 0]))))


def test_mode_switches(gpu):
    be = gpu.be
    assert be.is_deterministic()           # the fixture's (and the module's) default
    assert be.set_deterministic(False) is True and not be.is_deterministic()
    assert be.set_debug(True) is False and be.is_debug()
    assert be.name == "gpu" and be.max_threads() == 1


# ----------------------------------------------------------------------------
# get_backend("gpu") without CuPy or without a GPU (runs everywhere)
def _fresh_backends(monkeypatch):
    for m in [m for m in sys.modules if m == "deepid2_core.backends.gpu"]:
        monkeypatch.delitem(sys.modules, m)
    from deepid2_core.backends import BackendUnavailable, get_backend
    return BackendUnavailable, get_backend


def _assert_one_clear_line(e, *words):
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), \
        "a CuPy traceback would be chained to the message"
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def test_gpu_backend_without_cupy_is_unavailable(monkeypatch):
    BackendUnavailable, get_backend = _fresh_backends(monkeypatch)
    monkeypatch.setitem(sys.modules, "cupy", None)   # import cupy -> ImportError
    with pytest.raises(BackendUnavailable) as ei:
        get_backend("gpu")
    _assert_one_clear_line(ei.value, "CuPy", "backend='cpu'")
    assert "deepid2_core.backends.gpu" not in sys.modules


def test_gpu_backend_without_a_device_is_unavailable(monkeypatch):
    BackendUnavailable, get_backend = _fresh_backends(monkeypatch)

    class CUDARuntimeError(RuntimeError):
        pass

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendUnavailable) as ei:
        get_backend("gpu")
    _assert_one_clear_line(ei.value, "GPU", "cudaErrorNoDevice", "backend='cpu'")
    monkeypatch.delitem(sys.modules, "deepid2_core.backends.gpu", raising=False)


def test_gpu_backend_error_is_clean_from_the_command_line(tmp_path):
    """Where CuPy is absent, the message is the one line above and no traceback."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from deepid2_core.backends import get_backend\n"
            "get_backend('gpu')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=120)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("deepid2_core.backends.BackendUnavailable: the gpu backend needs CuPy")
    assert "During handling of the above exception" not in p.stderr
    assert "direct cause" not in p.stderr


def test_package_and_cpu_backend_never_import_cupy(tmp_path):
    code = ("import sys\n"
            "import deepid2_core, deepid2_core.backends, deepid2_core.nets.deepid2, deepid2_core.training.deepid2\n"
            "from deepid2_core.backends import get_backend\n"
            "get_backend('cpu')\n"
            "bad = sorted(m for m in sys.modules if m == 'cupy' or m.startswith('cupy.'))\n"
            "assert not bad, bad\n"
            "assert 'deepid2_core.backends.gpu' not in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
