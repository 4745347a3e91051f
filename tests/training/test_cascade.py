"""Training the landmark cascade's refinement levels (training.cascade): samples,
learning to refine, reproducible and resumable training, the command."""

import json

import numpy as np
import pytest

from deepid2_core.face import landmarks as FL
from deepid2_core.training import landmarks as TL
from deepid2_core.training.loop import Loop
from deepid2_core.nets import refine as NR
from deepid2_core.face import landmark_cascade as FC
from deepid2_core.training import cascade as TC
from mtfl_synth import tiny_mtfl


def dots_images(n, seed=0, size=64):
    """Grey images with 5 dark dots at jittered face-like places, and their points."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size), 150, np.uint8)
    pts = np.empty((n, 5, 2))
    base = np.array([[22, 24], [42, 24], [32, 34], [25, 44], [39, 44]], float)
    for i in range(n):
        pts[i] = base + rng.uniform(-3, 3, (5, 2))
        for px, py in pts[i]:  # a dot of radius 2.5 px, anti-aliased
            yy, xx = np.mgrid[0:size, 0:size]
            d = np.hypot(xx - px, yy - py)
            imgs[i] = np.minimum(imgs[i], np.clip(30 + 120 * (d - 2.0), 30, 150)).astype(np.uint8)
    return TC.TrainImages(imgs, np.tile([size, size], (n, 1)), pts)


def test_training_samples_put_the_truth_where_the_targets_say():
    data = dots_images(4)
    cfg = TC.RefineTrainConfig(displace=0.2, max_displace=0.3, rotate=15.0, scale=0.1, flip=True)
    lc = NR.RefineLevelConfig(patches=(1.2, 1.6), size=15)
    patches, target = TC.make_samples(data, np.arange(4), np.random.default_rng(1), cfg, lc)
    assert patches.shape == (4, 5, 2, 1, 15, 15) and target.shape == (4, 5, 2, 2)
    assert np.abs(target).max() < 0.5  # the truth stays inside every patch
    # where its target says, each patch shows its dot: as dark as the darkest pixel, and
    # the patch centre is not there (displaced)
    moved = 0
    for i in range(4):
        for p in range(5):
            for j in range(2):
                q = patches[i, p, j, 0]
                u, v = np.round(target[i, p, j] * 15 + 7).astype(int)
                lo, hi = q.min(), q.max()
                assert q[v, u] <= lo + 0.2 * (hi - lo), (i, p, j, (u, v), q[v, u], lo, hi)
                moved += np.hypot(*(target[i, p, j] * 15)) > 1
    assert moved > 20


def train_dots_level(tmp_path, be, epochs=20, n=96, **kw):
    data = dots_images(n, seed=1)
    cfg = TC.RefineTrainConfig(epochs=epochs, batch=16, lr=0.02, displace=0.12, rotate=10.0,
                              seed=2, **kw)
    lc = NR.RefineLevelConfig(patches=(1.3,), size=15, conv1=8, conv2=16, hidden=24)
    start = data.points[:8] + 1.5
    tr = Loop(TC.CascadeTask(data, np.arange(8, n), np.arange(8), start, tmp_path, 2, lc, cfg,
                             be), log=lambda *a: None, progress=False)
    return tr, tr.run()


def test_refinement_moves_a_displaced_prediction_toward_the_truth(tmp_path, be):
    tr, state = train_dots_level(tmp_path, be)
    level = tr.task.model_level(state)
    test = dots_images(6, seed=9)
    rng = np.random.default_rng(3)
    _, r = FC.shape_frame(test.points, False)
    start = test.points + rng.normal(0, 0.15, test.points.shape) * r[:, None, None]
    before = np.linalg.norm(start - test.points, axis=2)
    cas = FC.LandmarkCascade([level])
    after = np.stack([np.linalg.norm(cas.refine(test.images[i], start[i:i + 1])[0]
                                     - test.points[i], axis=1) for i in range(6)])
    assert after.mean() < 0.4 * before.mean(), (before.mean(), after.mean())  # 2.2 -> 0.5 px
    assert (after < before).mean() > 0.9
    h = state["history"]
    assert h[-1]["val_nme"] < h[0]["val_nme"] and h[-1]["loss"] < 0.7 * h[0]["loss"]


def test_cascade_training_is_reproducible_and_resumes_exactly(tmp_path, be):
    _, whole = train_dots_level(tmp_path / "whole", be, epochs=3, n=48)

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    data = dots_images(48, seed=1)
    cfg = TC.RefineTrainConfig(epochs=3, batch=16, lr=0.02, displace=0.12, rotate=10.0, seed=2)
    lc = NR.RefineLevelConfig(patches=(1.3,), size=15, conv1=8, conv2=16, hidden=24)
    mk = lambda: Loop(TC.CascadeTask(data, np.arange(8, 48), np.arange(8),  # noqa: E731
                                     data.points[:8] + 1.5, tmp_path / "cut", 2, lc, cfg, be),
                      log=lambda *a: None, progress=False)
    with pytest.raises(KeyboardInterrupt):
        mk().run(on_epoch_end=stop_after_two)
    resumed = mk().run(resume=True)
    ck = "level2/checkpoint.safetensors"
    assert (tmp_path / "whole" / ck).read_bytes() == (tmp_path / "cut" / ck).read_bytes()
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    with pytest.raises(ValueError, match="different config"):
        Loop(TC.CascadeTask(data, np.arange(8, 48), np.arange(8), data.points[:8],
                            tmp_path / "cut", 2, lc, TC.RefineTrainConfig(epochs=3, batch=16,
                                                                          lr=0.03), be),
             log=lambda *a: None, progress=False).run(resume=True)


def test_train_cascade_main_writes_a_model_with_both_levels(tmp_path, be):
    root = tiny_mtfl(tmp_path / "mtfl", n=24)
    TL.train_landmarks_main(root, tmp_path / "l1", epochs=1, batch=4, detector="central",
                           progress=False, log=lambda *a: None, evaluate_test=False)
    out = tmp_path / "cas"
    s = TC.train_cascade_main(root, out, level1=tmp_path / "l1" / TL.FINAL, epochs=2, batch=4,
                             progress=False, log=lambda *a: None,
                             command="deepid2 train-landmark-cascade --data D --out O")
    model = FL.load_landmark_model(out / TL.FINAL)
    assert [lv.number for lv in model.cascade.levels] == [2]
    assert model.meta["cascade_command"] == "deepid2 train-landmark-cascade --data D --out O"
    assert json.loads(model.meta["train"])["detector"] == "central"  # level 1's, kept
    assert json.loads(model.meta["cascade_test"])["n"] == 24 == s["test"]["n"]
    assert len(json.loads(model.meta["cascade_val"])) == 2
    for name in ("level2/checkpoint.safetensors", "level2/best.safetensors", "level2/log.jsonl",
                 TL.EVAL):
        assert (out / name).stat().st_size > 0
    # the command line: the same run, its command recorded
    from deepid2_core.cli import main
    args = ["train-landmark-cascade", "--data", str(root), "--level1",
            str(tmp_path / "l1" / TL.FINAL), "--levels", "2", "--epochs", "2", "--batch", "4"]
    assert main(args + ["--out", str(tmp_path / "cli")]) == 0
    again = FL.load_landmark_model(tmp_path / "cli" / TL.FINAL)
    assert again.meta["cascade_command"].startswith("deepid2 train-landmark-cascade --data ")
    for k, v in model.cascade.tensors().items():
        assert np.array_equal(again.cascade.tensors()[k], v), k  # the same bits
    assert main(args + ["--out", str(tmp_path / "bad"), "--displace", "0.1", "0.2"]) == 2
