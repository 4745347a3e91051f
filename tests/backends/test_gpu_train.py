"""Algorithm 1 on the gpu backend: the loop keeps its state on the device and
follows the cpu run (same batches, same updates up to float32 rounding);
two deterministic gpu runs write identical files."""

import types

import numpy as np
import pytest

from gpu_support import MODES, gpu_fixture, restore
from deepid2_core import safetensors
from deepid2_core.backends import get_backend
from deepid2_core.training.checkpoint import CHECKPOINT
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
from deepid2_core.training.loop import Loop


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    yield g
    restore(g, saved)


def small_cache(seed=3, ids=5, per_id=6, h=32, w=32, c=1):
    """The smallest input the four-conv network takes, so the emulator stays quick."""
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(
        patches=rng.integers(0, 256, (ids * per_id, h, w, c), dtype=np.uint8),
        labels=np.repeat(np.arange(ids, dtype=np.int32), per_id),
        identities=[f"id{k}" for k in range(ids)])


def config(**kw):
    base = dict(epochs=2, batch=8, lr=0.02, seed=7, val_fraction=0.2, lam=0.1,
                learn_margin=True, warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def run(cache, run_dir, be, **kw):
    return Loop(DeepID2Task(cache, run_dir, config(**kw), be), log=lambda *a: None,
                progress=False).run()


@pytest.mark.parametrize("verif", ["l2", "cosine"])
def test_gpu_training_follows_the_cpu_run(gpu, tmp_path, verif):
    cache = small_cache()
    ours = run(cache, tmp_path / "gpu", gpu.be, verif=verif)
    ref = run(cache, tmp_path / "cpu", get_backend("cpu"), verif=verif)
    assert isinstance(ours["params"]["conv1.w"], np.ndarray)  # host arrays back
    for k, v in ref["params"].items():
        got = ours["params"][k]
        assert got.shape == v.shape
        bound = 1e-4 + 1e-3 * np.abs(v).max()
        assert np.abs(got - v).max() <= bound, (k, np.abs(got - v).max(), bound)
    np.testing.assert_allclose(ours["verif"], ref["verif"], rtol=1e-4, atol=1e-5)
    for a, b in zip(ours["history"], ref["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_acc"] == b["val_acc"]
    # files are written from host copies: the cpu code reads them
    tensors, meta = safetensors.load(tmp_path / "gpu" / CHECKPOINT)
    assert meta["epoch"] == "2"
    np.testing.assert_array_equal(tensors["param/conv1.w"], ours["params"]["conv1.w"])


def test_deterministic_gpu_runs_write_identical_checkpoints(gpu, tmp_path):
    cache = small_cache(seed=4)
    run(cache, tmp_path / "a", gpu.be, epochs=1)
    run(cache, tmp_path / "b", gpu.be, epochs=1)
    assert (tmp_path / "a" / CHECKPOINT).read_bytes() == (tmp_path / "b" / CHECKPOINT).read_bytes()
