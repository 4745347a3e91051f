"""Algorithm 1 on synthetic faces: learning, reproducibility, exact resume."""

import json

import pytest

from deepid2_core import safetensors
from deepid2_core.data import build_cache
from deepid2_core.face.inputs import PatchSpec
from deepid2_core.synth import make_dataset
from deepid2_core.training.checkpoint import CHECKPOINT, BEST, LOG, PLOT
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
from deepid2_core.training.loop import Loop


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
    return Loop(DeepID2Task(cache, run_dir, config(**kw), be), log=lambda *a: None,
                progress=False)


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


def test_a_run_without_validation_images_resumes_bit_for_bit(cache, tmp_path, be):
    """Its best epoch is that of the best training accuracy, stored as a plain
    number that a resume reads back (it was once numpy's repr, which it could not)."""
    kw = dict(epochs=2, val_fraction=0.0)
    whole = train(cache, tmp_path / "whole", be, **kw).run()

    def stop(state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cache, tmp_path / "cut", be, **kw).run(on_epoch_end=stop)
    _, meta = safetensors.load(tmp_path / "cut" / CHECKPOINT)
    assert meta["epoch"] == "1" and float(meta["best_val"]) == whole["history"][0]["train_acc"]
    train(cache, tmp_path / "cut", be, **kw).run(resume=True)
    for name in (CHECKPOINT, BEST):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


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


# -- issue 15, point 2: divergence, arguments, damaged checkpoints ------------------------
def test_a_diverging_loss_keeps_the_last_good_checkpoint(cache, tmp_path, be):
    from deepid2_core.training.loop import TrainingDiverged
    trainer = train(cache, tmp_path, be, epochs=3)
    task, saved = trainer.task, {}
    good = task.loss_and_grads

    def nan_in_epoch_2(state, batch, global_step, grads):
        metrics = good(state, batch, global_step, grads)
        if global_step == task.plan.steps_per_epoch + 1:
            metrics["loss"] = float("nan")
        return metrics

    task.loss_and_grads = nan_in_epoch_2
    with pytest.raises(TrainingDiverged) as e:
        trainer.run(on_epoch_end=lambda s: saved.update(
            {n: (tmp_path / n).read_bytes() for n in (CHECKPOINT, BEST, LOG)}))
    assert str(e.value) == (f"loss became nan at epoch 2 step 2; the last good checkpoint "
                            f"(epoch 1) is kept in {tmp_path}; lower --lr (a new run: --resume "
                            f"keeps the learning rate)")
    for name in (CHECKPOINT, BEST, LOG):  # nothing of the diverged epoch written
        assert (tmp_path / name).read_bytes() == saved[name], name


def test_weights_that_overflow_with_a_finite_loss_are_never_saved(cache, tmp_path, be):
    from deepid2_core.training.loop import TrainingDiverged
    trainer = train(cache, tmp_path, be)
    task = trainer.task
    good = task.loss_and_grads

    def overflow_on_the_last_step(state, batch, global_step, grads):
        metrics = good(state, batch, global_step, grads)
        if global_step == task.plan.steps_per_epoch - 1:  # the loss is finite, the weights not
            next(iter(state["params"].values()))[...] = float("inf")
        return metrics

    task.loss_and_grads = overflow_on_the_last_step
    with pytest.raises(TrainingDiverged, match="weights became non-finite in epoch 1; no "
                                               "checkpoint was written; lower --lr"):
        trainer.run()
    assert not (tmp_path / CHECKPOINT).exists() and not (tmp_path / BEST).exists()


def last_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "faces"
    make_dataset(root, identities=4, images_per_identity=6, seed=5, progress=False)
    return root


def cli_train(faces, out, *extra):
    from deepid2_core.cli import main
    return main(["train", "--data", str(faces), "--out", str(out), "--epochs", "1",
                 "--batch", "8", *extra])


def test_train_with_a_huge_learning_rate_exits_2_with_one_line(faces, tmp_path, capsys):
    assert cli_train(faces, tmp_path / "run", "--lr", "1e6") == 2
    line = last_error_line(capsys)
    assert line.startswith("deepid2 train: error: ") and line.endswith("lower --lr (a new run: "
                                                                       "--resume keeps the "
                                                                       "learning rate)")
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize("option, value, named", [
    ("--lr", "-1", "learning rate (--lr) must be a finite number above 0, got -1.0"),
    ("--lr", "0", "learning rate (--lr) must be a finite number above 0, got 0.0"),
    ("--lr", "inf", "learning rate (--lr) must be a finite number above 0, got inf"),
    ("--epochs", "0", "epochs must be at least 1, got 0"),
    ("--batch", "1", "batch must be at least 2 (one pair), got 1"),
    ("--val-fraction", "1", "validation fraction (--val-fraction) must be in [0, 1), got 1.0"),
    ("--val-fraction", "-0.5", "(--val-fraction) must be in [0, 1), got -0.5"),
    ("--same-share", "2", "same_share must be in [0, 1], got 2.0"),
    ("--lambda", "-1", "lambda must be at least 0, got -1.0"),
    ("--margin", "0", "margin must be above 0, got 0.0"),
    ("--warmup-steps", "-1", "warmup_steps must be at least 0, got -1"),
    ("--seed", "-3", "seed (--seed) must be at least 0, got -3"),
    ("--micro-batches", "0", "--micro-batches 0 must be a positive multiple"),
    ("--micro-batches", "3", "batch 8 must be a multiple of 2 x micro-batches = 6"),
])
def test_bad_arguments_are_refused_before_any_work(faces, tmp_path, capsys, option, value,
                                                   named):
    out = tmp_path / "run"
    assert cli_train(faces, out, option, value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "Traceback" not in err[0], err
    assert not out.exists()  # no cache built, no folder made


def flip_tensor_bytes(path):
    raw = bytearray(path.read_bytes())
    raw[-200:-100] = bytes(b ^ 0xFF for b in raw[-200:-100])
    path.write_bytes(bytes(raw))


def test_resume_of_a_damaged_checkpoint_exits_2_with_one_line(faces, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train(faces, out) == 0
    flip_tensor_bytes(out / CHECKPOINT)
    damaged = (out / CHECKPOINT).read_bytes()
    capsys.readouterr()
    assert cli_train(faces, out, "--resume", "--epochs", "2") == 2
    line = last_error_line(capsys)
    assert line.startswith(f"deepid2 train: error: {out / CHECKPOINT}: tensor data damaged")
    assert (out / CHECKPOINT).read_bytes() == damaged  # left as it was, for a look
