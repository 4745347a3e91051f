#!/usr/bin/env python3
"""Training throughput: one full Algorithm 1 step, deepid2_core vs PyTorch.

Ours: `deepid2_core.training.loop.Loop.step` (DeepID2Task) on the cpu backend, timed as a whole:
pair-batch sampling, batch assembly (uint8 patches -> float32, random flips),
forward, joint loss (softmax CE + lambda * l2 verification on the pairs),
backward and the momentum-SGD update of every parameter.  The data is a
synthetic in-memory cache (random uint8 55x47x3 patches, 2 images for each of
the 8192 identities), so every class of the softmax layer can occur.

PyTorch (optional, same process): the reference model
(../shared/reference/torch_deepid2.py, imported by path, never copied) the way
a careful user trains it: `DeepID2(classes)`, `torch.optim.SGD(lr=0.01,
momentum=0.9)`, `zero_grad(set_to_none=True)`, `total_loss(...)`,
`.backward()`, `opt.step()`, on a random float32 batch whose pairs (i, i+N/2)
are half same-identity (the reference's `make_labels`).  Timed in the default
NCHW layout and in channels_last (input and conv1/conv2 weights converted, as
the reference does); `--compile` adds torch.compile.

Config (the project's): batch 128, conv3 locally shared on a 2x2 grid, conv4
locally connected, 8192 classes, lambda 0.05, momentum 0.9, lr 0.01, no weight
decay on either side, 2 threads.  Each figure is the median step time after
warm-up; images/s = batch / median.  The ratio ours/torch (> 1: ours faster)
is printed against every torch variant and against the fastest; the target is
ours >= 1.5x the fastest.

Usage (from the repository root):
  python bench/bench_train.py                  # batch 128, 2 threads
  python bench/bench_train.py --json bench_train.json
  python bench/bench_train.py --compile        # also torch.compile (slow to compile)
  python bench/bench_train.py --reps 50 --min-time 6
"""
import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
import types

import bench_common as bc
from bench_common import MALLOC_ENV, NOISY, REPO

IN_C, IN_H, IN_W = 3, 55, 47
LAM, MOMENTUM, LR, MARGIN = 0.05, 0.9, 0.01, 1.0
IMAGES_PER_ID = 2        # >= 2 so that same-identity pairs exist for every identity
TARGET = 1.5             # ours >= TARGET x the fastest torch variant


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2,
                    help="OMP_NUM_THREADS for our ops and torch.set_num_threads (default 2)")
    ap.add_argument("--classes", type=int, default=8192, help="identities (softmax width)")
    ap.add_argument("--reps", type=int, default=30, help="at least this many timed steps per variant")
    ap.add_argument("--min-time", type=float, default=3.0,
                    help="and keep stepping until this many seconds per variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    ap.add_argument("--compile", action="store_true",
                    help="also time a torch.compile'd model (compilation takes a minute or more)")
    ap.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if importable")
    ap.add_argument("--no-ours", action="store_true", help="time only PyTorch")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the one-step cross-check of ours against the torch model")
    ap.add_argument("--retries", type=int, default=2,
                    help="time a variant again (up to this many times) when other processes used more "
                         "than 10%% of the CPUs meanwhile; the quietest attempt is kept")
    ap.add_argument("--retry-budget", type=float, default=90.0,
                    help="no retries once the run has taken this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write all results to this file")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ (noisier timings)")
    args = ap.parse_args()
    if args.batch < 2:
        ap.error("--batch must be at least 2 (one pair)")
    if args.classes < 2:
        ap.error("--classes must be at least 2")
    return args


# This file is a script, not a module to import: it parses its command line
# and sets up the process here, before numpy, torch or our module load, the
# same way as bench_ops.py.  Shared helpers live in bench_common.py.
ARGS = parse_args()

if not ARGS.no_malloc_tune:
    bc.ensure_malloc_env()      # re-execs this script once with MALLOC_ENV set
# Thread counts must be in the environment before numpy, torch or our module
# (OpenMP) are loaded.
bc.set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, REPO)

BE = DeepID2Task = Loop = TrainConfig = None
BE_ERR = "disabled by --no-ours" if ARGS.no_ours else None
if not ARGS.no_ours:
    try:
        from deepid2_core.backends import get_backend
        from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig
        from deepid2_core.training.loop import Loop
        BE = get_backend("cpu")
    except Exception as e:  # not built yet, import error, ...
        BE_ERR = f"{type(e).__name__}: {e}"

torch, ref, TORCH_ERR = bc.import_reference(ARGS.threads, ARGS.no_torch)


# --------------------------------------------------------------------------
# Ours: Loop.step on a synthetic in-memory cache
# --------------------------------------------------------------------------
def make_cache(n_ids, seed):
    """What DeepID2Task reads of a PatchCache: patches (uint8 N x H x W x C),
    labels (int32 N), identities (names, label k = identities[k])."""
    rng = np.random.default_rng(seed)
    n = n_ids * IMAGES_PER_ID
    return types.SimpleNamespace(
        patches=rng.integers(0, 256, (n, IN_H, IN_W, IN_C), dtype=np.uint8),
        labels=np.repeat(np.arange(n_ids, dtype=np.int32), IMAGES_PER_ID),
        identities=[f"synthetic{k:05d}" for k in range(n_ids)])


def make_trainer(cache, run_dir):
    cfg = TrainConfig(epochs=100, batch=ARGS.batch, lr=LR, momentum=MOMENTUM, weight_decay=0.0,
                      lam=LAM, verif="l2", margin=MARGIN, val_fraction=0.0, seed=ARGS.seed)
    trainer = Loop(DeepID2Task(cache, run_dir, cfg, BE), progress=False)
    nc = trainer.task.net_cfg
    assert nc.n_classes == ARGS.classes and tuple(nc.conv3_grid) == (2, 2) and nc.conv3_region is None
    return trainer


def ours_stepper(trainer):
    state = trainer.task.init_state()
    spe = trainer.plan.steps_per_epoch
    counter = itertools.count()
    last = {}

    def step():
        i = next(counter)   # a new batch every step, as in Loop.run
        last["loss"] = trainer.step(state, i // spe, i % spe)["loss"]
    return step, last


# --------------------------------------------------------------------------
# PyTorch: the reference model, trained the way its own benchmark does
# --------------------------------------------------------------------------
def torch_model(layout):
    torch.manual_seed(ARGS.seed)
    model = ref.DeepID2(ARGS.classes)
    if layout == "channels_last":   # as the reference: only the 4-D conv weights can take it
        for c in (model.conv1, model.conv2):
            c.weight.data = c.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def torch_stepper(model, x, lab, fn=None):
    fn = model if fn is None else fn
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ref.total_loss(fn, x, lab, LAM, MARGIN)
        loss.backward()
        opt.step()
        last["loss"] = loss
    return step, last


def ours_in_torch_layout(p):
    """Our parameters (nets/deepid2.py names and layouts) as the reference model's."""
    split = p["deepid.w"].shape[0] - 80 * 4 * 3    # rows of deepid.w: [pool3 (1200), conv4 (960)]
    return {
        "conv1.weight": p["conv1.w"][0, 0], "conv1.bias": p["conv1.b"][0, 0],
        "conv2.weight": p["conv2.w"][0, 0], "conv2.bias": p["conv2.b"][0, 0],
        "conv3.weight": p["conv3.w"].reshape((-1,) + p["conv3.w"].shape[2:]),
        "conv3.bias": p["conv3.b"].reshape(-1, p["conv3.b"].shape[-1]),
        "conv4.weight": p["conv4.w"].reshape((-1,) + p["conv4.w"].shape[2:]),
        "conv4.bias": p["conv4.b"].reshape(-1, p["conv4.b"].shape[-1]),
        "fc1.weight": p["deepid.w"][:split].T, "fc1.bias": p["deepid.b"],
        "fc2.weight": p["deepid.w"][split:].T,
        "ident.weight": p["ident.w"].T, "ident.bias": p["ident.b"],
    }


def cross_check(trainer, cache):
    """One training step of ours and of the reference model from the same
    parameters on the same batch: the loss and every parameter's update must
    agree, so both sides time the same computation."""
    cfg = trainer.task.cfg
    state = trainer.task.init_state()
    p0 = {k: v.copy() for k, v in state["params"].items()}
    # the batch Loop.step draws at (epoch 0, step 0): its first rng draw
    images, pa, pb, _ = trainer.task.sampler.batch(np.random.default_rng([cfg.seed, 0, 0]),
                                              cfg.batch, cfg.same_share)
    h = cfg.batch // 2
    if not (np.array_equal(pa, np.arange(h)) and np.array_equal(pb, np.arange(h, 2 * h))):
        return {"skipped": "our pairs are not (i, i+N/2) as the reference's"}
    loss_ours = trainer.step(state, 0, 0)["loss"]
    xbuf = trainer.task.xbuf  # the batch it assembled

    model = ref.DeepID2(ARGS.classes)
    want = ours_in_torch_layout(p0)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            prm.copy_(torch.from_numpy(np.ascontiguousarray(want[name])))
    x = torch.from_numpy(xbuf.copy())
    lab = torch.from_numpy(np.asarray(cache.labels)[images].astype(np.int64))
    step, last = torch_stepper(model, x, lab)
    step()
    loss_t = float(last["loss"].item())
    got = ours_in_torch_layout(state["params"])
    worst, worst_name = 0.0, None
    for name, prm in model.named_parameters():
        du_t = prm.detach().numpy().astype(np.float64) - want[name].astype(np.float64)
        du_o = got[name].astype(np.float64) - want[name].astype(np.float64)
        e = float(np.max(np.abs(du_o - du_t)) / max(1e-12, float(np.max(np.abs(du_t)))))
        if e > worst:
            worst, worst_name = e, name
    e_loss = abs(float(loss_ours) - loss_t) / max(1.0, abs(loss_t))
    ok = e_loss < 1e-4 and worst < 1e-2
    return {"loss_ours": float(loss_ours), "loss_torch": loss_t, "loss_rel_err": e_loss,
            "update_rel_err": worst, "update_worst_param": worst_name, "ok": ok}


def settle(step, max_steps=40, max_s=60.0, tol=0.15):
    """Untimed steps until the last 3 step times lie within tol of their
    median.  After torch.compile's first step, its compile workers go on in
    the background for several steps, and those steps run 2-10x slower."""
    ts, t_start = [], time.perf_counter()
    while len(ts) < max_steps and time.perf_counter() - t_start < max_s:
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
        if len(ts) >= 3:
            last = sorted(ts[-3:])
            if last[2] - last[0] <= tol * last[1]:
                break
    return len(ts)


# --------------------------------------------------------------------------
def time_variant(name, step, t_all, batch):
    """Median step time of step(), timed again (quietest attempt kept) when
    other processes used more than bench_common.NOISY of the CPUs meanwhile."""
    def attempt_fn(attempt):
        snap = bc.cpu_snapshot()
        t0 = time.perf_counter()
        m = bc.measure(step, reps=ARGS.reps, warmup=ARGS.warmup, min_time=ARGS.min_time)
        m.update(attempt=attempt + 1, wall_s=time.perf_counter() - t0,
                 foreign_cpu_frac=bc.foreign_load(snap, bc.cpu_snapshot()),
                 img_s=batch / (m["median_ms"] / 1e3))
        fl = m["foreign_cpu_frac"]
        print(f"  {name:28s} {m['median_ms']:8.2f} ms/step  {m['img_s']:8.1f} img/s  "
              f"(min {m['min_ms']:.2f}, p25-p75 {m['p25_ms']:.2f}-{m['p75_ms']:.2f} ms, n={m['n']}, "
              f"{m['wall_s']:.1f}s; other processes "
              f"{'?' if fl is None else f'{100 * fl:.0f}%'})")
        return m
    return bc.quietest_of(
        attempt_fn, retries=ARGS.retries, retry_budget=ARGS.retry_budget, t_all=t_all,
        warning=lambda fl: f"  WARNING: other processes used {100 * fl:.0f}% of the CPUs: unreliable",
        keeping=lambda best: f"  (keeping attempt {best['attempt']}, the quietest)")


def main():
    n = ARGS.batch
    info = {
        "batch": n, "threads": ARGS.threads, "classes": ARGS.classes, "lam": LAM,
        "momentum": MOMENTUM, "lr": LR, "weight_decay": 0.0, "conv3": "locally shared, 2x2 grid",
        "conv4": "locally connected", "images_per_identity": IMAGES_PER_ID,
        "reps": ARGS.reps, "min_time_s": ARGS.min_time, "warmup": ARGS.warmup,
        "cpu": bc.cpu_name(), "python": platform.python_version(), "numpy": np.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_error": TORCH_ERR, "ours_error": BE_ERR, "ours_threads": None,
        "loadavg_start": bc.loadavg(),
    }
    if BE is not None:
        mt = getattr(BE, "max_threads", None)
        try:
            info["ours_threads"] = mt() if callable(mt) else mt
        except Exception:
            pass
    print(f"deepid2 training-step benchmark: batch {n}, {ARGS.classes} classes, lambda {LAM}, "
          f"SGD lr {LR} momentum {MOMENTUM}; median of >= {ARGS.reps} steps and >= {ARGS.min_time}s "
          f"after {ARGS.warmup} warm-up steps")
    print(f"cpu: {info['cpu']}   python {info['python']}, numpy {info['numpy']}")
    print(f"threads: --threads {ARGS.threads}, OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, "
          f"ours max_threads()={info['ours_threads']}, torch.get_num_threads()={info['torch_threads']}")
    print(f"malloc env: {info['malloc_env']}   load average at start: {info['loadavg_start']}")
    if torch is not None:
        print(f"torch {torch.__version__}, reference imported from {os.path.abspath(ref.__file__)}")
    else:
        print(f"torch ABSENT: PyTorch or the reference not importable ({TORCH_ERR}); timing ours only")
    if BE is None:
        print(f"ours ABSENT: deepid2_core not available ({BE_ERR}); timing torch only")
    if BE is None and torch is None:
        print("nothing to time")
        return 1

    t_all = time.perf_counter()
    snap_all = bc.cpu_snapshot()
    results, check = {}, None
    with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:
        if BE is not None:
            cache = make_cache(ARGS.classes, ARGS.seed)
            trainer = make_trainer(cache, run_dir)
            if torch is not None and not ARGS.no_check:
                check = cross_check(trainer, cache)
                if "skipped" in check:
                    print(f"\ncheck skipped: {check['skipped']}")
                else:
                    print(f"\ncheck, one step from the same parameters on the same batch: loss ours "
                          f"{check['loss_ours']:.6f} torch {check['loss_torch']:.6f} (rel err "
                          f"{check['loss_rel_err']:.1e}); parameter updates max rel err "
                          f"{check['update_rel_err']:.1e} ({check['update_worst_param']}): "
                          f"{'ok' if check['ok'] else 'MISMATCH'}")
            print(f"\ntiming ({len(cache.labels)} synthetic images of {ARGS.classes} identities, "
                  f"{trainer.plan.steps_per_epoch} steps/epoch):")
            step, last = ours_stepper(trainer)
            results["ours"] = time_variant("ours (Loop.step)", step, t_all, n)
            results["ours"]["final_loss"] = float(last["loss"])
            del trainer, cache, step, last
        elif torch is not None:
            print("\ntiming:")
        if torch is not None:
            g = torch.Generator().manual_seed(ARGS.seed)
            x = torch.randn(n, IN_C, IN_H, IN_W, generator=g)
            lab = ref.make_labels(n, ARGS.classes, g)
            variants = [("torch NCHW", "nchw", False), ("torch channels_last", "channels_last", False)]
            if ARGS.compile:
                variants.append(("torch.compile NCHW", "nchw", True))
            for label, layout, comp in variants:
                model = torch_model(layout)
                xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
                fn = None
                if comp:
                    try:
                        fn = torch.compile(model, dynamic=False)   # static shapes, as the reference
                    except Exception as e:
                        results[label] = {"error": f"{type(e).__name__}: {e}"}
                        print(f"  {label:28s} FAILED {results[label]['error']}")
                        continue
                step, last = torch_stepper(model, xl, lab, fn)
                try:
                    if comp:   # compile outside the timed warm-up budget, and say how long it took
                        tc = time.perf_counter()
                        step()
                        t1 = time.perf_counter()
                        k = settle(step)
                        print(f"  ({label}: first step incl. compilation {t1 - tc:.1f}s, then {k} steps "
                              f"({time.perf_counter() - t1:.1f}s) until the step time settled)")
                    results[label] = time_variant(label, step, t_all, n)
                    results[label]["final_loss"] = float(last["loss"].item())
                except Exception as e:
                    results[label] = {"error": f"{type(e).__name__}: {e}"}
                    print(f"  {label:28s} FAILED {results[label]['error']}")
                del model, step, last, fn

    info["loadavg_end"] = bc.loadavg()
    info["wall_s"] = time.perf_counter() - t_all
    info["foreign_cpu_frac"] = bc.foreign_load(snap_all, bc.cpu_snapshot())

    # ----------------------------------------------------------- ratios
    ours = results.get("ours", {}).get("img_s")
    timed_torch = {k: v for k, v in results.items() if k != "ours" and "img_s" in v}
    summary = {"ratio_ours_over": {}}
    if ours is not None:
        for k, v in timed_torch.items():
            summary["ratio_ours_over"][k] = ours / v["img_s"]
    if timed_torch:
        fastest = max(timed_torch, key=lambda k: timed_torch[k]["img_s"])
        summary["torch_fastest"] = fastest
        if ours is not None:
            r = ours / timed_torch[fastest]["img_s"]
            summary.update(ratio_vs_fastest=r, target=f"ours >= {TARGET}x the fastest torch variant",
                           target_met=r >= TARGET)

    # ----------------------------------------------------------- table
    fl = info["foreign_cpu_frac"]
    print(f"\nload average at end: {info['loadavg_end']}, total wall {info['wall_s']:.1f}s, other processes "
          f"used {'?' if fl is None else f'{100 * fl:.0f}%'} of the CPUs during the run")
    print(f"\nbatch {n}, threads {ARGS.threads}, {ARGS.classes} classes, lambda {LAM}, momentum {MOMENTUM}, "
          f"torch {info['torch'] or 'ABSENT'}, cpu {info['cpu']}")
    head = ["variant", "ms/step", "images/s", "ours/this"]
    rows = []
    for k, v in results.items():
        noisy = (v.get("foreign_cpu_frac") or 0.0) > NOISY
        name = k + (" *" if noisy else "")
        if "img_s" not in v:
            rows.append([name, "FAILED", "-", "-"])
            continue
        ratio = summary["ratio_ours_over"].get(k)
        rows.append([name, f"{v['median_ms']:.2f}", f"{v['img_s']:.1f}",
                     "-" if ratio is None else f"{ratio:.2f}x"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if "ratio_vs_fastest" in summary:
        print(f"ours vs the fastest torch ({summary['torch_fastest']}): {summary['ratio_vs_fastest']:.2f}x   "
              f"target >= {TARGET}x: {'met' if summary['target_met'] else 'NOT met'}")
    if check is not None and "ok" in check and not check["ok"]:
        print("WARNING: the one-step cross-check against torch did not agree (see above)")
    if any(row[0].endswith(" *") for row in rows):
        print(f"* other processes used > {100 * NOISY:.0f}% of the CPUs while this was timed: "
              f"rerun on a quiet machine before trusting it")

    if ARGS.json:
        import json
        with open(ARGS.json, "w") as fh:
            json.dump({"info": info, "check": check, "results": results, "summary": summary}, fh, indent=1)
        print("wrote", ARGS.json)
    return 0 if (BE is not None or ARGS.no_ours) else 1


if __name__ == "__main__":
    sys.exit(main())
