"""Data-parallel training (deepid2_core/training/dist.py): `mpiexec -n 2 deepid2 train`
on the cpu backend against one process, faults, resume on another rank count; and
a plain run, which never imports it.

The MPI tests start real `mpiexec -n 2` jobs (OMP_NUM_THREADS=1 per rank) and
are skipped, with the reason, where mpi4py or mpiexec is missing
(`pip install '.[dist]'` brings both)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import deepid2_core
from deepid2_core import cli, safetensors
from deepid2_core.data import build_cache
from deepid2_core.face.inputs import PatchSpec
from deepid2_core.synth import make_dataset
from deepid2_core.training import deepid2 as T
from deepid2_core.training.checkpoint import CHECKPOINT, BEST
from deepid2_core.training.deepid2 import PairSampler, micro_batch
from deepid2_core.training.train_deepid2 import LAUNCHER_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(deepid2_core.__file__)))
ARGS = ["--epochs", "2", "--batch", "8", "--lr", "0.02", "--seed", "3", "--val-fraction", "0.25",
        "--learn-margin", "--warmup-steps", "2"]


def _mpiexec():
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install '.[dist]')"
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = exe if os.path.exists(exe) else shutil.which("mpiexec")
    if not exe:
        return None, "no mpiexec on PATH (pip install '.[dist]' brings MPICH's)"
    return exe, ""


MPIEXEC, WHY = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason=WHY)


def mpirun(n, args, fault=None, timeout=120):
    """`mpiexec -n N python -m deepid2_core.cli ARGS`; (returncode, output)."""
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    cmd = [MPIEXEC, "-n", str(n)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    env.pop("DEEPID2_DIST_FAULT", None)
    if fault:
        env["DEEPID2_DIST_FAULT"] = fault
    if "Open MPI" in version or "OpenRTE" in version:  # as root, on 2 cores
        cmd.append("--oversubscribe")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd += [sys.executable, "-m", "deepid2_core.cli"] + args
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    make_dataset(root / "faces", identities=8, images_per_identity=6, seed=5, progress=False)
    build_cache(root / "faces", root / "cache", PatchSpec(), progress=False)
    return root


def train_args(data, out, *extra):
    return (["train", "--data", str(data / "faces"), "--cache", str(data / "cache"),
             "--out", str(out)] + ARGS + list(extra))


def ckpt(path):
    return (path / CHECKPOINT).read_bytes()


@pytest.fixture(scope="module")
def reference(data):
    """One process, no MPI, 2 micro-batches: what a 2-rank run must reproduce."""
    out = data / "ref"
    assert cli.main(train_args(data, out, "--micro-batches", "2")) == 0
    return out


# -- the split -------------------------------------------------------------------
def test_micro_batches_keep_pairs_whole_and_cover_the_batch():
    labels = np.repeat(np.arange(6), 5)
    sampler = PairSampler(labels, np.arange(len(labels)))
    images, pa, pb, py = sampler.batch(np.random.default_rng([1, 0, 3]), 24, 0.5)
    flips = np.random.default_rng(0).random(24) < 0.5
    seen = []
    for g in range(4):
        idx, fl, ga, gb, gy = micro_batch(images, flips, py, 4, g)
        assert len(idx) == 6 and list(ga) == [0, 1, 2] and list(gb) == [3, 4, 5]
        k = np.arange(3 * g, 3 * g + 3)  # the pairs this micro-batch owns
        assert (idx[ga] == images[pa[k]]).all() and (idx[gb] == images[pb[k]]).all()
        assert (gy == py[k]).all() and (fl == np.concatenate([flips[pa[k]], flips[pb[k]]])).all()
        seen += list(zip(idx, fl))
    assert sorted(seen) == sorted(zip(images, flips))  # union = the 1-process batch
    with pytest.raises(ValueError, match="whole pairs"):
        micro_batch(images, flips, py, 5, 0)


def test_pair_term_of_micro_batches_is_the_batch_pair_term(be):
    rng = np.random.default_rng(0)
    n, p, classes = 16, 8, 5
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    feats = rng.standard_normal((n, 12)).astype(np.float32) * 0.2
    labels = rng.integers(0, classes, n).astype(np.int32)
    py = np.where(rng.random(p) < 0.5, 1, -1).astype(np.int32)
    whole = be.joint_loss(logits, labels, feats, np.arange(p, dtype=np.int32),
                          np.arange(p, 2 * p, dtype=np.int32), py, lam=0.5)
    parts = [be.joint_loss(np.ascontiguousarray(logits[i]), labels[i],
                           np.ascontiguousarray(feats[i]), pa, pb, gy, lam=0.5)
             for i, _, pa, pb, gy in (micro_batch(np.arange(n), np.zeros(n, bool), py, 2, g)
                                      for g in range(2))]
    assert np.isclose(np.mean([q.verif for q in parts]), whole.verif, rtol=1e-6)
    assert np.isclose(np.mean([q.ident for q in parts]), whole.ident, rtol=1e-6)
    assert sum(q.correct for q in parts) == whole.correct
    rows0 = np.r_[0:4, 8:12]
    np.testing.assert_allclose(parts[0].dfeatures / 2, whole.dfeatures[rows0], atol=1e-7)
    np.testing.assert_allclose(parts[0].dlogits / 2, whole.dlogits[rows0], atol=1e-7)


PROBE = """
import json, sys
from deepid2_core.cli import main
rc = main(sys.argv[1:])
print(json.dumps([rc, sorted(m for m in sys.modules if m == "deepid2_core.training.dist"
                             or m.split(".")[0] == "mpi4py")]))
"""


@pytest.mark.parametrize("extra", [[], ["--micro-batches", "2"]])
def test_a_plain_run_never_imports_the_distributed_code(data, tmp_path, extra):
    """`deepid2 train` with no MPI launcher: a plain run, micro-batches or not,
    imports neither training/dist.py nor mpi4py."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update(OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", PROBE,
                        *train_args(data, tmp_path / "plain", *extra)],
                       capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rc, modules = json.loads(r.stdout.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "plain" / CHECKPOINT).exists()
    assert modules == [], modules   # neither training.dist nor mpi4py


def test_micro_batches_match_one_batch_within_tolerance(data, reference, tmp_path):
    """G = 2 against the whole batch (G = 1): the same math, another GEMM
    summation order: equal to float32 rounding, not bit for bit."""
    assert cli.main(train_args(data, tmp_path / "plain")) == 0
    a, _ = safetensors.load(tmp_path / "plain" / CHECKPOINT)
    b, _ = safetensors.load(reference / CHECKPOINT)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, rtol=0, err_msg=k)


def test_micro_batches_must_fit_the_batch(data, tmp_path, capsys):
    assert cli.main(train_args(data, tmp_path / "x", "--micro-batches", "3")) == 2
    assert "multiple of 2 x micro-batches" in capsys.readouterr().err


# -- real MPI jobs -----------------------------------------------------------------
@needs_mpi
def test_two_ranks_deterministic_are_bit_identical_to_one_process(data, reference, tmp_path):
    rc, out = mpirun(2, train_args(data, tmp_path / "r2", "--deterministic"))
    assert rc == 0, out
    assert "data-parallel: 2 rank(s) (mpi)" in out and out.count("done in") == 1, out
    assert ckpt(tmp_path / "r2") == ckpt(reference)
    assert (tmp_path / "r2" / BEST).read_bytes() == (reference / BEST).read_bytes()
    # rank 0 logs the figures of the 1-process run
    rows = lambda d: [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
    for r2, ref in zip(rows(tmp_path / "r2"), rows(reference)):
        for key in ("loss", "ident", "verif", "train_acc", "val_acc", "verif_params"):
            assert r2[key] == ref[key], key


@needs_mpi
def test_two_ranks_fast_allreduce_agree(data, reference, tmp_path):
    rc, out = mpirun(2, train_args(data, tmp_path / "fast"))
    assert rc == 0, out
    assert "fast (all-reduce)" in out and "MB sent per rank per step" in out
    a, _ = safetensors.load(tmp_path / "fast" / CHECKPOINT)
    b, _ = safetensors.load(reference / CHECKPOINT)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)


@needs_mpi
def test_killed_rank_stops_the_job_and_resume_matches(data, reference, tmp_path):
    run = tmp_path / "killed"
    rc, out = mpirun(2, train_args(data, run, "--deterministic"), fault="1:2:1:kill")
    assert rc != 0, out
    # MPICH's launcher names the dead process by its PID, which rank 0's start
    # line maps to its rank; Open MPI's names the rank itself
    pids = dict(re.findall(r"(\d)=pid (\d+)@", out))
    assert f"PID {pids['1']} " in out or re.search(r"rank 1\b", out), out
    tensors, meta = safetensors.load(run / CHECKPOINT)  # whole, from epoch 1
    assert meta["epoch"] == "1"
    two_to_one = tmp_path / "two_to_one"
    shutil.copytree(run, two_to_one)
    rc, out = mpirun(2, train_args(data, run, "--deterministic", "--resume"))
    assert rc == 0 and "resuming" in out, out
    assert ckpt(run) == ckpt(reference)
    # resume on another rank count: 2 ranks -> 1 process (same micro-batches)
    assert cli.main(train_args(data, two_to_one, "--micro-batches", "2", "--resume")) == 0
    assert ckpt(two_to_one) == ckpt(reference)


@needs_mpi
def test_failing_rank_is_named_and_one_process_resumes_on_two(data, reference, tmp_path,
                                                             monkeypatch):
    rc, out = mpirun(2, train_args(data, tmp_path / "raised", "--deterministic"),
                     fault="1:2:0:raise")
    assert rc != 0
    assert "rank 1 of 2 failed: RuntimeError: injected fault" in out, out
    assert safetensors.load(tmp_path / "raised" / CHECKPOINT)[1]["epoch"] == "1"
    # 1 process -> 2 ranks: cut a 1-process run after epoch 1, resume it on 2 ranks
    run = tmp_path / "one_to_two"
    whole_batch = T.DeepID2Task.batch

    def fault_in_epoch_2(task, epoch, step):
        if epoch == 1:
            raise RuntimeError("injected fault")
        return whole_batch(task, epoch, step)

    monkeypatch.setattr(T.DeepID2Task, "batch", fault_in_epoch_2)
    with pytest.raises(RuntimeError, match="injected fault"):
        cli.main(train_args(data, run, "--micro-batches", "2"))
    monkeypatch.setattr(T.DeepID2Task, "batch", whole_batch)
    assert safetensors.load(run / CHECKPOINT)[1]["epoch"] == "1"
    rc, out = mpirun(2, train_args(data, run, "--deterministic", "--resume"))
    assert rc == 0, out
    assert ckpt(run) == ckpt(reference)
