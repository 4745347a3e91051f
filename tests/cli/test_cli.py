"""The `deepid2` command: synth, train, resume, errors, and the demo."""

import json

import pytest

from deepid2_core.cli import main


def test_synth_then_train_then_resume(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "faces"), "--identities", "6",
                 "--images-per-identity", "8", "--seed", "3"]) == 0
    args = ["train", "--data", str(tmp_path / "faces"), "--out", str(tmp_path / "run"),
            "--epochs", "2", "--batch", "16", "--seed", "1"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "48 images of 6 identities" in cap.err and "epoch 2:" in cap.err  # diagnostics
    assert "best epoch" in cap.out and "epoch 2:" not in cap.out           # the result
    rows = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    assert main(args + ["--resume"]) == 0  # nothing left to do: the same checkpoint
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
    assert main(args) == 2  # a finished run is not overwritten by accident
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err and "Traceback" not in err
    from deepid2_core.backends import BackendUnavailable, get_backend
    try:
        get_backend("gpu")
    except BackendUnavailable:  # the usual case; with a GPU the command would train
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                     "--backend", "gpu"]) == 2
        assert "gpu" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_verifies_unseen_identities(tmp_path):
    from deepid2_core.demo import run_demo
    result = run_demo(str(tmp_path / "demo"), seed=0)
    assert result["accuracy"] >= 0.9, result
    assert result["epochs"] == 25        # a fixed number, whatever the machine's speed
