"""The lock a training run holds on its --out (issue 15, point 4): a second run
into the same folder is refused at once, naming the holder; a stale lock (its
process gone) is taken over with a note; the lock goes at the end, on error
and on Ctrl-C."""

import json
import os
import socket
import subprocess
import sys

import pytest

from deepid2_core.cli import main
from deepid2_core.synth import make_dataset
from deepid2_core.training.checkpoint import BEST
from deepid2_core.training.loop import Loop
from deepid2_core.training.lock import LOCK_NAME, RunLock, RunLocked
from package_home import PACKAGE_HOME

HOLDER = """
import sys
from deepid2_core.training.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()          # hold it until the test closes our stdin
"""


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock") / "faces"
    make_dataset(root, identities=4, images_per_identity=6, seed=3, progress=False)
    return root


@pytest.fixture
def holder(tmp_path):
    """A real second process holding tmp_path/run's lock."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=PACKAGE_HOME)
    assert p.stdout.readline().strip() == "held"
    yield out, p.pid
    p.stdin.close()
    p.wait(timeout=30)
    assert not (out / LOCK_NAME).exists()  # the holder removed its lock


def train_args(faces, out, *extra):
    return ["train", "--data", str(faces), "--out", str(out), "--epochs", "1", "--batch", "8",
            "--seed", "1", *extra]


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_a_second_training_run_into_the_same_out_is_refused_at_once(faces, holder, capsys):
    out, pid = holder
    assert main(train_args(faces, out)) == 2
    line = one_error_line(capsys)
    assert f"{out} is in use by another training run (pid {pid} on host " \
           f"{socket.gethostname()}, since " in line
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # no cache, nothing written
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == pid  # the holder's lock kept


def test_the_refusal_from_the_command_line(faces, holder):
    out, pid = holder
    r = subprocess.run([sys.executable, "-m", "deepid2_core.cli", *train_args(faces, out)],
                       capture_output=True, text=True, timeout=120, cwd=PACKAGE_HOME)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"deepid2 train: error: {out} is in use by another training "
                                f"run (pid {pid} on host {socket.gethostname()}, since "
                                + r.stderr.split(", since ", 1)[1].strip())


def test_the_landmark_trainers_are_refused_too(holder, capsys):
    out, _ = holder
    from mtfl_synth import tiny_mtfl
    root = tiny_mtfl(out.parent / "mtfl")
    assert main(["train-landmarks", "--data", str(root), "--out", str(out), "--epochs", "1",
                 "--batch", "4", "--detector", "central"]) == 2
    assert "is in use by another training run" in one_error_line(capsys)
    assert main(["train-landmark-cascade", "--data", str(root), "--out", str(out), "--levels",
                 "2", "--epochs", "1", "--batch", "4"]) == 2
    assert "is in use by another training run" in one_error_line(capsys)
    assert sorted(os.listdir(out)) == [LOCK_NAME]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_stale_lock_is_taken_over_with_a_note_and_removed_at_the_end(faces, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=pid, host=socket.gethostname(),
                                                 since="2026-01-01T00:00:00+00:00")))
    assert main(train_args(faces, out)) == 0
    err = capsys.readouterr().err
    assert f"note: taking over the stale lock {out / LOCK_NAME} of a run that is gone " \
           f"(pid {pid} on host {socket.gethostname()}" in err
    assert (out / BEST).exists() and not (out / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=dead_pid(), host="elsewhere", since="x")))
    with pytest.raises(RunLocked, match=r"on host elsewhere, since x\); if that run is gone, "
                                        r"remove .*\.lock"):
        RunLock(out).acquire()


def test_the_lock_is_removed_on_error_and_on_ctrl_c(faces, tmp_path, capsys, monkeypatch):
    out = tmp_path / "diverged"
    assert main(train_args(faces, out, "--lr", "1e6")) == 2
    err = capsys.readouterr().err
    assert "lower --lr" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (out / LOCK_NAME).exists()

    def interrupted(self, resume=False, on_epoch_end=None):
        assert (out / LOCK_NAME).exists()  # held while the run runs
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    monkeypatch.setattr(Loop, "run", interrupted)
    assert main(train_args(faces, out)) == 130
    assert not (out / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    other = dict(pid=1, host="h", since="s")
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))  # another run took it over meanwhile
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other
    assert [p for p in os.listdir(tmp_path) if p != LOCK_NAME] == []  # no temporary left
