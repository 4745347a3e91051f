"""The open-set threshold from the model's impostor score distribution
(verifier/impostor.py), its fallback for older model files, damaged
galleries and model metadata, and the output channels of enroll / identify."""
import json
import os

import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.cli import main
from deepid2_core.verifier.impostor import (FORMAT, ImpostorScores, distinct_offsets,
                                            tail_exceed)
from deepid2_core.verifier.model import Verifier

from verifier_world import world  # noqa: F401  (the synthetic faces and model)


def rewrite_meta(src, dst, change):
    t, meta = safetensors.load(str(src))
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    change(meta)
    safetensors.save(str(dst), t, meta)


def people(world, tmp_path, n_people=4, n_images=3, extra=None):
    f, root = world["faces"], tmp_path / "people"
    for k in range(n_people):
        name = f"synth{k:05d}"
        (root / name).mkdir(parents=True)
        for j in range(1, n_images + 1):
            os.link(f / name / f"{name}_{j:04d}.jpg", root / name / f"{j}.jpg")
    return root


def test_fit_verifier_stores_the_impostor_distribution(world):
    m = Verifier.load(str(world["model"]), progress=False)
    assert m.impostor is not None and 1 in m.impostor.tables
    assert json.loads(m.metadata["impostor_scores"])["format"] == FORMAT
    for n, tables in m.impostor.tables.items():
        assert 1 in tables
        for p, s in tables.values():
            assert np.all(np.diff(p) < 0) and np.all(np.diff(s) >= 0)
    again = ImpostorScores.from_json(m.impostor.to_json(), "x")
    assert again.tables.keys() == m.impostor.tables.keys() and again.trials == m.impostor.trials
    # more people in the gallery: a higher threshold for the same FAR, and the FAR is met
    t10, _ = m.impostor.threshold([3] * 10, 0.01)
    t100, _ = m.impostor.threshold([3] * 100, 0.01)
    assert t100 > t10
    assert m.impostor.probe_far([3] * 10, t10) <= 0.01 + 1e-9


def gaussian_people(rng, n_people, n_images, dim=24):
    """Identity centres N(0, I) plus image noise N(0, 0.8^2 I): (people, images, dim)."""
    centre = rng.normal(size=(n_people, 1, dim))
    return centre + 0.8 * rng.normal(size=(n_people, n_images, dim))


@pytest.fixture(scope="module")
def gaussian():
    """A verifier fitted on 2400 synthetic people of 5 images, its simulated
    galleries measured on them; low-dimensional, so the fit barely overfits
    and fresh people of the same distribution score as the training ones."""
    rng = np.random.default_rng(0)
    x = gaussian_people(rng, 2400, 5).reshape(-1, 24)
    labels = np.repeat(np.arange(2400), 5)
    v = Verifier.fit(x, labels, d=16, n_pairs=500, impostor_pairs=0)
    v.impostor = ImpostorScores.measure(v, x, labels, seed=1)
    return v


def fresh_far(v, counts, t, rng, galleries=20, probes=500):
    """The share of outsider probes (fresh people) whose best score against a
    fresh gallery with these counts reaches t: the truth, by simulation."""
    hits = 0
    for _ in range(galleries):
        means = np.array([gaussian_people(rng, 1, n)[0].mean(0) for n in counts])
        outsiders = gaussian_people(rng, probes, 1)[:, 0]
        best = v.jb.score_matrix(v.project(outsiders), v.project(means)).max(1)
        hits += int(np.sum(best >= t))
    return hits / (galleries * probes)


@pytest.mark.parametrize("counts", [[3] * 10, [2] * 37, [1] * 300, [1, 2, 3, 4, 5, 3, 3] * 20],
                         ids=["10x3", "37x2 (between sizes)", "300x1", "140 mixed"])
def test_threshold_reaches_the_requested_far(gaussian, counts):
    """The FAR reached on fresh galleries and outsiders is the requested 1%
    (binomial sd over 10000 probes: 0.1%)."""
    t, extrapolated = gaussian.impostor.threshold(counts, 0.01)
    assert not extrapolated
    far = fresh_far(gaussian, counts, t, np.random.default_rng(len(counts)))
    assert 0.006 <= far <= 0.016, far


def test_independent_scores_would_be_too_cautious(gaussian):
    """What format 1 assumed (the K scores independent, from the single-image
    tail): its threshold lets in far fewer outsiders than asked, so the test
    above tells the two apart."""
    imp, counts = gaussian.impostor, [1] * 300
    p, s = imp.tables[1][1]
    lo, hi = s[0], s[-1] + 50
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if 1 - (1 - tail_exceed(p, s, mid)) ** len(counts) > 0.01:
            lo = mid
        else:
            hi = mid
    assert hi > imp.threshold(counts, 0.01)[0]
    assert fresh_far(gaussian, counts, hi, np.random.default_rng(7)) < 0.005


def test_simulated_maxima_are_the_joint_bayesian_scores(gaussian):
    """The tables' vectorised scores are score_matrix's: single pairs against
    all impostor pairs' quantiles, and the max over 5 two-image means against
    a direct simulation."""
    rng = np.random.default_rng(3)
    x = gaussian_people(rng, 300, 4).reshape(-1, 24)
    labels = np.repeat(np.arange(300), 4)
    v = gaussian
    imp = ImpostorScores.measure(v, x, labels, n_trials=4000, max_images=2, sizes=(1, 5))
    z = v.project(x)
    direct = np.sort(v.jb.score_matrix(z, z)[labels[:, None] != labels[None, :]])[::-1]
    p, s = imp.tables[1][1]
    exact = direct[np.ceil(p * len(direct)).astype(int) - 1]
    assert np.allclose(s[:4], exact[:4], atol=0.1 * np.std(direct))
    best = []
    for _ in range(4000):
        who = rng.choice(300, 6, replace=False)
        imgs = [rng.choice(4, 2, replace=False) + 4 * w for w in who[:5]]
        means = np.array([x[i].mean(0) for i in imgs])
        probe = x[4 * who[5] + rng.integers(4)]
        best.append(v.jb.score_matrix(v.project(probe[None]), v.project(means)).max())
    best = np.sort(best)[::-1]
    p, s = imp.tables[2][5]
    exact = best[np.ceil(p * len(best)).astype(int) - 1]
    assert np.allclose(s[:4], exact[:4], atol=0.15 * np.std(best))


def test_distinct_offsets_are_distinct_and_uniform():
    rng = np.random.default_rng(0)
    offs = distinct_offsets(rng, np.full(20000, 6), 3)
    assert offs.shape == (20000, 3) and np.all(np.diff(offs, axis=1) > 0)
    assert offs.max() == 5 and offs.min() == 0
    share = np.bincount(offs.ravel(), minlength=6) / offs.size
    assert np.allclose(share, 1 / 6, atol=0.01)


V1 = json.dumps({"format": "deepid2-impostor/1", "pairs": 9,
                 "tails": {"1": {"p": [0.5, 0.1], "score": [1, 2]}}})


@pytest.mark.parametrize("stored", [None, V1], ids=["none", "format 1"])
def test_old_model_falls_back_with_a_note(world, tmp_path, capsys, stored):
    old = tmp_path / "old.safetensors"
    rewrite_meta(world["model"], old, lambda meta: meta.pop("impostor_scores") if stored is None
                 else meta.update(impostor_scores=stored))
    root = people(world, tmp_path)
    g = str(tmp_path / "g.npz")
    assert main(["enroll", str(root), "--gallery", g, "--aligned", "--model", str(old)]) == 0
    out = capsys.readouterr()
    notes = [x for x in out.err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1, notes
    assert ("no impostor score distribution" if stored is None else
            "older format 'deepid2-impostor/1'") in notes[0]
    assert "from the 12 enrollment images" in out.out
    assert main(["enroll", str(root), "--gallery", g, "--aligned",
                 "--model", str(world["model"])]) == 0
    out = capsys.readouterr()
    assert "note:" not in out.err and "from the model's impostor scores" in out.out


def test_one_person_needs_the_impostor_tables(world, tmp_path, capsys):
    """Issue 25: one person is a gallery when the model holds impostor tables;
    without them the threshold needs other people's images: one line, exit 2."""
    old = tmp_path / "old.safetensors"
    rewrite_meta(world["model"], old, lambda meta: meta.pop("impostor_scores"))
    root = people(world, tmp_path, n_people=1)
    g = str(tmp_path / "g.npz")
    assert main(["enroll", str(root), "--gallery", g, "--aligned", "--model", str(old)]) == 2
    err = capsys.readouterr().err
    assert "1 identity, and" in err and "holds no impostor scores" in err
    assert "at least 2 people" in err and "Traceback" not in err
    assert main(["enroll", str(root), "--gallery", g, "--aligned",
                 "--model", str(world["model"])]) == 0
    assert "enrolled 1 identities from 3 images" in capsys.readouterr().out


def v2(tables, trials=100):
    return json.dumps({"format": FORMAT, "trials": trials, "tables": tables})


GOOD_TABLE = {"images": 1, "people": 1, "p": [0.5, 0.1], "score": [1, 2]}


@pytest.mark.parametrize("damage", [
    "not json", json.dumps({"format": "other"}), v2([]), v2([GOOD_TABLE], trials=0),
    v2([dict(GOOD_TABLE, p=[0.1, 0.5])]), v2([dict(GOOD_TABLE, score=[2, 1])]),
    v2([dict(GOOD_TABLE, score=[1, float("nan")])]), v2([dict(GOOD_TABLE, people=0)]),
    v2([dict(GOOD_TABLE, images=2)]), v2([dict(GOOD_TABLE, people=5)]),
    v2([GOOD_TABLE, GOOD_TABLE]), v2([dict(GOOD_TABLE, p=[0.5])])],
    ids=["not json", "other format", "no tables", "0 trials", "p increasing",
         "score decreasing", "nan", "0 people", "no single images", "no one-person gallery",
         "table twice", "lengths differ"])
def test_damaged_impostor_metadata_is_refused(world, tmp_path, capsys, damage):
    bad = tmp_path / "bad.safetensors"
    rewrite_meta(world["model"], bad, lambda meta: meta.update(impostor_scores=damage))
    img = str(world["faces"] / "synth00001" / "synth00001_0001.jpg")
    assert main(["verify", img, img, "--aligned", "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'metadata "impostor_scores" is damaged' in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("kind", ["truncated npz", "junk npz", "empty npz", "npz without meta",
                                  "truncated safetensors", "flipped safetensors"])
def test_corrupt_gallery_is_one_line(world, tmp_path, capsys, kind):
    root = people(world, tmp_path)
    ext = "safetensors" if "safetensors" in kind else "npz"
    good = tmp_path / f"good.{ext}"
    assert main(["enroll", str(root), "--gallery", str(good), "--aligned",
                 "--model", str(world["model"])]) == 0
    capsys.readouterr()
    data, bad = good.read_bytes(), tmp_path / f"bad.{ext}"
    if kind.startswith("truncated"):
        bad.write_bytes(data[:len(data) // 2])
    elif kind == "junk npz":
        bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    elif kind == "empty npz":
        bad.write_bytes(b"")
    elif kind == "npz without meta":
        np.savez(bad, means=np.zeros((2, 3), np.float32))
    else:
        b = bytearray(data)
        b[-20] ^= 0xFF
        bad.write_bytes(bytes(b))
    img = str(world["faces"] / "synth00001" / "synth00001_0007.jpg")
    assert main(["identify", img, "--gallery", str(bad), "--aligned",
                 "--model", str(world["model"])]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: not a deepid2 gallery file (" in err[0], err
    assert "Traceback" not in out.err and out.out.strip() == ""


def test_enroll_and_identify_output_channels(world, tmp_path, capsys):
    root = people(world, tmp_path)
    (root / "synth00000" / "broken.jpg").write_bytes(b"not an image")
    g = str(tmp_path / "g.npz")
    assert main(["enroll", str(root), "--gallery", g, "--aligned",
                 "--model", str(world["model"])]) == 0
    out = capsys.readouterr()
    assert "skipped:" in out.err and "skipped:" not in out.out
    assert out.out.startswith("enrolled 4 identities")
    good = str(world["faces"] / "synth00001" / "synth00001_0007.jpg")
    broken = str(root / "synth00000" / "broken.jpg")
    assert main(["identify", good, broken, "--gallery", g, "--aligned",
                 "--model", str(world["model"])]) == 2
    out = capsys.readouterr()
    lines = out.out.splitlines()      # one stdout line per input, in order (issue 25)
    assert len(lines) == 2 and lines[0].startswith(f"{good}: ")
    assert lines[1].startswith(f"{broken}: error: cannot read")
    assert "1 of 2 images identified; 1 failed" in out.err


def test_shipped_model_holds_gallery_tables():
    """The shipped verifier carries format 2 tables measured on its training
    people, and enroll's threshold for 10 people x 3 images comes from them."""
    from deepid2_core.verifier.model import DEFAULT_MODEL
    m = Verifier.load(DEFAULT_MODEL, progress=False)
    assert json.loads(m.metadata["impostor_scores"])["format"] == FORMAT
    assert "impostor_scores_from" in m.metadata
    assert sorted(m.impostor.tables) == [1, 2, 3, 4, 5]
    assert m.impostor.sizes(1) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    t10, extrapolated = m.impostor.threshold([3] * 10, 0.01)
    assert not extrapolated and np.isfinite(t10)


def test_too_few_trials_is_refused(gaussian):
    x = np.zeros((4, 24))
    with pytest.raises(ValueError, match="impostor trials must be at least 20"):
        ImpostorScores.measure(gaussian, x, np.array([0, 0, 1, 1]), n_trials=5)
