"""Bad arguments and output paths are refused before any image is read: exit
status 2, one line on stderr naming the option, no traceback, nothing
written. Also main()'s output channels and Ctrl-C."""
import os
import time

import cv2
import numpy as np
import pytest

from deepid2_core import checks
from deepid2_core.cli import main


@pytest.fixture
def world(tmp_path):
    """Paths that exist (their content is never read by the cases here)."""
    faces = tmp_path / "faces"
    for name in ("ann", "bob"):
        (faces / name).mkdir(parents=True)
        cv2.imwrite(str(faces / name / "1.jpg"), np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "pairs.txt").write_text("2 1\n")
    (tmp_path / "net.safetensors").write_bytes(b"not read")
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    (tmp_path / "gallery.npz").write_bytes(b"not read")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.fixture
def no_images(monkeypatch):
    """Any decode of an image fails the test: a BaseException, which neither the
    image reader's `except Exception` nor main() catches."""
    class ImageRead(BaseException):
        pass

    def refuse(*a, **k):
        raise ImageRead("an image was read before the arguments were checked")
    monkeypatch.setattr(cv2, "imread", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)


def _cases(w):
    f, out, nodir = str(w / "faces"), str(w / "out"), str(w / "missing")
    gal, pairs = str(w / "gallery.npz"), str(w / "pairs.txt")
    img = os.path.join(f, "ann", "1.jpg")
    g, v = f"{out}/g.npz", f"{out}/v.safetensors"
    folder_model = "--model .* is a folder, not a model file"
    fit = ["fit-verifier", "--nets", str(w / "net.safetensors"), "--data", f]
    lfw = ["eval-lfw", "--lfw", f, "--pairs", pairs]
    ident = ["eval-ident", "--data", f]
    lm = ["eval-landmarks", "--data", f]
    return [
        # (argv, what the line must name)
        (["enroll", f, "--gallery", f"{out}/g.txt"], "--gallery .* must end in .npz or "
                                                      ".safetensors"),
        (["enroll", f, "--gallery", f"{nodir}/g.npz"], "--gallery .*folder .* does not exist"),
        (["enroll", f, "--gallery", out], "--gallery .* is a folder, not a file"),
        (["enroll", f, "--gallery", f"{w}/a_file/g.npz"], "--gallery .* is not a folder"),
        (["enroll", f, "--gallery", g, "--model", f], folder_model),
        (["enroll", f, "--gallery", g, "--model", f"{nodir}/m.safetensors"], "--model .* does not "
                                                                              "exist"),
        (["enroll", nodir, "--gallery", g], "identity folder .* does not exist"),
        (["identify", img, "--gallery", f], "--gallery .* is a folder, not a gallery file"),
        (["identify", img, "--gallery", f"{nodir}/g.npz"], "--gallery .* does not exist"),
        (["identify", img, "--gallery", gal, "--top", "0"], "--top must be at least 1, got 0"),
        (["demo", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["identify", img, "--gallery", gal, "--model", f], folder_model),
        (["verify", img, img, "--model", f], folder_model),
        (["verify", img, img, "--model", f"{nodir}/m.safetensors"], "--model .* does not exist"),
        (fit + ["--out", f"{out}/v.txt"], "--out .* must end in .safetensors"),
        (fit + ["--out", f"{nodir}/v.safetensors"], "--out .*folder .* does not exist"),
        (fit + ["--out", out], "--out .* is a folder, not a file"),
        (fit + ["--out", v, "--pca", "0"], "--pca must be at least 1"),
        (fit + ["--out", v, "--pairs", "0"], "--pairs must be at least 1"),
        (fit + ["--out", v, "--em-iters", "0"], "--em-iters must be at least 1"),
        (fit + ["--out", v, "--em-tol", "-1"], "--em-tol must be a positive"),
        (fit + ["--out", v, "--cache", f"{w}/a_file"], "--cache .* is a file"),
        (["fit-verifier", "--nets", nodir, "--data", f, "--out", v], "--nets .* does not exist"),
        (["fit-verifier", "--nets", str(w / "net.safetensors"), "--data", nodir, "--out", v],
         "--data .* does not exist"),
        (lfw + ["--out", f"{w}/a_file"], "--out .* is a file, not a folder"),
        (lfw + ["--out", f"{w}/a_file/roc"], "--out .* is a file, not a folder"),
        (lfw + ["--folds", "abc"], "--folds must look like 6-10"),
        (lfw + ["--folds", "3-1"], "--folds .* runs backwards"),
        (lfw + ["--folds", "1-1000000000"], "--folds .* no pairs file has"),
        (lfw + ["--model", f], folder_model),
        (lfw + ["--unaligned", nodir], "--unaligned .* does not exist"),
        (["eval-lfw", "--lfw", nodir, "--pairs", pairs], "--lfw .* does not exist"),
        (["eval-lfw", "--lfw", f, "--pairs", f"{nodir}/pairs.txt"], "--pairs .* does not exist"),
        (["eval-lfw", "--lfw", f, "--pairs", f], "--pairs .* is a folder, not a pairs file"),
        (ident + ["--far", "2"], r"--far must be in \(0, 1\), got 2"),
        (ident + ["--far", "0"], r"--far must be in \(0, 1\)"),
        (ident + ["--far", "nan"], r"--far must be in \(0, 1\)"),
        (ident + ["--known-fraction", "1.5"], r"--known-fraction must be in \(0, 1\]"),
        (ident + ["--known-fraction", "0"], r"--known-fraction must be in \(0, 1\]"),
        (ident + ["--out", f"{w}/a_file"], "--out .* is a file, not a folder"),
        (ident + ["--pairs", pairs], "--pairs and --folds go together"),
        (ident + ["--pairs", pairs, "--folds", "x"], "--folds must look like"),
        (ident + ["--pairs", f"{nodir}/p.txt", "--folds", "1"], "--pairs .* does not exist"),
        (ident + ["--model", f], folder_model),
        (["eval-ident", "--data", nodir], "--data .* does not exist"),
        (lm + ["--limit", "0"], "--limit must be at least 1"),
        (lm + ["--levels", "0"], "--levels must be at least 1"),
        (lm + ["--json", f"{out}/r.txt"], "--json .* must end in .json"),
        (lm + ["--json", f"{nodir}/r.json"], "--json .*folder .* does not exist"),
        (lm + ["--model", f], folder_model),
        (lm + ["--yunet", f"{nodir}/y.onnx"], "--yunet .* does not exist"),
        (["eval-landmarks", "--data", nodir], "--data .* does not exist"),
        (["synth", f"{w}/a_file", "--identities", "2"], "output folder .* is a file, not a folder"),
        (["synth", f"{out}/s", "--identities", "0"], "--identities must be at least 1"),
        (["synth", f"{out}/s", "--images-per-identity", "0"], "--images-per-identity must be "
                                                               "at least 1"),
    ]


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def test_bad_arguments_are_refused_before_any_image_is_read(world, no_images, capsys):
    import re
    before = _listing(world)
    for argv, pattern in _cases(world):
        t0 = time.perf_counter()
        rc = main(argv)
        took = time.perf_counter() - t0
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"deepid2 {argv[0]}: error: "), (argv, err)
        assert re.search(pattern, lines[0]), (argv, lines[0], pattern)
        assert "Traceback" not in err and out == "", (argv, out)
        assert took < 2.0, (argv, f"{took:.1f}s")   # before any model or image work
        assert _listing(world) == before, argv        # nothing written


def test_output_file_accepts_a_writable_path(tmp_path):
    assert checks.output_file(str(tmp_path / "g.NPZ"), checks.GALLERY_EXTS, "--gallery")
    assert checks.output_dir(str(tmp_path / "new" / "deeper"), "--out")  # made later


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folders_are_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="--gallery .* is not writable"):
            checks.output_file(str(ro / "g.npz"), checks.GALLERY_EXTS, "--gallery")
        with pytest.raises(ValueError, match="--out .* is not writable"):
            checks.output_dir(str(ro / "x"), "--out")
    finally:
        ro.chmod(0o755)


def test_folds_are_read_by_one_function():
    """checks.folds reads the syntax; parse_folds adds the pairs file's range."""
    from deepid2_core.verifier.commands import parse_folds
    assert checks.folds("6-8, 2,7") == [2, 6, 7, 8]
    assert parse_folds("6-8, 2,7", 10) == [2, 6, 7, 8] == parse_folds([8, 2, 6, 7, 7], 10)
    assert parse_folds(None, 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="--folds must look like 6-10"):
        parse_folds("6-", 10)
    with pytest.raises(ValueError, match="the pairs file has folds 1..4"):
        parse_folds("3-5", 4)
    with pytest.raises(ValueError, match="the pairs file has folds 1..4"):
        parse_folds("0", 4)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from deepid2_core import synth

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(synth, "make_dataset", interrupted)
    assert main(["synth", str(tmp_path / "s")]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == ["deepid2 synth: interrupted"]


def test_results_on_stdout_time_on_stderr(tmp_path, capsys):
    from deepid2_core.synth import make_dataset
    make_dataset(str(tmp_path), 1, 1, seed=0, progress=False)
    face = next(str(p) for p in tmp_path.rglob("*.jpg"))
    assert main(["verify", face, face, "--aligned"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("same person: score")
    assert len(out.splitlines()) == 1, out                      # the verdict alone
    assert err.strip().splitlines()[-1].startswith("done in "), err


def test_eval_landmarks_refuses_a_yunet_model_that_is_not_onnx(tmp_path, no_images, capsys):
    (tmp_path / "mtfl").mkdir()
    bad = tmp_path / "yunet.onnx"
    bad.write_text("not a model\n")
    assert main(["eval-landmarks", "--data", str(tmp_path / "mtfl"), "--yunet", str(bad)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "not a YuNet ONNX model" in lines[0], err


def test_the_api_names_a_folder_given_as_model(tmp_path):
    import deepid2_core as deepid2
    from deepid2_core.errors import BadModelFile
    with pytest.raises(BadModelFile, match="is a folder, not a model file"):
        deepid2.load(str(tmp_path))


def test_version(capsys):
    import re
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    setup = open(os.path.join(os.path.dirname(__file__), "..", "..", "setup.py")).read()
    version = re.search(r'version="([^"]+)"', setup).group(1)
    assert capsys.readouterr().out.strip() == f"deepid2 {version}"


def test_help_says_each_default_once():
    """The formatter adds "(default: X)" unless the help already says it."""
    import argparse
    import re
    from deepid2_core.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())
        twice = re.findall(r"default[^()]*\)\s*\(default:[^)]*\)", text)
        assert not twice, (name, twice)
    verify = " ".join(sub.choices["verify"].format_help().split())
    assert "default: largest)" in verify


def test_enroll_on_a_folder_without_identity_folders(tmp_path, capsys):
    (tmp_path / "e5").mkdir()
    cv2.imwrite(str(tmp_path / "e5" / "loose.jpg"), np.full((64, 64, 3), 128, np.uint8))
    assert main(["enroll", f"{tmp_path / 'e5'}/", "--gallery", str(tmp_path / "g.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "//" not in err, err
    assert "has no identity folders" in err and f"{tmp_path / 'e5' / '<name>' / '*.jpg'}" in err


def test_identify_with_a_photo_as_gallery(tmp_path, capsys):
    photo = str(tmp_path / "photo.jpg")
    cv2.imwrite(photo, np.full((64, 64, 3), 128, np.uint8))
    assert main(["identify", photo, "--gallery", photo]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"deepid2 identify: error: {photo} is not a gallery file (a .npz or "
                   f".safetensors file written by `deepid2 enroll`)"), err
