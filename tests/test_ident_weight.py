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
from deepid2_core.training.deepid2 import CHECKPOINT, BEST, Trainer, TrainConfig, weigh_ident

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
    return Trainer(cache, run_dir, TrainConfig(**base), be, log=lambda *a: None, progress=False)


def test_weight_one_is_the_loss_itself_and_zero_removes_the_ident_gradient(cache, tmp_path, be):
    t = trainer(cache, tmp_path, be)
    state = t.fresh_state()
    acts = t.net.forward(state["params"], assemble_batch(cache.patches, np.arange(8)))
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
    step = t.step

    def spy(state, epoch, s, xbuf):
        loss, n = step(state, epoch, s, xbuf)
        seen.append(loss)
        return loss, n

    monkeypatch.setattr(t, "step", spy)
    final = t.run()
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


def test_cli_passes_the_weight():
    from deepid2_core.cli import _train_config, build_parser
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--ident-weight", "0",
                                      "--lambda", "1"])
    cfg = _train_config(args)
    assert (cfg.ident_weight, cfg.lam) == (0.0, 1.0)
    assert _train_config(build_parser().parse_args(["train", "--data", "d", "--out", "o"])) \
        .ident_weight == 1.0
