"""bench/gpu_check.sh --dry-run: every step of the GPU check on the kernel
emulator at tiny shapes (no GPU, CuPy or PyTorch), so that the script that a
short GPU window runs is itself tested: its steps pass, the sweep writes a
tuning file the training step then uses (and TF32 picks, from a TF32 sweep),
the tables come out with our TF32 row and the CUDA-graph latency (the
emulator records and replays the capture), and what cannot run here (the
PyTorch rows) says so."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from package_home import PACKAGE_HOME

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
pytestmark = [
    pytest.mark.skipif(not SCRIPT.is_file(), reason="bench/ is not in this tree"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="the kernel emulator needs g++"),
]


def _run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([PACKAGE_HOME, os.environ.get("PYTHONPATH", "")]))
    env.pop("DEEPID2_GPU_TUNING", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)


def test_dry_run_goes_through_every_step(tmp_path):
    p = _run(tmp_path, "--dry-run", "--budget", "10")
    out = p.stdout
    assert p.returncode == 0, out[-4000:] + p.stderr[-2000:]
    steps = out[out.index("gpu_check: steps"):].splitlines()[1:12]
    names = [s.split()[0] for s in steps]
    assert names == ["env", "build", "compile", "tests", "memcheck", "racecheck", "sweep",
                     "train", "infer", "synccheck", "bench"], steps
    assert all(s.split()[1] == "ok" for s in steps), steps
    log = (tmp_path / "gpu_check.log").read_text()
    assert "emulator build ok: lsconv.cu" in log
    tests = log[log.index("] tests (cap"):]
    assert " passed in " in tests[:tests.index("=== ")]      # the tests step ran tests
    # the sweep wrote picks for the emulator, and the training step used some of them
    tuning = json.loads((tmp_path / "gpu_tuning.json").read_text())
    picks = tuning["cards"]["deepid2 kernel emulator"]["fp32"]
    assert picks and all(e["variant"] for op in picks.values() for e in op.values())
    assert "sweep summary (deepid2 kernel emulator, emu" in out
    train = json.loads((tmp_path / "bench_train_gpu.json").read_text())
    assert train["rows"][0]["tuned_sources"].get("tuned", 0) > 0
    assert "bench_train_gpu summary" in out and "bench_infer_gpu summary" in out
    # what a dry run cannot do is said, not silently left out
    assert "torch columns: not run (the emulator (no GPU))" in out
    assert "ours tf32: not available" not in out     # the precision switch is there
    row = out[out.index("bench_train_gpu summary"):].splitlines()[4].split()
    assert row[0] == "2" and float(row[4]) > 0, row  # batch 2: ours tf32 images/s
    assert tuning["cards"]["deepid2 kernel emulator"]["tf32"]["lsconv_fwd"]
    graph = next(line for line in out.splitlines() if line.startswith("ms, batch 1, CUDA graph"))
    assert float(graph.split()[5]) > 0, graph


@pytest.mark.parametrize("args, words", [
    (["--budget"], "--budget needs a positive number of seconds"),
    (["--budget", "soon"], "--budget needs a positive number of seconds"),
    (["--fast"], "unknown argument '--fast'"),
])
def test_bad_arguments_are_one_line(tmp_path, args, words):
    p = _run(tmp_path, *args)
    assert p.returncode == 2
    assert p.stderr.strip() == f"gpu_check: {words}" + (
        " (--budget SECONDS, --dry-run)" if "unknown" in words else ""), p.stderr
