"""The multi-patch verifier end to end on synthetic faces: one network per
layout patch (mixed shapes and colours), fit-verifier on them, the model
file's patch description, features against each network run alone on its
own patch cut, verify, and the errors of mismatched inputs."""
import json

import numpy as np
import pytest

from deepid2_core.backends import get_backend
from deepid2_core.cli import main
from deepid2_core.backends.cpu import assemble_batch
from deepid2_core.face.inputs import LayoutPatch, cut_layout_patch
from deepid2_core.face.detect import read_image
from deepid2_core.synth import make_dataset
from deepid2_core.verifier.commands import fit_layout
from deepid2_core.verifier.model import Verifier
from deepid2_core.verifier.features import PatchInputs, load_patch_network
from deepid2_core.nets.deepid2 import DeepID2
from deepid2_core.verifier.model_file import read_verifier_file, save_verifier

IDS, IMGS = 8, 6
PATCHES = ("inner_face@1/gray", "face@1/rgb", "left_eye_cheek@1.2/rgb")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("multipatch")
    faces = root / "faces"
    make_dataset(faces, IDS, IMGS, seed=3, progress=False, workers=1)
    runs = []
    for k, patch in enumerate(PATCHES):
        run = root / f"net{k}"
        assert main(["train", "--data", str(faces), "--out", str(run), "--epochs", "3",
                     "--batch", "16", "--lr", "0.05", "--seed", str(k), "--layout", "deepid2",
                     "--patch", patch, "--landmarks", "mean"]) == 0
        runs.append(run)
    model = root / "verifier.safetensors"
    assert main(["fit-verifier", "--nets"] + [str(r) for r in runs]
                + ["--data", str(faces), "--out", str(model), "--pca", "40",
                   "--pairs", "100"]) == 0
    return dict(root=root, faces=faces, runs=runs, model=model)


def test_model_file_describes_every_patch(world):
    m = read_verifier_file(str(world["model"]))
    assert m["layout"] == "deepid2" and m["patch_names"] == list(PATCHES)
    inputs = PatchInputs.from_dict(json.loads(m["metadata"]["patch_inputs"]))
    assert [s.name for s in inputs.specs] == list(PATCHES)
    shapes = [(c.height, c.width, c.channels) for c in m["nets"]]
    assert shapes == [(47, 47, 1), (55, 47, 3), (55, 47, 3)]
    assert m["pca_components"].shape == (len(PATCHES) * 320, 40)


def test_features_are_each_network_on_its_own_patch(world):
    model = Verifier.load(str(world["model"]), progress=False)
    path = str(world["faces"] / "synth00003" / "synth00003_0002.jpg")
    got = model.features([path])[0]
    face, _ = read_image(path)
    be = get_backend("cpu")
    want = []
    for run, patch in zip(world["runs"], PATCHES):
        params, cfg = load_patch_network(str(run / "best.safetensors"))
        plain, flipped = cut_layout_patch(face, LayoutPatch("deepid2", patch, "mean"))
        x = assemble_batch(np.stack([plain, flipped]), np.arange(2))
        want.append(DeepID2(cfg, be).features(params, x).reshape(-1))
    want = np.concatenate(want)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_verify_with_the_multi_patch_model(world, capsys):
    f = world["faces"]
    a, b = (f / "synth00001" / f"synth00001_000{k}.jpg" for k in (1, 2))
    assert main(["verify", str(a), str(b), "--model", str(world["model"]), "--aligned"]) == 0
    line = capsys.readouterr().out
    assert "threshold" in line and ("same person" in line or "different people" in line)


def test_cached_features_are_shared_between_models(world, tmp_path, monkeypatch):
    from deepid2_core.verifier import features as F
    cache = tmp_path / "cache"
    path = str(world["faces"] / "synth00002" / "synth00002_0001.jpg")
    layout, nets = fit_layout([str(r) for r in world["runs"]])
    full = F.FeatureExtractor(layout, nets, get_backend("cpu"), cache_dir=cache,
                              progress=False).extract([path])
    # a model of the last two networks finds both in the cache: nothing to compute
    monkeypatch.setattr(F.FeatureExtractor, "_compute", lambda *a: pytest.fail("cache missed"))
    two = F.FeatureExtractor(PatchInputs(layout.specs[1:]), nets[1:], get_backend("cpu"),
                             cache_dir=cache, progress=False).extract([path])
    np.testing.assert_array_equal(two, full[:, 320:])


def test_errors(world, tmp_path):
    runs = [str(r) for r in world["runs"]]
    with pytest.raises(ValueError, match="more than one network"):
        fit_layout([runs[0], runs[1], runs[0]])
    m = read_verifier_file(str(world["model"]))
    meta = {k: v for k, v in m["metadata"].items()
            if k not in ("format", "net", "nets", "patches", "layout", "verifier")}
    inputs = json.loads(meta["patch_inputs"])
    inputs["inputs"] = inputs["inputs"][:2]
    meta["patch_inputs"] = json.dumps(inputs)
    bad = tmp_path / "bad.safetensors"
    save_verifier(str(bad), m["patch_params"], m["nets"], m["patch_names"], m["layout"],
                  m["pca_mean"], m["pca_components"], m["jb_A"], m["jb_G"], m["threshold"],
                  extra_meta=meta)
    with pytest.raises(ValueError, match="patch_inputs lists 2 patches for 3 networks"):
        Verifier.load(str(bad), progress=False)
