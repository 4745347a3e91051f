"""Data-parallel training on the cpu backend: 1 rank x 2 threads against
2 ranks x 1 thread, plus the gradient all-reduce's time and bytes, and a
ring all-reduce model of the scaling to many GPUs.

    python bench/bench_dist.py                 # about 2 minutes on 2 cores
    python bench/bench_dist.py --steps 4 --identities 64

Each configuration is one `mpiexec -n R` job (this file with --worker) that
trains the same global batch (--batch, default 128) with R micro-batches of
whole pairs, fast mode (one MPI.Allreduce of the flat gradient per step), and
times --steps steps after one warm-up step. The worker also times an
all-reduce of 2.0 M floats (8 MB: the gradient with 8,192 identities).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def worker(a):
    import numpy as np
    from deepid2_core.backends import get_backend
    from deepid2_core.data import build_cache
    from deepid2_core.face.inputs import PatchSpec
    from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
    from deepid2_core.training.dist import DataParallel, MPIComm
    from deepid2_core.training.loop import Loop
    comm = MPIComm()
    be = get_backend("cpu")
    cache = build_cache(a.data, a.cache, PatchSpec(), progress=False)
    cfg = TrainConfig(epochs=1, batch=a.batch, lr=0.01, seed=0, val_fraction=0.1)
    par = DataParallel(comm)
    tr = Loop(DeepID2Task(cache, a.out, cfg, be, parallel=par), comm.size, par,
              log=lambda *x: None, progress=False)
    state = tr.task.init_state()
    tr.step(state, 0, 0)  # warm-up
    red = par.reducer
    red.seconds, red.calls, red.bytes_sent = 0.0, 0, 0
    comm.barrier()
    t0 = time.perf_counter()
    for s in range(1, a.steps + 1):
        tr.step(state, 0, s)
    comm.barrier()
    secs = time.perf_counter() - t0
    # an 8 MB all-reduce (2.0 M floats), as with 8,192 identities
    big = np.ones(2_000_000, np.float32)
    comm.Allreduce_sum(big)
    comm.barrier()
    reps = 10
    t1 = time.perf_counter()
    for _ in range(reps):
        comm.Allreduce_sum(big)
    comm.barrier()
    big_s = (time.perf_counter() - t1) / reps if comm.size > 1 else 0.0
    if comm.rank == 0:
        steps = a.steps
        print(json.dumps(dict(
            ranks=comm.size, threads=be.max_threads(), images_per_s=a.batch * steps / secs,
            step_ms=1e3 * secs / steps,
            allreduce_ms=1e3 * red.seconds / max(red.calls, 1),
            bytes_per_step=red.bytes_sent / max(red.calls, 1), grad_bytes=tr.grads.size * 4,
            allreduce_8mb_ms=1e3 * big_s)), flush=True)


def launch(ranks, threads, a, tmp):
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = exe if os.path.exists(exe) else shutil.which("mpiexec")
    if not exe:
        sys.exit("bench_dist: no mpiexec (pip install '.[dist]')")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [exe, "-n", str(ranks)]
    if "Open MPI" in subprocess.run([exe, "--version"], capture_output=True, text=True).stdout:
        cmd.append("--oversubscribe")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd += [sys.executable, os.path.abspath(__file__), "--worker", "--data", a.data,
            "--cache", os.path.join(tmp, "cache"), "--out", os.path.join(tmp, f"run{ranks}"),
            "--batch", str(a.batch), "--steps", str(a.steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"bench_dist: {' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return json.loads([x for x in r.stdout.splitlines() if x.startswith("{")][-1])


def ring_s(p, nbytes, gbps, alpha=5e-6):
    """Ring all-reduce: 2(p-1) steps, each moving nbytes/p over one link."""
    return 2 * (p - 1) / p * nbytes / (gbps * 1e9) + 2 * (p - 1) * alpha


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data")
    ap.add_argument("--cache")
    ap.add_argument("--out")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--identities", type=int, default=100)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    from deepid2_core.data import build_cache
    from deepid2_core.face.inputs import PatchSpec
    from deepid2_core.synth import make_dataset
    tmp = tempfile.mkdtemp(prefix="bench_dist-")
    try:
        a.data = os.path.join(tmp, "faces")
        make_dataset(a.data, identities=a.identities, images_per_identity=12, seed=0,
                     progress=False)
        build_cache(a.data, os.path.join(tmp, "cache"), PatchSpec(), progress=False)
        rows = [launch(1, 2, a, tmp), launch(2, 1, a, tmp)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"global batch {a.batch}, {a.identities} identities, {a.steps} timed steps, "
          f"gradient {rows[0]['grad_bytes'] / 1e6:.2f} MB (one flat buffer)\n")
    print("| ranks x threads | img/s | ms/step | all-reduce ms/step | bytes sent/rank/step |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['ranks']} x {r['threads']} | {r['images_per_s']:.1f} | {r['step_ms']:.0f} | "
              f"{r['allreduce_ms']:.2f} | {r['bytes_per_step'] / 1e6:.2f} MB |")
    two = rows[1]
    print(f"\n8 MB all-reduce (2.0 M floats), 2 ranks, shared memory: "
          f"{two['allreduce_8mb_ms']:.2f} ms")
    # scaling model: E = t_c / (t_c + t_ar), no overlap of compute and communication
    t_img = (two["step_ms"] - two["allreduce_ms"]) / 1e3 * two["ranks"] / a.batch
    nbytes = 8e6
    print(f"\nscaling model, 8 MB gradient, ring all-reduce, alpha = 5 us per hop, "
          f"t_ar(p) = 2 (p-1)/p S/B + 2 (p-1) alpha; E = t_c / (t_c + t_ar), t_c = b t_img;"
          f"\ncompute per image measured here t_img = {t_img * 1e3:.2f} ms (1 cpu core)\n")
    # measured GPU compute per image: a whole training step at batch 512 on one
    # H200, 4.84 ms (bench/RESULTS.md, run 4) -> 9.5 us per image
    gpu = 9.5e-6
    print("| GPUs | link | t_ar ms | E, b = 64, t_img here | E, b = 64, t_img = 9.5 us (H200) "
          "| b for E = 90% at 9.5 us |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in (8, 64, 512):
        for gbps in (25, 100):
            t = ring_s(p, nbytes, gbps)
            e = 64 * t_img / (64 * t_img + t)
            eg = 64 * gpu / (64 * gpu + t)
            b90 = math.ceil(9 * t / gpu)
            print(f"| {p} | {gbps} GB/s | {t * 1e3:.3f} | {100 * e:.1f}% | {100 * eg:.0f}% "
                  f"| {b90} |")


if __name__ == "__main__":
    main()
