"""Training the 5-point landmark net (training.landmarks): learning on a synthetic
task, flip augmentation, target statistics, the command, checkpoints and exact
resume, and the argument checks of the landmark training commands."""

import json

import cv2
import numpy as np
import pytest

from deepid2_core.nets import landmark as NL
from deepid2_core.face import landmarks as FL
from deepid2_core.training import checkpoint as TK
from deepid2_core.training import landmarks as TL
from deepid2_core.training import mtfl as TM
from deepid2_core.training.loop import Loop
from mtfl_synth import tiny_mtfl


def synthetic_cache(n=6, size=39, seed=0, jitter=3):
    """A LandmarkCache of drawn faces: dark eyes, nose and mouth corners on grey."""
    rng = np.random.default_rng(seed)
    c = TM.CONTEXT
    ctx = np.full((n, c, c), 120, np.uint8)
    pts = np.empty((n, 5, 2), np.float32)
    for i in range(n):
        base = np.array([[30, 32], [50, 32], [40, 42], [33, 50], [47, 50]], float)
        pts[i] = base + rng.uniform(-jitter, jitter, (5, 2))
        for k, (px, py) in enumerate(pts[i]):
            cv2.circle(ctx[i], (int(round(px)), int(round(py))), 2 + (k == 0), 20 + 40 * k, -1)
    box = [20.0, 20.0, 40.0, 40.0]
    crops, inv = [], []
    for i in range(n):
        m = FL.crop_matrix(box, size, 1.2)
        crops.append(FL.warp(ctx[i], m, size))
        inv.append(FL.invert_affine(m))
    tensors = dict(ctx=ctx, ctx_points=pts, ctx_boxes=np.tile(np.float32([box, box]), (n, 1, 1)),
                   found=np.ones(n, np.uint8), box_ok=np.ones(n, np.uint8), crop=np.stack(crops),
                   crop_inv=np.stack(inv),
                   points=pts.astype(np.float64))
    meta = dict(key="synthetic", paths=json.dumps([f"{i}.png" for i in range(n)]), skipped="[]",
                detector="haar", list_file="synthetic.txt", dropped_bad="0")
    return TM.LandmarkCache(tensors, meta)


def test_loss_falls_on_a_synthetic_regression_task(tmp_path, be):
    """Drawn faces whose points move: the real trainer learns where they are."""
    cache = synthetic_cache(96, jitter=6)
    state = trainer(cache, tmp_path, be, epochs=30, batch=16, lr=0.01, val_fraction=0.25).run()
    h = state["history"]  # about 6.0 -> 1.8 and 0.20 -> 0.10 (OpenCV 4.14 and 5.0)
    assert np.mean([r["loss"] for r in h[-3:]]) < 0.5 * h[0]["loss"], [r["loss"] for r in h]
    assert h[-1]["val_nme"] < 0.7 * h[0]["val_nme"], [r["val_nme"] for r in h]


def test_flipped_batches_mirror_the_crop_and_swap_the_labels():
    cache = synthetic_cache(1)
    cfg = TL.LandmarkTrainConfig(flip=True, shift=0.0, scale=0.0, rotate=0.0, fallback_share=0.0)
    net_cfg = NL.LandmarkNetConfig()
    got = {}
    for seed in range(40):  # make_batch draws the flips first: find one draw of each
        flipped = bool(np.random.default_rng(seed).random(1)[0] < 0.5)
        got.setdefault(flipped, TL.make_batch(cache, np.array([0]),
                                             np.random.default_rng(seed), cfg, net_cfg))
    (xp, tp), (xf, tf) = got[False], got[True]
    assert np.allclose(xf[0, 0], xp[0, 0][:, ::-1], atol=1e-4)  # the mirror image
    tp, tf = tp.reshape(5, 2), tf.reshape(5, 2)
    assert np.allclose(tf, FL.flip_points(tp), atol=1e-6)
    for t in (tp, tf):  # "left as seen" stays left of "right as seen"
        assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]

    def value_at(x, t, k):
        u = np.clip(np.round(t[k] * 39 - 0.5).astype(int), 0, 38)
        return x[0, 0, u[1], u[0]]

    # the person's eye drawn darkest (image-left, label 0, unflipped) is label 1 once mirrored
    assert value_at(xp, tp, 0) < value_at(xp, tp, 1)
    assert value_at(xf, tf, 1) < value_at(xf, tf, 0)


def test_train_landmarks_main_writes_a_model_with_its_command(tmp_path, be):
    root = tiny_mtfl(tmp_path / "mtfl")
    out = tmp_path / "run"
    s = TL.train_landmarks_main(root, out, epochs=2, seed=1, batch=4, detector="central",
                               progress=False, log=lambda *a: None,
                               command="deepid2 train-landmarks --data D --out O")
    for name in (TL.FINAL, TK.BEST, TK.CHECKPOINT, TK.LOG, TK.PLOT, TL.EVAL):
        assert (out / name).stat().st_size > 0
    model = FL.load_landmark_model(out / TL.FINAL)
    assert model.meta["command"] == "deepid2 train-landmarks --data D --out O"
    assert json.loads(model.meta["train"])["detector"] == "central"
    assert json.loads(model.meta["test"])["n"] == 12 and s["test"]["n"] == 12
    with pytest.raises(ValueError, match="detector"):
        TL.train_landmarks_main(root, out, epochs=1, detector="nope", progress=False,
                               log=lambda *a: None)


def trainer(cache, run_dir, be, **kw):
    base = dict(epochs=2, batch=4, lr=0.01, seed=3, val_fraction=0.34, detector="haar")
    base.update(kw)
    return Loop(TL.LandmarkTask(cache, run_dir, TL.LandmarkTrainConfig(**base), be),
                log=lambda *a: None, progress=False)


def test_checkpoint_round_trip_and_exact_resume(tmp_path, be):
    cache = synthetic_cache(12)
    whole = trainer(cache, tmp_path / "whole", be, epochs=3).run()
    for name in (TK.CHECKPOINT, TK.BEST, TK.LOG, TK.PLOT):
        assert (tmp_path / "whole" / name).stat().st_size > 0

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(cache, tmp_path / "cut", be, epochs=3).run(on_epoch_end=stop_after_two)
    resumed = trainer(cache, tmp_path / "cut", be, epochs=3).run(resume=True)
    assert (tmp_path / "whole" / TK.CHECKPOINT).read_bytes() == \
        (tmp_path / "cut" / TK.CHECKPOINT).read_bytes()
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    # the saved model loads and predicts exactly as the trained parameters do
    model = FL.load_landmark_model(tmp_path / "whole" / TK.BEST)
    assert model.meta["format"] == FL.MODEL_FORMAT and model.cfg == NL.LandmarkNetConfig()
    ck = FL.load_landmark_model(tmp_path / "whole" / TK.CHECKPOINT)
    for k, v in TL.LandmarkTask.model_params(whole).items():
        assert np.array_equal(ck.params[k], v)
    x = FL.standardise(cache.crop[:3])
    assert np.array_equal(ck.predict_normalised(x), FL.load_landmark_model(
        tmp_path / "whole" / TK.BEST).predict_normalised(x)) or whole["best_epoch"] != 3
    with pytest.raises(ValueError, match="different config"):
        trainer(cache, tmp_path / "whole", be, epochs=3, lr=0.02).run(resume=True)


def test_augmented_target_statistics(tmp_path):
    with pytest.raises(ValueError, match="target_stats"):
        TL.LandmarkTrainConfig(target_stats="batch")
    assert TL.LandmarkTrainConfig().target_stats == "crops"  # the shipped model's


# -- issue 15, point 2: arguments checked before any work; damaged checkpoints ------------
def cli_error(capsys, args):
    from deepid2_core.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize("option, value, named", [
    ("--lr", "-1", "learning rate (--lr) must be a finite number above 0, got -1.0"),
    ("--lr", "0", "learning rate (--lr) must be a finite number above 0, got 0.0"),
    ("--epochs", "0", "epochs and batch must be at least 1, got 0, 4"),
    ("--batch", "0", "epochs and batch must be at least 1, got 1, 0"),
    ("--shift", "-1", "shift must be at least 0, got -1.0"),
    ("--fallback-share", "2", "fallback_share must be in [0, 1], got 2.0"),
    ("--seed", "-1", "seed (--seed) must be at least 0, got -1"),
])
def test_train_landmarks_refuses_bad_arguments_before_any_work(tmp_path, capsys, option, value,
                                                               named):
    root, out = tiny_mtfl(tmp_path / "mtfl"), tmp_path / "run"
    err = cli_error(capsys, ["train-landmarks", "--data", str(root), "--out", str(out),
                             "--epochs", "1", "--batch", "4", option, value])
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("option, value, named", [
    ("--lr", "-1", "learning rate (--lr) must be a finite number above 0, got -1.0"),
    ("--epochs", "0", "epochs and batch must be at least 1, got 0, 4"),
    ("--scale", "-0.1", "scale must be at least 0, got -0.1"),
    ("--displace", "-1", "displace must be at least 0, got -1.0"),
])
def test_train_landmark_cascade_refuses_bad_arguments_before_any_work(tmp_path, capsys, option,
                                                                      value, named):
    root, out = tiny_mtfl(tmp_path / "mtfl"), tmp_path / "run"
    err = cli_error(capsys, ["train-landmark-cascade", "--data", str(root), "--out", str(out),
                             "--levels", "2", "--epochs", "1", "--batch", "4", option, value])
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


def flip_tensor_bytes(path):
    raw = bytearray(path.read_bytes())
    raw[-200:-100] = bytes(b ^ 0xFF for b in raw[-200:-100])
    path.write_bytes(bytes(raw))


def test_resume_of_a_damaged_landmark_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    from deepid2_core.cli import main
    root = tiny_mtfl(tmp_path / "mtfl", n=24)
    l1 = ["train-landmarks", "--data", str(root), "--out", str(tmp_path / "l1"), "--epochs",
          "1", "--batch", "4", "--detector", "central"]
    assert main(l1) == 0
    ckpt = tmp_path / "l1" / TK.CHECKPOINT
    flip_tensor_bytes(ckpt)
    capsys.readouterr()
    line = cli_error(capsys, l1 + ["--resume", "--epochs", "2"])[-1]
    assert line.startswith(f"deepid2 train-landmarks: error: {ckpt}: tensor data damaged"), line

    cas = ["train-landmark-cascade", "--data", str(root), "--out", str(tmp_path / "cas"),
           "--level1", str(tmp_path / "l1" / TL.FINAL), "--levels", "2", "--epochs", "1",
           "--batch", "4"]
    assert main(cas) == 0
    ckpt = tmp_path / "cas" / "level2" / TK.CHECKPOINT
    flip_tensor_bytes(ckpt)
    capsys.readouterr()
    line = cli_error(capsys, cas + ["--resume", "--epochs", "2"])[-1]
    assert line.startswith(f"deepid2 train-landmark-cascade: error: {ckpt}: tensor data "
                           f"damaged"), line
    assert not (tmp_path / "cas" / ".lock").exists() and not (tmp_path / "l1" / ".lock").exists()
