#!/usr/bin/env python3
"""Training throughput on a GPU: one full Algorithm 1 step, ours vs PyTorch CUDA.

Ours: `deepid2_core.training.loop.Loop.step` (DeepID2Task) on the gpu backend, timed as a whole
(host: pair sampling and flips; device: batch assembly from the uint8 cache
on the device, forward, joint loss, backward, momentum SGD; the loss comes
back to the host every step). Deterministic mode unless --fast.

PyTorch: the reference model (../shared/reference/torch_deepid2.py, or
$DEEPID2_REFERENCE_DIR, imported by path) the way its own GPU benchmark
trains it: strided im2col, `SGD(lr=0.01, momentum=0.9)`, `zero_grad`,
`total_loss`, `backward`, `step`, on a random batch already on the device
(so it does no batch assembly at all). fp32, and TF32 (its fastest eager
variant). Same config as bench_train.py: conv3 on a 2x2 grid, 8192 classes,
lambda 0.05. Target (issue 4): ours >= 3x PyTorch at batch 512.

    python bench/bench_train_gpu.py                    # batches 128 512 2048
    python bench/bench_train_gpu.py --batches 512 --json out.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_common as bc  # noqa: E402

IN_C, IN_H, IN_W = 3, 55, 47
LAM, MOMENTUM, LR, MARGIN = 0.05, 0.9, 0.01, 1.0
TARGET = 3.0


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--classes", type=int, default=8192)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed steps per figure")
    ap.add_argument("--min-reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="also time our fast (atomics) mode")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    return ap.parse_args()


def timed(fn, sync, warmup, min_time, min_reps):
    """Median seconds per call over blocks of 5 calls, after warmup."""
    for _ in range(warmup):
        fn()
    sync()
    samples, t_start = [], time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / 5)
    return statistics.median(samples)


def ours(args, batch, be, cupy, fast):
    from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
    from deepid2_core.training.loop import Loop
    rng = np.random.default_rng(0)
    n = args.classes * 2
    cache = types.SimpleNamespace(
        patches=rng.integers(0, 256, (n, IN_H, IN_W, IN_C), dtype=np.uint8),
        labels=np.repeat(np.arange(args.classes, dtype=np.int32), 2),
        identities=[f"s{k}" for k in range(args.classes)])
    cfg = TrainConfig(epochs=100, batch=batch, lr=LR, momentum=MOMENTUM, weight_decay=0.0,
                      lam=LAM, verif="l2", margin=MARGIN, val_fraction=0.0, seed=0)
    be.set_deterministic(not fast)
    checks = be.set_index_checks(False)       # as Loop.run trains
    with tempfile.TemporaryDirectory() as tmp:
        tr = Loop(DeepID2Task(cache, tmp, cfg, be), progress=False)
        state = tr.to_device(tr.task.init_state())
        it = iter(range(10**9))
        last = {}

        def step():
            i = next(it)
            spe = tr.plan.steps_per_epoch
            last["loss"] = tr.step(state, i // spe, i % spe)["loss"]
        s = timed(step, cupy.cuda.Device().synchronize, args.warmup, args.min_time, args.min_reps)
    be.set_deterministic(True)
    be.set_index_checks(checks)
    return s, last["loss"]


def torch_step(torch, ref, args, batch, tf32):
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    ref.LocallySharedConv2d.im2col = ref.LocallyConnected2d.im2col = "strided"
    torch.manual_seed(0)
    model = ref.DeepID2(args.classes).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN_C, IN_H, IN_W, generator=g).cuda()
    lab = ref.make_labels(batch, args.classes, g).cuda()
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        f, logits = model(x)
        loss = F.cross_entropy(logits, lab) + LAM * ref.verification_loss(f, lab, MARGIN)
        loss.backward()
        opt.step()
        last["loss"] = loss
    s = timed(step, torch.cuda.synchronize, args.warmup, args.min_time, args.min_reps)
    return s, float(last["loss"])


def main():
    args = parse()
    import cupy
    from deepid2_core.backends import get_backend
    be = get_backend("gpu")
    be.set_debug(False)
    torch, ref, why = bc.import_reference(threads=4, disabled=args.no_torch)
    if torch is not None and not torch.cuda.is_available():
        torch, why = None, "torch sees no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"bench_train_gpu: {name}; reference: {bc.REF_DIR if torch else why}", flush=True)
    rows, failed = [], []
    for b in args.batches:
        row = {"batch": b}
        try:
            row["ours_det_s"], row["ours_loss"] = ours(args, b, be, cupy, fast=False)
            if args.fast:
                row["ours_fast_s"], _ = ours(args, b, be, cupy, fast=True)
            cupy.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                row["torch_fp32_s"], row["torch_loss"] = torch_step(torch, ref, args, b, False)
                row["torch_tf32_s"], _ = torch_step(torch, ref, args, b, True)
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"  batch {b}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            failed.append(b)
            continue
        print("  " + ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items()), flush=True)
        rows.append(row)
    print()
    print(f"bench_train_gpu summary ({name}; images/s of a whole training step; ratio = ours / "
          f"torch, target >= {TARGET:g}x the fastest torch at batch 512)")
    print(f"{'batch':>5s} {'ours det':>10s} {'ours fast':>10s} {'torch fp32':>10s} "
          f"{'torch tf32':>10s} {'vs fp32':>8s} {'vs tf32':>8s}")
    ips = lambda r, k: r["batch"] / r[k] if k in r else None  # noqa: E731
    f = lambda v: f"{v:10.0f}" if v else f"{'-':>10s}"  # noqa: E731
    for r in rows:
        o = max(v for v in (ips(r, "ours_det_s"), ips(r, "ours_fast_s")) if v)
        t32, tt = ips(r, "torch_fp32_s"), ips(r, "torch_tf32_s")
        print(f"{r['batch']:5d} {f(ips(r, 'ours_det_s'))} {f(ips(r, 'ours_fast_s'))} {f(t32)} "
              f"{f(tt)} {o / t32 if t32 else 0:8.2f} {o / tt if tt else 0:8.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(gpu=name, rows=rows, failed=failed), fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
