"""TrainConfig.ident_weight: loss = ident_weight * ident + lambda * verif.
0 trains the verification loss alone; the default 1.0 must leave runs and
their files exactly as they were before the field existed."""

import json

import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.backends.cpu import assemble_batch
from deepid2_core.data import build_cache
from deepid2_core.face.inputs import PatchSpec
from deepid2_core.synth import make_dataset
from deepid2_core.training import deepid2 as T
from deepid2_core.training.checkpoint import CHECKPOINT, BEST
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig, weigh_ident
from deepid2_core.training.loop import Loop

# the fields a checkpoint's "train" config held before ident_weight existed
FIELDS_BEFORE = {"epochs", "batch", "lr", "momentum", "weight_decay", "lam", "verif", "margin",
                 "learn_margin", "margin_min", "same_share", "warmup_steps", "val_fraction",
                 "flip", "seed"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root / "faces", identities=8, images_per_identity=12, seed=5, progress=False)
    return build_cache(root / "faces", root / "cache", PatchSpec(), progress=False)


def trainer(cache, run_dir, be, **kw):
    base = dict(epochs=2, batch=24, lr=0.02, seed=11, val_fraction=0.25)
    base.update(kw)
    return Loop(DeepID2Task(cache, run_dir, TrainConfig(**base), be), log=lambda *a: None,
                progress=False)


def test_weight_one_is_the_loss_itself_and_zero_removes_the_ident_gradient(cache, tmp_path, be):
    t = trainer(cache, tmp_path, be)
    state = t.task.init_state()
    acts = t.task.net.forward(state["params"], assemble_batch(cache.patches, np.arange(8)))
    labels = np.asarray(cache.labels[:8], np.int32)
    pa, pb = np.arange(4, dtype=np.int32), np.arange(4, 8, dtype=np.int32)
    py = np.where(labels[:4] == labels[4:], 1, -1).astype(np.int32)
    loss = be.joint_loss(acts["logits"], labels, acts["deepid"], pa, pb, py, lam=0.5,
                         params=state["verif"])
    assert weigh_ident(loss, 1.0) is loss
    zero = weigh_ident(loss, 0.0)
    assert not zero.dlogits.any()
    assert zero.dfeatures is loss.dfeatures
    assert zero.total == pytest.approx(0.5 * loss.verif, rel=1e-6)
    half = weigh_ident(loss, 0.5)
    np.testing.assert_array_equal(half.dlogits, loss.dlogits * np.float32(0.5))
    assert half.total == pytest.approx(0.5 * loss.ident + 0.5 * loss.verif, rel=1e-6)


def test_verification_alone_trains(cache, tmp_path, be, monkeypatch):
    seen = []
    t = trainer(cache, tmp_path, be, epochs=6, ident_weight=0.0, lam=1.0, margin=1.0)

    def spy(loss, ident_weight):   # every step's loss, as the step weighs it
        seen.append(weigh_ident(loss, ident_weight))
        return seen[-1]

    monkeypatch.setattr(T, "weigh_ident", spy)
    final = t.run()
    assert len(seen) == 6 * t.plan.steps_per_epoch
    h = final["history"]
    assert final["best_epoch"] == 6  # no classifier to pick by: the latest network
    assert all(not loss.dlogits.any() for loss in seen)
    assert all(loss.total == pytest.approx(loss.verif, rel=1e-5, abs=1e-7) for loss in seen)
    assert h[-1]["verif"] < 0.7 * h[0]["verif"], [r["verif"] for r in h]
    assert [r["loss"] for r in h] == pytest.approx([r["verif"] for r in h], rel=1e-5)
    meta = safetensors.load(tmp_path / CHECKPOINT)[1]
    assert json.loads(meta["train"])["ident_weight"] == 0.0


def test_default_weight_keeps_the_stored_config_and_resume_as_before(cache, tmp_path, be):
    trainer(cache, tmp_path / "one", be, epochs=1).run()
    for name in (CHECKPOINT, BEST):
        meta = safetensors.load(tmp_path / "one" / name)[1]
        assert set(json.loads(meta["train"])) == FIELDS_BEFORE  # same bytes as before
    # an old checkpoint (no ident_weight stored) resumes at 1.0, refuses 0.0
    with pytest.raises(ValueError, match="ident_weight"):
        trainer(cache, tmp_path / "one", be, epochs=1, ident_weight=0.0).run(resume=True)
    trainer(cache, tmp_path / "one", be, epochs=1).run(resume=True)
    # and a run at 0.0 refuses to resume at the default
    trainer(cache, tmp_path / "zero", be, epochs=1, ident_weight=0.0).run()
    with pytest.raises(ValueError, match="ident_weight"):
        trainer(cache, tmp_path / "zero", be, epochs=1).run(resume=True)
    trainer(cache, tmp_path / "zero", be, epochs=1, ident_weight=0.0).run(resume=True)


def test_bad_weights_are_named():
    with pytest.raises(ValueError, match="ident_weight"):
        TrainConfig(ident_weight=-1.0)
    with pytest.raises(ValueError, match="no loss"):
        TrainConfig(ident_weight=0.0, lam=0.0)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(ident_weight=0.0, warmup_steps=3)


def test_cli_passes_the_weight(monkeypatch):
    from deepid2_core.cli import main
    from deepid2_core.training import train_deepid2
    got = []
    monkeypatch.setattr(train_deepid2, "train_deepid2_main",
                        lambda data, out, spec, cfg, **kw: got.append(cfg) or {})
    assert main(["train", "--data", "d", "--out", "o", "--ident-weight", "0",
                 "--lambda", "1"]) == 0
    assert main(["train", "--data", "d", "--out", "o"]) == 0
    assert [(cfg.ident_weight, cfg.lam) for cfg in got] == [(0.0, 1.0), (1.0, 0.05)]
