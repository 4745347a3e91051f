#!/usr/bin/env python3
"""Training throughput on a GPU: one full Algorithm 1 step, ours vs PyTorch CUDA.

Ours: `deepid2_core.training.loop.Loop.step` (DeepID2Task) on the gpu backend, timed as a whole
(host: pair sampling and flips; device: batch assembly from the uint8 cache
on the device, forward, joint loss, backward, momentum SGD; the loss comes
back to the host every step). Deterministic mode, fp32, with the kernel
variants the tuning file picks (bench/kernels/sweep.py writes it; --tuning or
$DEEPID2_GPU_TUNING) and, for comparison, with the backend's heuristics
(DEEPID2_GPU_TUNING=off); --fast adds the fast (atomics) mode; TF32 where the
backend has a precision switch (set_precision), else the row says "not
available".

PyTorch: the reference model (../shared/reference/torch_deepid2.py, or
$DEEPID2_REFERENCE_DIR, imported by path) the way its own GPU benchmark
trains it: strided im2col, `SGD(lr=0.01, momentum=0.9)`, `zero_grad`,
`total_loss`, `backward`, `step`, on a random batch already on the device
(so it does no batch assembly at all). fp32, and TF32 (its fastest eager
variant). Same config as bench_train.py: conv3 on a 2x2 grid, 8192 classes,
lambda 0.05. Target (issue 22): ours >= 3x PyTorch fp32 at batches 512 and 2048.

    python bench/bench_train_gpu.py                    # batches 128 512 2048
    python bench/bench_train_gpu.py --batches 512 --json out.json
    python bench/bench_train_gpu.py --emu              # the kernel emulator, tiny
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
    ap.add_argument("--batches", type=int, nargs="+", help="default 128 512 2048 (emulator: 2)")
    ap.add_argument("--classes", type=int, help="default 8192 (emulator: 50)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed steps per figure")
    ap.add_argument("--min-reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="also time our fast (atomics) mode")
    ap.add_argument("--tuning", help="the tuning file of the tuned rows (default: "
                    "$DEEPID2_GPU_TUNING or the per-user one)")
    ap.add_argument("--emu", action="store_true", help="the kernel emulator at a tiny input "
                    "(automatic without CuPy or a GPU)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    return args


def timed(fn, sync, warmup, min_time, min_reps, block=5):
    """Median seconds per call over blocks of `block` calls, after warmup."""
    for _ in range(warmup):
        fn()
    sync()
    samples, t_start = [], time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        for _ in range(block):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / block)
    return statistics.median(samples)


def ours(args, batch, be, cupy, fast=False, tuning=None, precision=None):
    """(seconds per step, its loss, {variant source: count}) of Loop.step;
    tuning: the tuning file ("off": the heuristics); precision: set_precision's."""
    from deepid2_core.backends import gpu_tiling
    from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
    from deepid2_core.training.loop import Loop
    rng = np.random.default_rng(0)
    n = args.classes * 2
    cache = types.SimpleNamespace(
        patches=rng.integers(0, 256, (n, args.in_h, args.in_w, IN_C), dtype=np.uint8),
        labels=np.repeat(np.arange(args.classes, dtype=np.int32), 2),
        identities=[f"s{k}" for k in range(args.classes)])
    cfg = TrainConfig(epochs=100, batch=batch, lr=LR, momentum=MOMENTUM, weight_decay=0.0,
                      lam=LAM, verif="l2", margin=MARGIN, val_fraction=0.0, seed=0)
    old_env = os.environ.get("DEEPID2_GPU_TUNING")
    if tuning:
        os.environ["DEEPID2_GPU_TUNING"] = tuning
    old_prec = precision and args.set_precision(precision)
    be.set_deterministic(not fast)
    checks = be.set_index_checks(False)       # as Loop.run trains
    sources, choose = {}, gpu_tiling.choose

    def counted(*a, **k):   # where each op's variant came from (tuned / heuristic / ...)
        c = choose(*a, **k)
        sources[c.source] = sources.get(c.source, 0) + 1
        return c
    gpu_tiling.choose = counted
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tr = Loop(DeepID2Task(cache, tmp, cfg, be), progress=False)
            state = tr.to_device(tr.task.init_state())
            it = iter(range(10**9))
            last = {}

            def step():
                i = next(it)
                spe = tr.plan.steps_per_epoch
                last["loss"] = tr.step(state, i // spe, i % spe)["loss"]
            step()
            first = dict(sources)   # one step's choices
            s = timed(step, cupy.cuda.Device().synchronize, args.warmup, args.min_time,
                      args.min_reps, args.block)
    finally:
        gpu_tiling.choose = choose
        be.set_deterministic(True)
        be.set_index_checks(checks)
        if precision:
            args.set_precision(old_prec)
        if tuning:
            if old_env is None:
                os.environ.pop("DEEPID2_GPU_TUNING", None)
            else:
                os.environ["DEEPID2_GPU_TUNING"] = old_env
    return s, last["loss"], first


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


def feature(be, name):
    """The gpu backend's function `name` (set_precision, capture_graph), or
    None where this backend lacks it."""
    return getattr(be, name, None)


def backend(args):
    """(backend, cupy, mode) on the GPU, or the kernel emulator (bench/kernels/harness.py)."""
    sys.path.insert(0, os.path.join(HERE, "kernels"))
    import harness
    be, cupy, mode = harness.load_backend(args)
    args.block = 5
    if mode == "emu":   # the shapes of bench/kernels/ in the emulator: its picks apply
        args.in_h, args.in_w = harness.EMU_NET["height"], harness.EMU_NET["width"]
        args.batches = args.batches or [2]
        args.classes = args.classes or harness.EMU_CLASSES
        args.warmup, args.min_reps, args.min_time, args.block = 0, 1, 0.0, 1
        args.no_torch = True
    else:
        args.in_h, args.in_w = IN_H, IN_W
        args.batches = args.batches or [128, 512, 2048]
        args.classes = args.classes or harness.CLASSES
    return be, cupy, mode


def main():
    args = parse()
    be, cupy, mode = backend(args)
    be.set_debug(False)
    args.set_precision = feature(be, "set_precision")
    torch, ref, why = bc.import_reference(threads=4, disabled=args.no_torch)
    if mode == "emu":
        why = "the emulator (no GPU)"
    elif torch is not None and not torch.cuda.is_available():
        torch, why = None, "torch sees no CUDA device"
    name = be.card_name() or "unknown card"
    tuning = args.tuning or os.environ.get("DEEPID2_GPU_TUNING") or None
    print(f"bench_train_gpu: {name} ({mode}); reference: "
          f"{bc.REF_DIR if torch else 'not run: ' + why}; tuning file: "
          f"{tuning or 'the per-user default'}; TF32: "
          f"{'set_precision' if args.set_precision else 'not available (no precision switch in the gpu backend)'}",
          flush=True)
    rows, failed = [], []
    for b in args.batches:
        row = {"batch": b}
        try:
            row["ours_tuned_s"], row["ours_loss"], row["tuned_sources"] = ours(
                args, b, be, cupy, tuning=tuning)
            row["ours_heur_s"], _, _ = ours(args, b, be, cupy, tuning="off")
            if args.fast:
                row["ours_fast_s"], _, _ = ours(args, b, be, cupy, fast=True, tuning=tuning)
            if args.set_precision:
                row["ours_tf32_s"], _, _ = ours(args, b, be, cupy, tuning=tuning,
                                                precision="tf32")
            if hasattr(cupy, "get_default_memory_pool"):
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
    summary(name, mode, rows, torch is not None, why, args.set_precision is not None)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(gpu=name, mode=mode, rows=rows, failed=failed), fh, indent=1)
    return 1 if failed else 0


def summary(name, mode, rows, have_torch, why, have_tf32):
    print()
    print(f"bench_train_gpu summary ({name}, {mode}; images/s of a whole training step; "
          f"ratio = ours / torch; target >= {TARGET:g}x torch fp32 at batches 512 and 2048)")
    if mode == "emu":
        print("(the emulator: the figures check the path, they are not a GPU's speed)")
    if not have_torch:
        print(f"torch columns: not run ({why})")
    if not have_tf32:
        print("ours tf32: not available (the gpu backend has no TF32 precision switch)")
    print(f"{'batch':>5s} {'ours tuned':>10s} {'ours heur':>10s} {'ours fast':>10s} "
          f"{'ours tf32':>10s} {'torch fp32':>10s} {'torch tf32':>10s} {'vs fp32':>8s} "
          f"{'vs tf32':>8s}  picks")
    ips = lambda r, k: r["batch"] / r[k] if k in r else None  # noqa: E731
    f = lambda v: f"{v:10.0f}" if v else f"{'-':>10s}"  # noqa: E731
    for r in rows:
        o32 = max(v for v in (ips(r, "ours_tuned_s"), ips(r, "ours_heur_s"),
                              ips(r, "ours_fast_s")) if v)
        otf = max(v for v in (o32, ips(r, "ours_tf32_s")) if v)
        t32, tt = ips(r, "torch_fp32_s"), ips(r, "torch_tf32_s")
        src = ", ".join(f"{k} {v}" for k, v in sorted(r["tuned_sources"].items()))
        print(f"{r['batch']:5d} {f(ips(r, 'ours_tuned_s'))} {f(ips(r, 'ours_heur_s'))} "
              f"{f(ips(r, 'ours_fast_s'))} {f(ips(r, 'ours_tf32_s'))} {f(t32)} {f(tt)} "
              f"{o32 / t32 if t32 else 0:8.2f} {otf / tt if tt else 0:8.2f}  {src}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
