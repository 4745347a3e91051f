"""The public Python API (deepid2_core.api) on real LFW photographs of people
the shipped model never saw (View 2 fold 6), against the command line's own
path, and the README's API snippet run as it stands. Skips without
../shared/data (DEEPID2_DATA)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import deepid2_core as deepid2
from deepid2_core.errors import BadGalleryFile, BadImage, BadModelFile, NoFace
from package_home import PACKAGE_HOME

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("DEEPID2_DATA", REPO.parent / "shared" / "data"))
LFW = DATA / "lfw"
# fold 6: a matched pair (A1, A4), a mismatched one (A1 vs C), and a second person with 2 images
A = [LFW / "Aaron_Peirsol" / f"Aaron_Peirsol_000{k}.jpg" for k in (1, 2, 3, 4)]
B = [LFW / "Adrian_Nastase" / f"Adrian_Nastase_000{k}.jpg" for k in (1, 2)]
C = LFW / "Pascal_Rheaume" / "Pascal_Rheaume_0001.jpg"


@pytest.fixture(scope="module")
def model():
    if not all(p.is_file() for p in A + B + [C]):
        pytest.skip(f"{DATA} has no LFW (set DEEPID2_DATA to the shared data folder)")
    return deepid2.load()


def cli_features(path):
    """The features `deepid2 verify` computes for one photograph."""
    from deepid2_core.verifier.commands import prepare_faces
    from deepid2_core.verifier.model import Verifier
    faces, problems = prepare_faces([str(path)], progress=False)
    assert not problems
    return Verifier.load(progress=False).features([faces[str(path)]])[0]


def test_detect_finds_the_one_face(model):
    faces = model.detect(str(A[0]))
    assert len(faces) == 1
    f = faces[0]
    x, y, w, h = f.box
    assert 40 < w < 200 and 0 <= x and x + w <= 250 and 0 <= y and y + h <= 250
    assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
    inside = ((f.landmarks >= [x, y]) & (f.landmarks <= [x + w, y + h])).all(1)
    assert inside.all(), f.landmarks
    left, right = f.landmarks[0], f.landmarks[1]
    assert left[0] < right[0] and f.landmarks[2][1] > left[1]   # eyes left/right, nose below
    assert f.score > 0


def test_embed_is_the_cli_features(model):
    vec = model.embed(str(A[0]))
    assert vec.dtype == np.float32 and vec.shape == (model.verifier.extractor.dim,)
    np.testing.assert_array_equal(vec, cli_features(A[0]))
    assert not np.array_equal(vec, model.embed(str(A[1])))


def test_verify_matches_the_cli(model):
    from deepid2_core.face_commands import verify_main
    for a, b, same in ((A[0], A[3], True), (A[0], C, False)):
        r = model.verify(str(a), Path(b))
        cli = verify_main(str(a), str(b), log=lambda *_: None)
        assert isinstance(r, deepid2.Match) and isinstance(r.same, bool)
        assert (r.same, r.score, r.threshold) == (cli["same"], cli["score"], cli["threshold"])
        assert r.same is same and r.same == (r.score >= r.threshold)


def test_rgb_array_equals_path(model):
    rgb = cv2.imread(str(A[0]))[:, :, ::-1]
    np.testing.assert_array_equal(model.embed(rgb), model.embed(str(A[0])))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])       # the wrong channel order is another image
    assert not np.array_equal(model.embed(bgr), model.embed(rgb))
    assert model.detect(rgb)[0].box == model.detect(str(A[0]))[0].box


def test_grey_input(model, tmp_path):
    grey = cv2.imread(str(A[0]), cv2.IMREAD_GRAYSCALE)
    assert grey.ndim == 2
    vec = model.embed(grey)
    assert vec.shape == model.embed(str(A[0])).shape
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(vec, model.embed(str(tmp_path / "grey.png")))
    assert model.verify(grey, str(A[0])).same


def test_embed_many_batches_and_marks_faceless_images(model):
    blank = np.full((250, 250, 3), 128, np.uint8)
    vecs = model.embed_many([str(A[0]), blank, str(C)])
    assert len(vecs) == 3 and vecs[1] is None
    for v, p in ((vecs[0], A[0]), (vecs[2], C)):
        np.testing.assert_allclose(v, model.embed(str(p)), rtol=1e-5, atol=1e-6)
    assert model.embed(blank) is None and model.detect(blank) == []
    assert model.embed_many([]) == []


def test_bad_inputs_raise_clear_value_errors(model, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    cases = [
        (np.zeros((250, 250, 3), np.float32), BadImage, r"must be uint8 H x W x 3 \(RGB\)"),
        (np.zeros((250, 250, 4), np.uint8), BadImage, r"of shape \(250, 250, 4\)"),
        (np.zeros((0, 250), np.uint8), BadImage, "must be uint8"),
        ([[1, 2], [3, 4]], BadImage, "a file path or a numpy uint8 array, got list"),
        (str(corrupt), BadImage, f"cannot read {re.escape(str(corrupt))}: not a decodable image"),
        (str(tmp_path / "none.jpg"), BadImage, "none.jpg: file not found"),
    ]
    for image, kind, message in cases:
        for call in (model.embed, model.detect, lambda im: model.verify(im, str(A[0]))):
            with pytest.raises(kind, match=message) as e:
                call(image)
            assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(NoFace, match=r"^no face found in the 250x250 image array$"):
        model.verify(np.full((250, 250, 3), 128, np.uint8), str(A[0]))
    with pytest.raises(BadModelFile, match="model file .*nothing.safetensors does not exist"):
        deepid2.load(str(tmp_path / "nothing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(BadModelFile):
        deepid2.load(str(junk))


def test_the_cli_raises_the_same_errors(tmp_path, capsys):
    """`deepid2 verify` on a faceless photograph: NoFace inside, its line printed, exit 2."""
    from deepid2_core.cli import main
    from deepid2_core.face_commands import verify_main
    if not A[0].is_file():
        pytest.skip(f"{DATA} has no LFW")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((250, 250, 3), 128, np.uint8))
    with pytest.raises(NoFace, match="no face found in .*blank.png"):
        verify_main(str(A[0]), str(blank), log=lambda *_: None)
    with pytest.raises(BadImage, match="cannot read .*none.jpg: file not found"):
        verify_main(str(A[0]), str(tmp_path / "none.jpg"), log=lambda *_: None)
    assert main(["verify", str(A[0]), str(blank)]) == 2
    assert "no face found in" in capsys.readouterr().err


def test_gallery_enroll_identify_save_load(model, tmp_path):
    from deepid2_core.face_commands import enroll_main, identify_main
    people = {"aaron": [str(A[0]), str(A[1]), str(A[2])], "adrian": [str(B[0])],
              "pascal": [str(C)]}
    g = deepid2.Gallery.enroll(model, people)
    assert g.names == ["aaron", "adrian", "pascal"] and list(g.counts) == [3, 1, 1]
    r = g.identify(str(A[3]), top=3)
    assert isinstance(r, deepid2.Identification)
    assert [n for n, _ in r.candidates][0] == "aaron" and len(r.candidates) == 3
    assert [s for _, s in r.candidates] == sorted((s for _, s in r.candidates), reverse=True)
    assert r.known and r.name == "aaron" and r.score == r.candidates[0][1] >= r.threshold
    assert len(g.identify(str(B[1]), top=1).candidates) == 1

    # the command line on the same images: the same threshold and answers
    folder = tmp_path / "people"
    for name, images in people.items():
        (folder / name).mkdir(parents=True)
        for p in images:
            shutil.copy(p, folder / name)
    cli_file = str(tmp_path / "cli.npz")
    res = enroll_main(str(folder), cli_file, log=lambda *_: None)
    assert res["threshold"] == g.threshold
    probes = [str(A[3]), str(B[1])]
    cli, failed = identify_main(probes, cli_file, top=3, log=lambda *_: None)
    assert failed == 0
    for p in probes:
        r = g.identify(p, top=3)
        assert cli[p] == (r.name or "unknown")

    for suffix in (".npz", ".safetensors"):
        path = tmp_path / f"g{suffix}"
        g.save(path)
        back = deepid2.Gallery.load(path, model)
        assert back.names == g.names and back.threshold == g.threshold
        np.testing.assert_array_equal(back.means, g.means)
        assert back.identify(str(A[3]), top=3) == g.identify(str(A[3]), top=3)
    other = tmp_path / "other.npz"
    from deepid2_core.verifier.gallery import save_gallery
    save_gallery(str(other), g.names, g.means, g.counts, g.threshold, "another-model")
    with pytest.raises(BadGalleryFile, match="enrolled with another model"):
        deepid2.Gallery.load(other, model)
    with pytest.raises(BadGalleryFile, match="does not exist"):
        deepid2.Gallery.load(tmp_path / "none.npz", model)
    with pytest.raises(ValueError, match="people is empty"):
        deepid2.Gallery.enroll(model, {})
    with pytest.raises(ValueError, match="top must be at least 1, got 0"):
        g.identify(str(A[3]), top=0)
    with pytest.raises(ValueError, match="top must be at least 1, got -2"):
        g.identify_features(g.means[:1], top=-2)


def grid(paths):
    """A 2 x 2 grid of four LFW photographs: a photo with four faces."""
    im = [cv2.imread(str(p)) for p in paths]
    return np.vstack([np.hstack(im[:2]), np.hstack(im[2:])])


def test_choices_are_said_on_stderr(model, tmp_path, capsys):
    """Issue 25: the face used of several, the people enroll drops and every
    image identify could not read are said, never silent."""
    from deepid2_core.cli import main
    photo = tmp_path / "grid.jpg"
    cv2.imwrite(str(photo), grid([A[0], B[0], C, A[1]]))
    assert main(["verify", str(photo), str(A[3])]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and ("same person" in out or "different people" in out)
    assert re.search(r"grid.jpg: 4 faces found; used the largest, box \(x, y, w, h\) = "
                     r"\(\d+, \d+, \d+, \d+\)", err), err
    assert main(["verify", str(photo), str(A[3]), "--pick", "center"]) == 0
    assert "used the one nearest the centre" in capsys.readouterr().err

    people = tmp_path / "people"
    for name, images in {"aaron": A[:2], "adrian": B[:1], "empty": [], "blank": []}.items():
        (people / name).mkdir(parents=True)
        for p in images:
            shutil.copy(p, people / name)
    cv2.imwrite(str(people / "blank" / "b.png"), np.full((99, 99, 3), 128, np.uint8))
    g = str(tmp_path / "g.npz")
    assert main(["enroll", str(people), "--gallery", g, "--pick", "center"]) == 0
    out, err = capsys.readouterr()
    assert "enrolled 2 identities" in out
    assert "dropped empty: empty folder" in err
    assert "dropped blank: no image with a face" in err and "b.png" in err

    # identify: one stdout line per image, in order, failures included; exit 2
    blank, none = people / "blank" / "b.png", tmp_path / "none.jpg"
    images = [str(A[3]), str(blank), str(none), str(B[1])]
    assert main(["identify", *images, "--gallery", g, "--pick", "center"]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == images, out
    assert lines[0].split(": ")[1].startswith("aaron ")
    assert lines[1] == f"{blank}: error: no face found in {blank}"
    assert lines[2] == f"{none}: error: cannot read {none}: file not found"
    assert "2 of 4 images identified; 2 failed" in err and "Traceback" not in err


def test_a_gallery_of_one_person(model, tmp_path, capsys):
    """Issue 25: the threshold comes from the model's impostor tables, so one
    person is a gallery (API and command line); zero is refused."""
    from deepid2_core.cli import main
    g = deepid2.Gallery.enroll(model, {"aaron": [str(A[0]), str(A[1])]})
    assert g.names == ["aaron"] and g.identify(str(A[3])).name == "aaron"
    assert not g.identify(str(C)).known
    (tmp_path / "one" / "aaron").mkdir(parents=True)
    shutil.copy(A[0], tmp_path / "one" / "aaron")
    assert main(["enroll", str(tmp_path / "one"), "--gallery", str(tmp_path / "g.npz")]) == 0
    assert "enrolled 1 identities" in capsys.readouterr().out
    (tmp_path / "none" / "blank").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "none" / "blank" / "b.png"), np.full((99, 99, 3), 128, np.uint8))
    assert main(["enroll", str(tmp_path / "none"), "--gallery", str(tmp_path / "h.npz")]) == 2
    assert "at least 1 identity with a usable image" in capsys.readouterr().err


def test_gallery_enroll_skips_a_faceless_image(model, capsys):
    """Issue 25: Gallery.enroll skips an image without a face as `deepid2
    enroll` does, with a note naming it; NoFace only for a person left with none."""
    blank = np.full((99, 99), 9, np.uint8)
    g = deepid2.Gallery.enroll(model, {"a": [str(A[0]), blank], "b": [str(B[0])]})
    assert g.names == ["a", "b"] and list(g.counts) == [1, 1]
    assert "skipped: no face found in the 99x99 image array (people['a'])" in \
        capsys.readouterr().err
    with pytest.raises(NoFace, match=r"people\['b'\] has no image with a face"):
        deepid2.Gallery.enroll(model, {"a": [str(A[0])], "b": [blank]})


def test_import_is_cheap():
    """`import deepid2_core` loads neither OpenCV, numba nor the C++ extension."""
    code = ("import sys, deepid2_core; "
            "print([m for m in ('cv2', 'numba', 'deepid2_core._cpu') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE_HOME)
    assert out.stdout.strip() == "[]"


def readme_snippet():
    """The first ```python block after the "## Python API" heading of README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "## Python API" in lines, "README.md has no '## Python API' heading"
    rest = "\n".join(lines[lines.index("## Python API") + 1:])
    m = re.search(r"^```python\n(.*?)^```", rest, re.S | re.M)
    assert m, "no ```python block after '## Python API' in README.md"
    return m.group(1)


def test_readme_snippet_runs(tmp_path):
    if not all(p.is_file() for p in (A[0], A[3], C)):
        pytest.skip(f"{DATA} has no LFW (set DEEPID2_DATA to the shared data folder)")
    code = readme_snippet()
    for name, src in (("a.jpg", A[0]), ("b.jpg", A[3]), ("c.jpg", C)):
        shutil.copy(src, tmp_path / name)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": PACKAGE_HOME})
    assert r.returncode == 0, f"the README's snippet failed:\n{code}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), "the README's snippet printed nothing"
    # a.jpg and b.jpg are one person, c.jpg another: the verdicts it prints say so
    verdicts = re.findall(r"Match\(same=(True|False)", r.stdout)
    assert verdicts[:2] == ["True", "False"], r.stdout
