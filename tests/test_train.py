"""Algorithm 1 on synthetic faces: learning, reproducibility, exact resume."""

import json

import pytest

from deepid2_core import safetensors
from deepid2_core.data import PatchSpec, build_cache
from deepid2_core.synth import make_dataset
from deepid2_core.training.deepid2 import CHECKPOINT, BEST, LOG, PLOT, Trainer, TrainConfig


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root / "faces", identities=8, images_per_identity=12, seed=5, progress=False)
    return build_cache(root / "faces", root / "cache", PatchSpec(), progress=False)


def config(**kw):
    base = dict(epochs=2, batch=24, lr=0.02, seed=11, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def train(cache, run_dir, be, **kw):
    return Trainer(cache, run_dir, config(**kw), be, log=lambda *a: None, progress=False)


def test_loss_falls_and_validation_accuracy_rises(cache, tmp_path, be):
    state = train(cache, tmp_path, be, epochs=8).run()
    h = state["history"]
    assert h[-1]["loss"] < 0.7 * h[0]["loss"], [r["loss"] for r in h]
    assert h[-1]["val_acc"] > max(h[0]["val_acc"], 1 / 8 + 0.2), [r["val_acc"] for r in h]
    for name in (CHECKPOINT, BEST, LOG, PLOT):
        assert (tmp_path / name).stat().st_size > 0
    log = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 9))


@pytest.mark.parametrize("verif", ["l2", "cosine"])
def test_same_seed_gives_byte_identical_checkpoints(cache, tmp_path, be, verif):
    train(cache, tmp_path / "a", be, verif=verif).run()
    train(cache, tmp_path / "b", be, verif=verif).run()
    for name in (CHECKPOINT, BEST):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train(cache, tmp_path / "c", be, verif=verif, seed=12).run()
    assert (tmp_path / "a" / CHECKPOINT).read_bytes() != (tmp_path / "c" / CHECKPOINT).read_bytes()


def test_interrupted_run_resumes_bit_for_bit(cache, tmp_path, be):
    kw = dict(epochs=3, learn_margin=True, warmup_steps=2)
    train(cache, tmp_path / "whole", be, **kw).run()

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cache, tmp_path / "cut", be, **kw).run(on_epoch_end=stop_after_two)
    params, meta = safetensors.load(tmp_path / "cut" / CHECKPOINT)
    assert meta["epoch"] == "2"
    train(cache, tmp_path / "cut", be, **kw).run(resume=True)
    whole = (tmp_path / "whole" / CHECKPOINT).read_bytes()
    assert (tmp_path / "cut" / CHECKPOINT).read_bytes() == whole
    rows = (tmp_path / "cut" / LOG).read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_resume_refuses_another_config_and_a_broken_checkpoint(cache, tmp_path, be):
    train(cache, tmp_path, be, epochs=1).run()
    with pytest.raises(ValueError, match="lr"):
        train(cache, tmp_path, be, epochs=1, lr=0.5).run(resume=True)
    raw = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(safetensors.SafetensorsError):
        train(cache, tmp_path, be, epochs=1).run(resume=True)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="verif"):
        TrainConfig(verif="l3")
    with pytest.raises(ValueError, match="batch"):
        TrainConfig(batch=1)
