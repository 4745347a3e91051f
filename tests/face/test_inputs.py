"""Training on one patch of a multi-patch layout (issue 5), and the lighting
option of the patch cache."""

import csv
import json

import cv2
import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.cli import main
from deepid2_core.backends.cpu import assemble_batch
from deepid2_core.data import PatchCache, build_cache
from deepid2_core.face.align import MEAN_SHAPE, to_pixels
from deepid2_core.face.align_output import CSV_COLUMNS, POINT_NAMES
from deepid2_core.face.inputs import LayoutPatch, PatchSpec, normalise_lighting
from deepid2_core.face.patches import (DEEPID, DEEPID2, cut_flipped, cut_patch, flip_partner,
                                       patch_name, resolve_patch)
from deepid2_core.synth import make_dataset
from deepid2_core.training.checkpoint import BEST
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
from deepid2_core.training.loop import Loop

LEFT_EYE = DEEPID2.index("left_eye", 2, "gray")       # landmark-centred, scale 1
RIGHT_EYE = DEEPID2.index("right_eye", 2, "gray")


def _write_csv(root, landmarks):
    """A landmarks.csv as `deepid2 align` writes it (only the columns read here filled)."""
    with open(root / "landmarks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for rel, lm in landmarks.items():
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update(path=rel, face="1", status="ok", output=rel)
            for (x, y), p in zip(lm, POINT_NAMES):
                row[f"aligned_{p}_x"], row[f"aligned_{p}_y"] = f"{x:.2f}", f"{y:.2f}"
            w.writerow([row[c] for c in CSV_COLUMNS])


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Synthetic 'aligned' faces; landmarks.csv lists all but one of them, each with
    its own (asymmetric) landmarks."""
    root = tmp_path_factory.mktemp("aligned") / "faces"
    make_dataset(root, identities=4, images_per_identity=6, seed=3, progress=False)
    rels = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.*"))
    rng = np.random.default_rng(0)
    base = to_pixels(MEAN_SHAPE, (250, 250))
    lms = {r: np.round(base + rng.uniform(-6, 6, (5, 2)), 2) for r in rels[1:]}  # as the CSV
    _write_csv(root, lms)
    return root, rels, lms


def test_patch_names_and_indices():
    assert resolve_patch(DEEPID2, "left_eye@1/gray") == LEFT_EYE
    assert resolve_patch(DEEPID2, str(LEFT_EYE)) == LEFT_EYE == resolve_patch(DEEPID2, LEFT_EYE)
    assert all(resolve_patch(DEEPID, patch_name(DEEPID, k)) == k for k in range(len(DEEPID)))
    with pytest.raises(ValueError, match="no patch"):
        resolve_patch(DEEPID2, "left_ear@1/gray")
    with pytest.raises(ValueError, match="out of range"):
        resolve_patch(DEEPID2, 200)
    spec = LayoutPatch("deepid2", "left_eye@1/gray")
    assert (spec.index, spec.shape) == (LEFT_EYE, (47, 47, 1))
    assert LayoutPatch.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_layout_cache_holds_each_patch_and_its_cut_flipped_counterpart(faces, tmp_path):
    root, rels, lms = faces
    cache = build_cache(root, tmp_path / "c", LayoutPatch("deepid2", LEFT_EYE), progress=False)
    assert cache.spec.landmarks == "csv"              # "auto" with a landmarks.csv
    assert cache.index["without_landmarks"] == 1
    assert cache.patches.shape == cache.flipped.shape == (len(rels), 47, 47, 1)
    for i, rel in enumerate(cache.paths):
        img = cv2.imread(str(root / rel))
        lm = lms.get(rel, to_pixels(MEAN_SHAPE, (250, 250)))
        np.testing.assert_array_equal(cache.patches[i], cut_patch(img, lm, DEEPID2, LEFT_EYE))
        np.testing.assert_array_equal(cache.flipped[i], cut_flipped(img, lm, DEEPID2, LEFT_EYE))
        # the left eye flips into the mirrored right eye, not into its own mirror image
        np.testing.assert_array_equal(cache.flipped[i],
                                      cut_patch(img, lm, DEEPID2, RIGHT_EYE)[:, ::-1])
    assert not np.array_equal(cache.flipped, cache.patches[:, :, ::-1])
    # reloaded as it is; "mean" landmarks are another cache
    assert build_cache(root, tmp_path / "c", LayoutPatch("deepid2", LEFT_EYE),
                       progress=False).reused
    mean = build_cache(root, tmp_path / "m", LayoutPatch("deepid2", LEFT_EYE, "mean"),
                       progress=False)
    assert not np.array_equal(mean.patches, cache.patches)


def test_changed_landmarks_rebuild_the_cache(faces, tmp_path):
    root, rels, lms = faces
    src = tmp_path / "faces"
    src.mkdir()
    for rel in rels[:8]:
        (src / rel).parent.mkdir(exist_ok=True)
        (src / rel).write_bytes((root / rel).read_bytes())
    _write_csv(src, {r: lms[r] for r in rels[1:8]})
    spec = LayoutPatch("deepid2", "nose@1/rgb")
    a = np.array(build_cache(src, tmp_path / "c", spec, progress=False).patches)
    _write_csv(src, {r: lms[r] + 3.0 for r in rels[1:8]})
    b = build_cache(src, tmp_path / "c", spec, progress=False)
    assert not b.reused and not np.array_equal(a, b.patches)


def test_trainer_uses_the_stored_counterpart_for_flipped_samples(faces, tmp_path, be):
    root, _, _ = faces
    cache = build_cache(root, tmp_path / "c", LayoutPatch("deepid2", LEFT_EYE), progress=False)
    cfg = TrainConfig(epochs=1, batch=8, lr=0.01, seed=1, val_fraction=0.2)
    tr = Loop(DeepID2Task(cache, tmp_path / "run", cfg, be), log=lambda *a: None,
              progress=False)
    images = np.array([0, 1, 2, 3, 4, 5])
    flips = np.array([True, False, True, False, False, True])
    buf = be.xp.empty((6, 1, 47, 47), np.float32)
    x = be.to_host(tr.task.assemble(images, flips, buf))
    np.testing.assert_array_equal(x[~flips], assemble_batch(cache.patches, images[~flips]))
    np.testing.assert_array_equal(x[flips], assemble_batch(cache.flipped, images[flips]))
    state = tr.run()
    assert state["epoch"] == 1
    _, meta = safetensors.load(str(tmp_path / "run" / BEST))
    assert json.loads(meta["input"])["name"] == "left_eye@1/gray"


def test_fixed_crop_cache_and_model_are_unchanged_by_the_new_options(tmp_path):
    assert "lighting" not in PatchSpec().to_dict()      # keys made from it stay the same
    assert PatchSpec.from_dict(PatchSpec().to_dict()) == PatchSpec()
    spec = PatchSpec(lighting="clahe")
    assert PatchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="lighting"):
        PatchSpec(lighting="gamma")


def test_lighting_equalises_the_luminance():
    rng = np.random.default_rng(0)
    grey = (rng.random((55, 47, 1)) * 60 + 80).astype(np.uint8)       # low contrast
    np.testing.assert_array_equal(normalise_lighting(grey, "hist")[:, :, 0],
                                  cv2.equalizeHist(grey[:, :, 0]))
    assert normalise_lighting(grey, "none") is grey
    rgb = (rng.random((55, 47, 3)) * 60 + 80).astype(np.uint8)
    for mode in ("hist", "clahe"):
        out = normalise_lighting(rgb, mode)
        y_in = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[:, :, 0]
        y_out = cv2.cvtColor(out, cv2.COLOR_RGB2YCrCb)[:, :, 0]
        assert out.shape == rgb.shape and y_out.std() > 1.5 * y_in.std(), mode


def test_lighting_cache(faces, tmp_path):
    root, _, _ = faces
    plain = build_cache(root, tmp_path / "a", PatchSpec(), progress=False)
    eq = build_cache(root, tmp_path / "b", PatchSpec(lighting="hist"), progress=False)
    assert PatchCache.load(tmp_path / "b").spec.lighting == "hist"
    for i in range(3):
        np.testing.assert_array_equal(eq.patches[i], normalise_lighting(plain.patches[i], "hist"))


def test_cli_trains_on_a_layout_patch(faces, tmp_path, capsys):
    root, _, _ = faces
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1",
                 "--batch", "8", "--layout", "deepid", "--patch", "right_mouth@1/rgb"]) == 0
    _, meta = safetensors.load(str(out / BEST))
    assert json.loads(meta["input"])["index"] == DEEPID.index("right_mouth", 1, "rgb")
    assert json.loads(meta["net"])["channels"] == 3
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "r2"),
                 "--patch", "3"]) == 2
    assert "--layout" in capsys.readouterr().err


def test_flip_partner_of_a_symmetric_region_is_itself():
    k = DEEPID2.index("nose", 2, "rgb")
    assert flip_partner(DEEPID2, k) == k
    assert flip_partner(DEEPID2, LEFT_EYE) == RIGHT_EYE
