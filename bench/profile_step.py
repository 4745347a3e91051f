#!/usr/bin/env python3
"""Where one real training step's time goes, phase by phase.

Runs `Loop.step` (DeepID2Task) exactly as bench_train.py does (batch 128, 8192 classes,
synthetic cache) with every backend op wrapped in a timer, so each layer's
forward and backward, the loss and the SGD update are timed inside the real
step; "python + data" is the rest (pair sampling, batch assembly, gradient
buffers, Python glue). Per phase: the minimum and median over the timed steps
of the wall time (perf_counter) and, with --cpu-time, of the calling thread's
CPU time (meaningful with --threads 1 on a busy machine: the other processes'
load does not count).

Usage (from the repository root):
  python bench/profile_step.py                     # 2 threads, 40 steps
  python bench/profile_step.py --threads 1 --cpu-time --steps 60
"""
import argparse
import statistics
import sys
import tempfile
import time
import types

import bench_common as bc
from bench_common import REPO

ap = argparse.ArgumentParser(description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--classes", type=int, default=8192)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=40, help="timed steps")
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--cpu-time", action="store_true",
                help="time by the calling thread's CPU time instead of the wall clock")
ap.add_argument("--no-malloc-tune", action="store_true")
ARGS = ap.parse_args()
if not ARGS.no_malloc_tune:
    bc.ensure_malloc_env()
bc.set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, REPO)
from deepid2_core.backends import get_backend  # noqa: E402
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig  # noqa: E402
from deepid2_core.training.loop import Loop  # noqa: E402

clock = time.thread_time if ARGS.cpu_time else time.perf_counter
BE = get_backend("cpu")


class TimedBackend:
    """The cpu backend with every op timed under a phase name."""

    def __init__(self, be):
        self._be, self.acc, self.params = be, {}, {}

    def __getattr__(self, name):
        fn = getattr(self._be, name)
        if not callable(fn) or name.startswith("_"):
            return fn

        def timed(*a, **k):
            t0 = clock()
            out = fn(*a, **k)
            label = self._label(name, a)
            self.acc[label] = self.acc.get(label, 0.0) + clock() - t0
            return out
        return timed

    def _label(self, op, a):
        if op.startswith(("lsconv", "dense")):
            w = a[1]
            name = next((k for k, v in self.params.items() if v is w), "?").split(".")[0]
            if op.startswith("lsconv_pool"):  # conv + its pool as one op
                name += f"+pool{name[-1]}"
            return f"{name} {'fwd' if op.endswith('forward') else 'bwd'}"
        if op == "maxpool_forward":
            return f"pool{ {20: 1, 40: 2, 60: 3}.get(a[0].shape[1], '?') } fwd"
        if op == "maxpool_backward":
            return f"pool{ {20: 1, 40: 2, 60: 3}.get(a[0].shape[1], '?') } bwd"
        if op == "sgd_update":
            return "sgd"
        if op == "joint_loss":
            return "loss"
        return op


def main():
    rng = np.random.default_rng(0)
    n = ARGS.classes * 2
    cache = types.SimpleNamespace(
        patches=rng.integers(0, 256, (n, 55, 47, 3), dtype=np.uint8),
        labels=np.repeat(np.arange(ARGS.classes, dtype=np.int32), 2),
        identities=[f"synthetic{k:05d}" for k in range(ARGS.classes)])
    tbe = TimedBackend(BE)
    cfg = TrainConfig(epochs=100, batch=ARGS.batch, lr=0.01, momentum=0.9, weight_decay=0.0,
                      lam=0.05, val_fraction=0.0, seed=0)
    with tempfile.TemporaryDirectory() as d:
        trainer = Loop(DeepID2Task(cache, d, cfg, tbe), progress=False)
        state = trainer.task.init_state()
        tbe.params = state["params"]
        rows = []
        for i in range(ARGS.warmup + ARGS.steps):
            tbe.acc = {}
            t0 = clock()
            trainer.step(state, 0, i % trainer.plan.steps_per_epoch)
            total = clock() - t0
            if i >= ARGS.warmup:
                r = dict(tbe.acc)
                r["python + data"] = total - sum(tbe.acc.values())
                r["step"] = total
                rows.append(r)
    order = list(rows[0])  # phases in the order the step first calls them
    kind = "thread CPU" if ARGS.cpu_time else "wall"
    print(f"one Loop.step, batch {ARGS.batch}, {ARGS.classes} classes, {ARGS.threads} threads, "
          f"{ARGS.steps} steps, {kind} time in ms")
    print(f"{'phase':16s} {'min':>8s} {'median':>8s}")
    for k in order:
        v = [r.get(k, 0.0) * 1e3 for r in rows]
        print(f"{k:16s} {min(v):8.2f} {statistics.median(v):8.2f}")


if __name__ == "__main__":
    main()
