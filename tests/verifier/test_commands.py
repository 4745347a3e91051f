"""The verifier commands end to end on synthetic faces: fit-verifier on a tiny
trained net, verify, enroll / identify, eval-lfw, and their error paths."""
import json
import os

import cv2
import numpy as np
import pytest

from deepid2_core.cli import main
from deepid2_core.face.detect import read_image
from deepid2_core.face.pipeline import align_image, new_aligner
from deepid2_core.verifier.model_file import read_verifier_file
from verifier_world import IDS, IMGS, world  # noqa: F401  (the synthetic faces and model)



def detectable(faces, n):
    """The first n synthetic images in which the Haar pipeline finds a face."""
    aligner, found = new_aligner(), []
    for d in sorted(os.listdir(faces)):
        for f in sorted(os.listdir(faces / d)):
            img, _ = read_image(str(faces / d / f))
            if align_image(img, aligner=aligner)[0] is not None:
                found.append(faces / d / f)
                if len(found) == n:
                    return found
    pytest.fail("too few synthetic faces detected")


def test_fit_verifier_writes_a_loadable_file(world):
    m = read_verifier_file(str(world["model"]))
    assert m["layout"] == "whole" and m["pca_components"].shape == (320, 24)
    assert np.isfinite(m["threshold"]) and "l2_threshold" in m
    assert json.loads(m["metadata"]["trained_on"])["identities"] == IDS
    # the identities were learned: far better than chance on held-back training pairs
    assert float(m["metadata"]["train_pair_accuracy"]) > 0.75


def test_verify_same_and_different(world, capsys):
    f = world["faces"]
    same = [f / "synth00002" / f"synth00002_000{k}.jpg" for k in (1, 2)]
    other = f / "synth00005" / "synth00005_0001.jpg"
    model = ["--model", str(world["model"]), "--aligned"]
    results = []
    for a, b in ((same[0], same[1]), (same[0], other)):
        assert main(["verify", str(a), str(b)] + model) == 0
        line = capsys.readouterr().out.splitlines()[0]
        results.append(line)
        assert "score" in line and "threshold" in line
    assert results[0].startswith("same person") and results[1].startswith("different people")
    score = lambda line: float(line.split("score ")[1].split(",")[0])
    assert score(results[0]) > score(results[1])
    # plain photographs: detection, landmarks and alignment inside
    a, b = detectable(f, 2)
    assert main(["verify", str(a), str(b), "--model", str(world["model"])]) == 0
    assert "threshold" in capsys.readouterr().out


def test_verify_errors(world, tmp_path, capsys):
    good = str(world["faces"] / "synth00000" / "synth00000_0001.jpg")
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((250, 250, 3), 128, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    cases = [([good, str(blank), "--model", str(world["model"])], "no face found"),
             ([good, str(corrupt), "--model", str(world["model"])], "cannot read"),
             ([good, str(tmp_path / "nope.jpg"), "--model", str(world["model"])], "cannot read"),
             ([good, good, "--model", str(tmp_path / "missing.safetensors")], "does not exist"),
             ([good, good, "--model", str(corrupt)], str(corrupt))]
    for argv, message in cases:
        assert main(["verify"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_fit_verifier_errors(world, tmp_path, capsys):
    out = str(tmp_path / "v.safetensors")
    for argv, message in [
            (["--nets", str(tmp_path), "--data", str(world["faces"])], "no trained network"),
            (["--nets", str(world["run"]), "--data", str(tmp_path / "none")], "does not exist"),
            (["--nets", str(world["run"]), "--data", str(world["faces"]), "--pca", "9999"],
             "--pca 9999"),
            (["--nets", str(world["run"]), str(world["run"]), "--data", str(world["faces"])],
             "more than one network")]:
        assert main(["fit-verifier", "--out", out] + argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not os.path.exists(out)


def test_enroll_then_identify(world, tmp_path, capsys):
    f = world["faces"]
    gallery_dir = tmp_path / "people"
    for k in range(4):                           # 4 known people, 5 images each
        name = f"synth{k:05d}"
        (gallery_dir / name).mkdir(parents=True)
        for j in range(1, 6):
            os.link(f / name / f"{name}_{j:04d}.jpg", gallery_dir / name / f"{j}.jpg")
    for ext in ("npz", "safetensors"):
        g = str(tmp_path / f"gallery.{ext}")
        assert main(["enroll", str(gallery_dir), "--gallery", g, "--model", str(world["model"]),
                     "--aligned"]) == 0
        assert "enrolled 4 identities from 20 images" in capsys.readouterr().out
        probes = [f / f"synth{k:05d}" / f"synth{k:05d}_0007.jpg" for k in range(4)]
        assert main(["identify", *map(str, probes), "--gallery", g, "--top", "3", "--aligned",
                     "--model", str(world["model"])]) == 0
        lines = capsys.readouterr().out.splitlines()[:4]
        hits = sum(line.split(": ")[1].startswith(f"synth{k:05d} ") for k, line in enumerate(lines))
        assert hits >= 3, lines
        assert all(line.split("best: ")[1].count("synth") == 3 for line in lines)  # --top 3
    # strangers: mostly below the open-set threshold
    strangers = [f / f"synth{k:05d}" / f"synth{k:05d}_0001.jpg" for k in range(6, IDS)]
    assert main(["identify", *map(str, strangers), "--gallery", g, "--aligned",
                 "--model", str(world["model"])]) == 0
    out = capsys.readouterr().out
    assert out.count(": unknown") >= 2, out


def test_enroll_identify_errors(world, tmp_path, capsys):
    g = str(tmp_path / "g.npz")
    one = tmp_path / "one" / "synth00000"
    one.mkdir(parents=True)
    os.link(world["faces"] / "synth00000" / "synth00000_0001.jpg", one / "a.jpg")
    cases = [(["enroll", str(world["faces"]), "--gallery", str(tmp_path / "g.txt"), "--aligned"],
              "must end in .npz"),
             (["identify", str(one / "a.jpg"), "--gallery", g], "does not exist")]
    for argv, message in cases:
        assert main(argv + ["--model", str(world["model"])]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["identify", str(one / "a.jpg"), "--gallery", str(tmp_path / "bad.npz"),
                 "--model", str(world["model"])]) == 2
    assert "bad.npz is not a gallery file" in capsys.readouterr().err
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 a zip cut short")
    assert main(["identify", str(one / "a.jpg"), "--gallery", str(tmp_path / "cut.npz"),
                 "--model", str(world["model"])]) == 2
    assert "not a deepid2 gallery" in capsys.readouterr().err   # a damaged one


def test_a_training_run_as_model_names_fit_verifier(world, capsys):
    """best.safetensors / checkpoint.safetensors of `deepid2 train` are networks, not
    verifiers: the line says how to make one."""
    img = next((world["faces"] / "synth00000").iterdir())
    for name in ("best.safetensors", "checkpoint.safetensors"):
        assert main(["verify", str(img), str(img), "--aligned",
                     "--model", str(world["run"] / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "`deepid2 fit-verifier --nets" in err, err
        assert "not a verifier" in err


def test_eval_lfw_on_synthetic_pairs(world, tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["5 4"]
    for fold in range(5):                        # fold k uses identities 2k, 2k+1 only
        a, b = 2 * fold, 2 * fold + 1
        for _ in range(4):
            n1, n2 = rng.choice(np.arange(1, IMGS + 1), 2, replace=False)
            lines.append(f"synth{[a, b][_ % 2]:05d}\t{n1}\t{n2}")
        for _ in range(4):
            n1, n2 = rng.integers(1, IMGS + 1, 2)
            lines.append(f"synth{a:05d}\t{n1}\tsynth{b:05d}\t{n2}")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert main(["eval-lfw", "--lfw", str(world["faces"]), "--pairs", str(pairs),
                 "--model", str(world["model"]), "--out", str(out)]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert text[-1].startswith("accuracy: ") and " +- " in text[-1]
    acc = float(text[-1].split()[1])
    assert acc >= 0.7, text
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["accuracies"]) == 5 and 0 <= m["eer"] <= 0.5 and m["auc"] > 0.7
    assert (out / "roc.png").stat().st_size > 0 and (out / "roc.csv").read_text().startswith(
        "threshold,far,tar")
    assert main(["eval-lfw", "--lfw", str(world["faces"]), "--pairs", str(pairs), "--folds",
                 "2-4", "--model", str(world["model"])]) == 0
    assert "fold 1:" not in capsys.readouterr().out
    # a pairs file naming images that are not there
    pairs.write_text("2 1\nsynth00000\t1\t99\nsynth00000\t1\tsynth00001\t1\n"
                     "synth00001\t1\t2\nsynth00000\t2\tsynth00001\t2\n")
    assert main(["eval-lfw", "--lfw", str(world["faces"]), "--pairs", str(pairs),
                 "--model", str(world["model"])]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "synth00000_0099" in err
    assert main(["eval-lfw", "--lfw", str(world["faces"]), "--pairs", str(pairs), "--folds",
                 "x", "--model", str(world["model"])]) == 2
    assert "--folds" in capsys.readouterr().err


def test_verify_defaults_to_the_shipped_model(world, capsys):
    from deepid2_core.verifier.model import DEFAULT_MODEL
    assert os.path.isfile(DEFAULT_MODEL), "deepid2_core/models/verifier.safetensors is missing"
    assert os.path.getsize(DEFAULT_MODEL) < 20 << 20
    shipped = read_verifier_file(DEFAULT_MODEL)
    assert shipped["layout"] == "deepid2" and shipped["patch_names"] == [     # (f) chose these
        "head@0.8333/rgb", "upper_face@1.44/rgb", "lower_face@1/rgb", "eyes@1/gray",
        "eyes@1.2/rgb", "nose_mouth@1/rgb", "right_eye_cheek@1/rgb"]
    face = str(world["faces"] / "synth00001" / "synth00001_0001.jpg")
    assert main(["verify", face, face, "--aligned"]) == 0      # a face matches itself
    assert capsys.readouterr().out.startswith("same person")


def test_fit_verifier_cuts_the_patch_the_network_was_trained_on(tmp_path):
    """A network trained with lighting (or on a layout patch) says so in its
    model file; fit-verifier must cut the same patch."""
    import json as _json
    from deepid2_core import safetensors
    from deepid2_core.face.inputs import LayoutPatch, PatchSpec
    from deepid2_core.verifier.commands import trained_input

    def _trained_input(path):
        return trained_input(safetensors.load(path)[1])
    spec = PatchSpec(lighting="clahe")
    path = tmp_path / "net.safetensors"
    safetensors.save(path, {"x": np.ones(1, np.float32)},
                     {"input": _json.dumps(spec.to_dict(), sort_keys=True)})
    assert _trained_input(str(path)) == spec
    safetensors.save(path, {"x": np.ones(1, np.float32)}, {})
    assert _trained_input(str(path)) == PatchSpec()
    safetensors.save(path, {"x": np.ones(1, np.float32)},
                     {"input": _json.dumps({"kind": "layout", "layout": "deepid2", "index": 3,
                                            "lighting": "hist", "landmarks": "mean"})})
    assert _trained_input(str(path)) == LayoutPatch("deepid2", 3, "mean", "hist")


def test_eval_ident_split_and_rates(world, tmp_path, capsys):
    from deepid2_core.verifier.model import Verifier
    out = tmp_path / "ident"
    assert main(["eval-ident", "--data", str(world["faces"]), "--model", str(world["model"]),
                 "--out", str(out), "--seed", "4"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "identification.json").read_text())
    known = round(0.5 * IDS)
    assert (res["gallery"], res["genuine_probes"], res["impostor_probes"]) == \
        (known, known * (IMGS - 1), (IDS - known) * IMGS)
    assert f"closed-set rank-1: {res['rank1']:.4f}" in text
    # brute force: each genuine probe's best gallery image, by the model's own pair score
    m = Verifier.load(str(world["model"]), progress=False)
    gallery = res["gallery_images"]
    g = m.features(gallery)
    person = lambda p: os.path.basename(os.path.dirname(p))
    hits = total = 0
    for d in sorted(os.listdir(world["faces"])):
        if d not in {person(p) for p in gallery}:
            continue
        for f in sorted(os.listdir(world["faces"] / d)):
            p = str(world["faces"] / d / f)
            if p in gallery:
                continue
            x = m.features([p])
            s = m.score(np.repeat(x, len(g), 0), g)
            hits += person(gallery[int(np.argmax(s))]) == d
            total += 1
    assert total == res["genuine_probes"] and abs(hits / total - res["rank1"]) < 1e-12
    assert res["rank1"] > 1.5 / known                        # far above chance
    assert 0 <= res["dir"] <= res["rank1"] and res["far_reached"] <= 0.01


def test_eval_ident_errors(world, capsys):
    assert main(["eval-ident", "--data", str(world["faces"]), "--model", str(world["model"]),
                 "--folds", "6-10"]) == 2
    assert "--pairs and --folds go together" in capsys.readouterr().err
