"""One path from `deepid2 train` to the trainer: --micro-batches (the data-
parallel hook) trains on the patch the options name, with the same cache and
model metadata as a plain run (issue 14: it used to build its own whole-face
PatchSpec and write no `input`). And the loop's SGD keeps the margin's old
update bit for bit."""

import csv
import json

import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.backends import get_backend
from deepid2_core.cli import main
from deepid2_core.face.align import MEAN_SHAPE, to_pixels
from deepid2_core.face.align_output import CSV_COLUMNS, POINT_NAMES
from deepid2_core.synth import make_dataset
from deepid2_core.training.checkpoint import BEST, CHECKPOINT
from deepid2_core.training.loop import Group, sgd

MODEL_KEYS = ("format", "net", "train", "identities", "input")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Synthetic faces with a landmarks.csv of perturbed landmarks (as `deepid2 align` writes)."""
    root = tmp_path_factory.mktemp("paths") / "faces"
    make_dataset(root, identities=4, images_per_identity=6, seed=7, progress=False)
    rels = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.*"))
    rng = np.random.default_rng(1)
    base = to_pixels(MEAN_SHAPE, (250, 250))
    with open(root / "landmarks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for rel in rels:
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update(path=rel, face="1", status="ok", output=rel)
            for (x, y), p in zip(base + rng.uniform(-5, 5, (5, 2)), POINT_NAMES):
                row[f"aligned_{p}_x"], row[f"aligned_{p}_y"] = f"{x:.2f}", f"{y:.2f}"
            w.writerow([row[c] for c in CSV_COLUMNS])
    return root


def _train(root, out, options):
    args = ["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--batch", "8",
            "--seed", "2"] + options
    assert main(args) == 0


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("options, want", [
    (["--layout", "deepid2", "--patch", "14", "--lighting", "hist"],
     dict(kind="layout", index=14, lighting="hist")),
    (["--layout", "deepid", "--patch", "right_mouth@1/rgb", "--landmarks", "mean"],
     dict(kind="layout", name="right_mouth@1/rgb", landmarks="mean")),
    (["--layout", "deepid2", "--patch", "left_eye@1/gray", "--landmarks", "csv",
      "--lighting", "clahe"], dict(kind="layout", name="left_eye@1/gray", landmarks="csv")),
    (["--lighting", "clahe"], dict(lighting="clahe")),
])
def test_micro_batches_write_the_cache_and_model_metadata_of_a_plain_run(faces, tmp_path,
                                                                         options, want):
    _train(faces, tmp_path / "plain", options)
    _train(faces, tmp_path / "micro", options + ["--micro-batches", "2"])
    plain, micro = _files(tmp_path / "plain" / "cache"), _files(tmp_path / "micro" / "cache")
    assert plain and plain == micro
    for name in (BEST, CHECKPOINT):
        tp, mp = safetensors.load(str(tmp_path / "plain" / name))
        tm, mm = safetensors.load(str(tmp_path / "micro" / name))
        assert sorted(mp) == sorted(mm), name
        for key in MODEL_KEYS:
            assert mp.get(key) == mm.get(key), (name, key)
        assert {k: v.shape for k, v in tp.items()} == {k: v.shape for k, v in tm.items()}
    spec = json.loads(mm["input"])
    assert {k: spec[k] for k in want} == want
    net = json.loads(mm["net"])
    shape = (net["height"], net["width"], net["channels"])
    assert shape == np.load(tmp_path / "micro" / "cache" / "patches.npy", mmap_mode="r").shape[1:]


def test_the_margin_group_update_is_the_old_expression_bit_for_bit():
    """A momentum-0, no-decay group (the verification margin) moves exactly as
    `p -= float32(lr) * g` did, and its floor is the old clamp."""
    be = get_backend("cpu")
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 3))
        p = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4)).astype(np.float32)
        lr = float(rng.uniform(0, 0.5)) * 10.0 ** float(rng.integers(-4, 1))
        floor = float(rng.uniform(-1, 1))
        want = p - np.float32(lr) * g
        want_clamped = np.maximum(want, np.float32(floor))
        for min_value, expect in ((None, want), (floor, want_clamped)):
            got = p.copy()
            scratch = rng.standard_normal(n).astype(np.float32)  # momentum 0: never read
            sgd(be, [Group({"m": got}, {"m": scratch}, 0.0, min_value=min_value)], {"m": g}, lr)
            assert got.tobytes() == expect.tobytes()
        fixed = p.copy()
        sgd(be, [Group({"m": fixed}, {"m": scratch}, 0.0, trainable=False)], {"m": g}, lr)
        assert fixed.tobytes() == p.tobytes()
