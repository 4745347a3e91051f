"""`deepid2 verify --pairs FILE`: one line per pair on stdout in input order,
bad pairs reported on their own line, exit 2 when any pair failed."""
import os

import pytest

from deepid2_core.cli import main

from verifier_world import world  # noqa: F401  (the synthetic faces and model)


def run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_pairs_in_order_with_bad_pairs(world, tmp_path, capsys):
    f = world["faces"]
    a, b = f / "synth00002" / "synth00002_0001.jpg", f / "synth00002" / "synth00002_0002.jpg"
    c = f / "synth00005" / "synth00005_0001.jpg"
    spaced = tmp_path / "with space.jpg"
    os.link(c, spaced)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{a} {b}\n\n# a comment\n{a}\t{spaced}\n{a} {corrupt}\n"
                     f"{a} {b} {c}\n{tmp_path / 'missing.jpg'} {b}\n{b}  {a}\n")
    rc, lines, err = run(capsys, ["verify", "--pairs", str(pairs), "--aligned",
                                  "--model", str(world["model"])])
    assert rc == 2 and "Traceback" not in err
    assert len(lines) == 6, lines
    fields = [line.split("\t") for line in lines]
    assert all(len(x) == 4 for x in fields), lines
    assert fields[0][:2] == [str(a), str(b)] and fields[0][2] in ("same", "different")
    assert fields[1][1] == str(spaced) and fields[1][2] in ("same", "different")
    assert fields[2][2].startswith("error: cannot read") and fields[2][3] == "-"
    assert fields[3][2].startswith("error: line 6: expected two image paths, got 3")
    assert fields[4][2].startswith("error: cannot read") and "missing.jpg" in fields[4][2]
    assert fields[5][:2] == [str(b), str(a)]
    assert float(fields[5][3]) == pytest.approx(float(fields[0][3]), abs=2e-3)  # symmetric
    assert "4 of 7 pairs scored" not in err and "3 of 6 pairs scored" in err
    # the score is the single verify's
    assert main(["verify", str(a), str(b), "--aligned", "--model", str(world["model"])]) == 0
    single = capsys.readouterr().out
    assert f"score {float(fields[0][3]):.3f}" in single


def test_all_pairs_scored_exit_0(world, tmp_path, capsys):
    f = world["faces"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{f / 'synth00001' / 'synth00001_0001.jpg'} "
                             f"{f / f'synth0000{k}' / f'synth0000{k}_0003.jpg'}\n"
                             for k in range(5)))
    rc, lines, err = run(capsys, ["verify", "--pairs", str(pairs), "--aligned",
                                  "--model", str(world["model"])])
    assert rc == 0 and "5 of 5 pairs scored" in err
    assert len([x for x in lines if "\t" in x]) == 5


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "both", "one", "binary"])
def test_pairs_argument_errors(world, tmp_path, capsys, case):
    img = str(world["faces"] / "synth00001" / "synth00001_0001.jpg")
    p = tmp_path / "p.txt"
    argv, message = {
        "missing": (["--pairs", str(tmp_path / "none.txt")], "does not exist"),
        "folder": (["--pairs", str(tmp_path)], "is a folder"),
        "empty": (["--pairs", str(p)], "holds no pairs"),
        "both": ([img, img, "--pairs", str(p)], "not both"),
        "one": ([img], "give two images"),
        "binary": (["--pairs", str(p)], "not UTF-8"),
    }[case]
    p.write_bytes(b"\xff\xfe\x00bin" if case == "binary" else b"\n# nothing\n")
    rc, lines, err = run(capsys, ["verify", *argv, "--model", str(world["model"])])
    assert rc == 2 and lines == []
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and message in err_lines[0] and "Traceback" not in err, err
