"""The backend contract of docs/ops.md on both backends: every listed name
exists, batch assembly matches a reference, transfers round-trip, the knobs
answer as documented, and bad input is a ValueError naming the problem.

The gpu backend runs as the other gpu tests run it (tests/gpu_support.py):
on CuPy where a GPU exists, and in the kernel emulator everywhere else.
"""
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpu_support import MODES, gpu_fixture, restore

OPS_MD = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def documented_names():
    """The names in the first column of docs/ops.md's table of functions."""
    names = []
    for line in OPS_MD.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names += re.findall(r"`(\w+)", first)
    return names


@pytest.fixture(params=["cpu"] + [f"gpu-{m}" for m in MODES])
def backend(request):
    """SimpleNamespace(be, dev, kind): the backend, numpy -> its array, "cpu"/"gpu"."""
    if request.param == "cpu":
        from deepid2_core.backends import get_backend
        yield SimpleNamespace(be=get_backend("cpu"), dev=lambda a: a, kind="cpu")
        return
    sub = SimpleNamespace(param=request.param.split("-", 1)[1])
    g, saved = gpu_fixture(sub)
    yield SimpleNamespace(be=g.be, dev=g.cp.asarray, kind="gpu", cp=g.cp)
    restore(g, saved)


def test_docs_list_the_whole_contract():
    names = documented_names()
    for must in ("assemble_batch", "to_device", "to_host", "synchronize", "keep_freed_memory",
                 "set_index_checks", "max_threads", "name", "xp", "joint_loss", "sgd_update"):
        assert must in names, f"docs/ops.md does not list {must}"


def test_every_documented_name_exists(backend):
    missing = [n for n in documented_names() if not hasattr(backend.be, n)]
    assert not missing, f"{backend.kind} backend lacks {missing}"
    assert backend.be.name == backend.kind


def reference(patches, idx, flip, mean, scale):
    """float64 reference of the documented formula."""
    src = patches[idx].astype(np.float64)              # B x H x W x C
    if flip is not None:
        src = np.where(np.asarray(flip)[:, None, None, None], src[:, :, ::-1, :], src)
    return (src.transpose(0, 3, 1, 2) - float(np.float32(mean))) * float(np.float32(scale))


def as_numpy_f32(patches, idx, flip, mean, scale):
    """The same in numpy float32, the bits both backends must give."""
    src = patches[idx]
    if flip is not None:
        src = np.where(np.asarray(flip)[:, None, None, None], src[:, :, ::-1, :], src)
    return ((src.transpose(0, 3, 1, 2).astype(np.float32) - np.float32(mean))
            * np.float32(scale))


@pytest.mark.parametrize("seed", range(4))
def test_assemble_batch_matches_reference(backend, seed):
    be, rng = backend.be, np.random.default_rng(900 + seed)
    n, h, w = (int(v) for v in rng.integers(1, 8, 3))
    c = int(rng.choice([1, 3]))
    # small batches and ones past the cpu backend's numpy path (NUMPY_MAX_IMAGES = 32: numba)
    b = int(rng.integers(1, 7)) if seed < 2 else int(rng.integers(33, 70))
    patches = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    patches[0, 0, 0, 0], patches[-1, -1, -1, -1] = 0, 255
    idx = rng.integers(0, n, b)                         # repeats allowed
    mean, scale = ((127.5, 1 / 128.0) if seed == 0
                   else (float(rng.uniform(-50, 300)), float(rng.uniform(-1, 1))))
    dp = backend.dev(patches)
    for flip in (None, rng.random(b) < 0.5, np.ones(b, bool)):
        out = backend.dev(np.full((b, c, h, w), np.nan, np.float32))   # poisoned
        got = be.assemble_batch(dp, idx, flip, out=out, mean=mean, scale=scale)
        assert got is out
        got = be.to_host(got)
        assert got.dtype == np.float32 and got.shape == (b, c, h, w)
        assert not np.isnan(got).any(), "assemble_batch left elements of out unwritten"
        np.testing.assert_allclose(got, reference(patches, idx, flip, mean, scale),
                                   rtol=1e-6, atol=1e-6 * abs(scale) * 256)
        assert got.tobytes() == as_numpy_f32(patches, idx, flip, mean, scale).tobytes()
        fresh = be.to_host(be.assemble_batch(dp, idx, flip, mean=mean, scale=scale))
        assert fresh.tobytes() == got.tobytes()
    if not np.array_equal(patches, patches[:, :, ::-1]):  # the flip must do something
        f = np.ones(b, bool)
        assert (be.to_host(be.assemble_batch(dp, idx, f)).tobytes()
                != be.to_host(be.assemble_batch(dp, idx)).tobytes())
    assert be.to_host(be.assemble_batch(dp, idx[:0])).shape == (0, c, h, w)


def test_to_device_to_host_round_trip(backend):
    be, rng = backend.be, np.random.default_rng(910)
    for a in (rng.standard_normal((3, 4)).astype(np.float32),
              rng.integers(0, 256, (2, 3, 4, 1), dtype=np.uint8),
              rng.integers(-5, 5, 7).astype(np.int32)):
        d = be.to_device(a)
        back = be.to_host(d)
        assert isinstance(back, np.ndarray) and back.dtype == a.dtype
        np.testing.assert_array_equal(back, a)
        assert isinstance(be.xp.zeros_like(d), type(d))
        if backend.kind == "cpu":
            assert d is a and back is a, "the cpu backend must not copy"
        else:
            assert isinstance(d, backend.cp.ndarray) and type(back) is np.ndarray
            assert be.to_device(d) is d


def test_knobs(backend):
    be = backend.be
    assert be.synchronize() is None
    assert isinstance(be.max_threads(), int) and be.max_threads() >= 1
    assert isinstance(be.keep_freed_memory(), bool)
    old = be.set_index_checks(False)
    try:
        assert old is True
        if backend.kind == "cpu":
            assert be.set_index_checks(True) is True   # accepted, always checking
        else:
            assert be.set_index_checks(False) is False
    finally:
        be.set_index_checks(old)
    assert be.set_index_checks(True) is True


def test_gpu_index_checks_off_gives_zero_images(backend):
    if backend.kind != "gpu":
        pytest.skip("the cpu backend always checks indices")
    be = backend.be
    patches = backend.dev(np.full((2, 3, 4, 1), 7, np.uint8))
    old = be.set_index_checks(False)
    try:
        got = be.to_host(be.assemble_batch(patches, backend.dev(np.array([1, 5]))))
    finally:
        be.set_index_checks(old)
    assert np.all(got[1] == 0) and np.all(got[0] == np.float32((7 - 127.5) / 128))


def test_assemble_batch_errors(backend):
    be, rng = backend.be, np.random.default_rng(920)
    patches = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    dp = backend.dev(patches)
    cases = [
        (dict(patches=backend.dev(patches.astype(np.float32)), indices=[0]), "patches.*uint8"),
        (dict(patches=backend.dev(patches[0]), indices=[0]), "patches.*N x H x W x C"),
        (dict(patches=dp, indices=[0, 4]), r"indices must be in 0\.\.3"),
        (dict(patches=dp, indices=[-1, 2]), r"indices must be in 0\.\.3"),
        (dict(patches=dp, indices=np.zeros((2, 1), np.int64)), "indices must be 1-D"),
        (dict(patches=dp, indices=np.array([0.0, 1.5])), "indices must be integers"),
        (dict(patches=dp, indices=[0, 1], flip=[True]), "flip.*length 2"),
        (dict(patches=dp, indices=[0, 1],
              out=backend.dev(np.zeros((2, 3, 5, 5), np.float32))), r"out.*\(2, 3, 5, 6\)"),
        (dict(patches=dp, indices=[0, 1],
              out=backend.dev(np.zeros((2, 3, 5, 6), np.float64))), "out.*float32"),
    ]
    if backend.kind == "gpu":
        cases += [(dict(patches=patches, indices=[0]), "patches.*device"),
                  (dict(patches=dp, indices=backend.dev(np.array([0, 4]))), "indices must be in"),
                  (dict(patches=dp, indices=backend.dev(np.array([0.0]))), "integers")]
    for kw, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            be.assemble_batch(**kw)
