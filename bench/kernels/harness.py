"""What the bench/kernels/ scripts share (after llm.c's dev/cuda): the command
line, the backend (a GPU through CuPy, or the kernel emulator), the shapes of
DeepID2's layers, the check of every variant against the float64 oracle, the
timing, the card's peaks, ptxas' figures, the table and the tuning file.

A script describes its op family as Cases (one op at one shape) and calls
``main``. For each case, every variant that gpu_tiling enumerates is forced
in turn (gpu_tiling.forced), checked against tests/oracle.py in float64 with

    |got - ref| <= atol + rtol |ref|,  rtol = 1e-4 (1e-6 exact ops),
    atol = 1e-5 sqrt(L) * scale       (L: the reduction's length)

(the tests' bound; a TF32 variant, run with --precision tf32, within
docs/ops.md's TF32 bound: atol + 15 u sqrt(L) * scale, u = 2^-11, the
products' Hoeffding bound at the inputs' scale), timed, and the table printed; the fastest correct variant
is written to the tuning file. A variant that computes in TF32 (its family's
precision, or a TF32 kernel launched: a composition of ops) gets TF32's
bound. Where a case names a variant whose bits every variant must give
(bits_of: lsconv_pool's composition), that is checked too, in fp32 and
deterministic mode. A variant that fails a check prints one line
"FAIL <op> <variant>: ..." and the script exits 1.

Timing on a GPU: CUDA events around --inner calls after --warmup calls, the
median of --reps such samples, per call. In the emulator (--emu, or where
CuPy or a GPU is missing) the same checks run at small shapes and the "ms"
column is the host's wall time of the emulation: it says nothing of a GPU's
speed, and the picks are written only where --tuning names a file.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from deepid2_core.backends import gpu_tiling as tiling  # noqa: E402
from deepid2_core.nets.deepid2 import NetConfig, conv_shapes  # noqa: E402
import ptxas  # noqa: E402

BATCHES = (128, 512, 2048)
EMU_BATCHES = (2, 3)
EMU_NET = dict(height=43, width=39)   # DeepID2's layers at a small input (every path)
CLASSES, EMU_CLASSES = 8192, 50
RTOL = 1e-4
ABANDON = 3.0   # timing stops after one sample for a variant this much slower than the best

# card name (a substring, first match wins): fp32 and dense TF32 TFLOP/s, GB/s
CARDS = (
    ("H200", "H200", 67.0, 494.7, 4800),
    ("H100 PCIe", "H100 PCIe", 51.2, 378.0, 2000),
    ("H100 NVL", "H100 NVL", 60.0, 417.0, 3900),
    ("H100", "H100 SXM", 67.0, 494.7, 3350),
    ("A100-SXM4-80GB", "A100 SXM 80GB", 19.5, 156.0, 2039),
    ("A100 80GB PCIe", "A100 PCIe 80GB", 19.5, 156.0, 1935),
    ("A100", "A100 40GB", 19.5, 156.0, 1555),
)
Peak = namedtuple("Peak", "label fp32 tf32 gbs")


def peaks(card):
    """The card's Peak (TFLOP/s, GB/s), or None for a card not in CARDS."""
    for key, label, fp32, tf32, gbs in CARDS:
        if key.lower() in (card or "").lower():
            return Peak(label, fp32, tf32, gbs)
    return None


# One op at one shape. inputs() -> host arrays (made when the case runs);
# setup(be, inputs) -> device state (fresh for each check); call(be, state) ->
# {name: device array or float}; reference(inputs) -> {name: float64 array}
# (the oracle; may run in a pool); tol: {name: (rtol, atol)}, or a function
# of the reference giving it (an entry may be a function (got, ref, tols) ->
# (err/tol, text): a check of its own); flops, bytes: the op's minimum (for
# the floor); bits_of: a variant (of the same op) whose outputs every variant
# must equal bit for bit at precision fp32, or None.
Case = namedtuple("Case", "label op shape inputs setup call reference tol flops bytes bits_of",
                  defaults=(None,))


def tol(L, scale=1.0, rtol=RTOL):
    return (rtol, 1e-5 * np.sqrt(L) * scale)


def parse(description, argv=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batches", type=int, nargs="+",
                    help=f"default {' '.join(map(str, BATCHES))} "
                         f"(emulator: {' '.join(map(str, EMU_BATCHES))})")
    ap.add_argument("--layers", nargs="+", help="only these layers (conv1 ... / pool1 ...)")
    ap.add_argument("--shape", action="append", default=[],
                    help="a shape of your own, comma-separated (see the script's help); "
                         "repeatable; replaces the network's layers")
    ap.add_argument("--emu", action="store_true",
                    help="run in the kernel emulator (automatic without CuPy or a GPU)")
    ap.add_argument("--reps", type=int, default=10, help="timed samples per variant")
    ap.add_argument("--inner", type=int, default=2, help="calls per timed sample")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, help="seconds; then stop and keep the best so far")
    ap.add_argument("--tuning", help="tuning file to write the winners to (default: "
                    "gpu_tiling.tuning_path() on a GPU; none in the emulator)")
    ap.add_argument("--no-write", action="store_true", help="do not write the tuning file")
    ap.add_argument("--variants", help="only variants whose name contains this")
    ap.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                    help="the backend's precision (set_precision): tf32 adds the TF32 "
                         "variants (and picks for precision tf32)")
    ap.add_argument("--fast", action="store_true",
                    help="the backend's fast (atomics) mode; default deterministic")
    ap.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1),
                    help="processes for the oracle")
    args = ap.parse_args(argv)
    args.t0 = time.perf_counter()
    return args


def load_backend(args):
    """(backend module, its cupy, mode "cuda" / "emu"); falls back to the
    emulator, saying why, where CuPy or a GPU is missing."""
    if not args.emu:
        try:
            import cupy
            from deepid2_core.backends import BackendUnavailable, get_backend
            try:
                return get_backend("gpu"), cupy, "cuda"
            except BackendUnavailable as e:
                why = str(e)
        except ImportError as e:
            why = f"CuPy is not importable ({e})"
        if os.environ.get("DEEPID2_REQUIRE_GPU") == "1":
            raise SystemExit(f"DEEPID2_REQUIRE_GPU=1 but there is no GPU: {why}")
        print(f"no GPU ({why}): running in the kernel emulator at small shapes")
        args.emu = True
    import gpu_support   # tests/: the emulated backend, as the tests load it
    import pytest
    try:
        g = gpu_support.load("emu")
    except pytest.skip.Exception as e:
        raise SystemExit(f"the kernel emulator is unavailable: {e.msg}")
    return g.be, g.cp, "emu"


def net_convs(args):
    """DeepID2's four ConvShapes (deepid2_core/nets/deepid2.py) at this mode's input."""
    cfg = NetConfig(EMU_CLASSES, **EMU_NET) if args.emu else NetConfig(CLASSES)
    return conv_shapes(cfg)


def batches(args):
    return args.batches or (EMU_BATCHES if args.emu else BATCHES)


def wanted(args, name):
    return not args.layers or name in args.layers


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------
# the oracle, in a process pool for big batches (it is plain numpy loops)
_pool = None


def pool(args):
    global _pool
    if _pool is None and args.jobs > 1 and not args.emu:
        _pool = ProcessPoolExecutor(args.jobs)
        list(_pool.map(int, range(args.jobs)))   # start the workers now
    return _pool


def chunked(args, fn, n, arrays_of, combine):
    """fn over image blocks [i, j) of the batch, in the pool where there is one;
    combine([results]) joins them."""
    p = pool(args)
    if p is None or n < 2 * args.jobs:
        return combine([fn(*arrays_of(0, n))])
    step = -(-n // args.jobs)
    futs = [p.submit(fn, *arrays_of(i, min(n, i + step))) for i in range(0, n, step)]
    return combine([f.result() for f in futs])


# ----------------------------------------------------------------------------
# timing and checking
def gpu_time(args, cp, fn, best=None):
    """(ms per call of fn, whole): CUDA events around --inner calls, the median
    of --reps samples, after --warmup calls. A variant whose first sample is
    over ABANDON x the best so far is not timed further (whole False): it
    cannot win, and the sweep's budget is better spent on the others."""
    for _ in range(args.warmup):
        fn()
    cp.cuda.Device().synchronize()
    samples = []
    for i in range(args.reps):
        if i == 1 and best and samples[0] > ABANDON * best:
            return samples[0], False
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        for _ in range(args.inner):
            fn()
        e.record()
        e.synchronize()
        samples.append(cp.cuda.get_elapsed_time(s, e) / args.inner)
    return statistics.median(samples), True


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def check(got, ref, tols):
    """(worst err / tol over the outputs, text of the worst): <= 1 passes."""
    worst, text = 0.0, ""
    for k, r in ref.items():
        g = np.asarray(host(got[k]), np.float64)
        if callable(tols[k]):
            w, t = tols[k](g, r, tols)
        else:
            w, t = close(k, g, r, *tols[k])
        if w > worst:
            worst, text = w, t
    return worst, text


def close(k, g, r, rtol, atol):
    """(worst err / (atol + rtol |r|), its text) of one output."""
    r = np.asarray(r, np.float64)
    if g.shape != r.shape:
        return np.inf, f"{k}: shape {g.shape} != {r.shape}"
    if not np.all(np.isfinite(g)):
        return np.inf, f"{k}: {int((~np.isfinite(g)).sum())} non-finite values"
    err = np.abs(g - r)
    bound = atol + rtol * np.abs(r)
    ratio = np.where(err == 0, 0.0, err / np.where(bound > 0, bound, 1.0)) \
        + np.where((err > 0) & (bound == 0), np.inf, 0.0)
    if not ratio.size:
        return 0.0, ""
    i = np.unravel_index(np.argmax(ratio), ratio.shape)
    return float(ratio[i]), (f"{k}{list(map(int, i))}: got {g[i]:.7g}, oracle {r[i]:.7g}, "
                             f"|err| {err[i]:.3g} > {atol:.3g} + {rtol:g}|ref|")


def bit_difference(got, twin, name):
    """'' where every output of got has twin's bits, else the first difference."""
    for k, t in twin.items():
        g = host(got[k])
        if g.shape != t.shape or g.dtype != t.dtype:
            return f"{k}: {g.dtype}{list(g.shape)} against {name}'s {t.dtype}{list(t.shape)}"
        differ = g.view(np.uint8).reshape(g.size, -1) != t.view(np.uint8).reshape(t.size, -1)
        n = int(differ.any(axis=1).sum())
        if n:
            return f"{k}: {n} of {g.size} elements not bit-identical to {name}'s"
    return ""


class Spy:
    """Records the kernels a variant launches (name, threads, dynamic smem)."""

    def __init__(self, be):
        self.be, self.real, self.seen, self.files = be, be.KIT.launch, [], set()

    def __enter__(self):
        def spy(file, kname, grid, block, args, shared_mem=0):
            self.seen.append((kname, int(block), int(shared_mem)))
            self.files.add(file)
            return self.real(file, kname, grid, block, args, shared_mem)
        self.be.KIT.launch = spy
        return self

    def __exit__(self, *exc):
        self.be.KIT.launch = self.real


def resources(seen, figures):
    """(regs, smem incl. dynamic, spill bytes) of the heaviest kernel launched."""
    best = None
    for k, threads, dyn in seen:
        f = figures.get(k)
        if f is None:
            continue
        row = (f["regs"], f["smem"] + dyn, f["spill_st"] + f["spill_ld"], k)
        best = row if best is None or row[:2] > best[:2] else best
    return best


# ----------------------------------------------------------------------------
# the run
def context(args):
    """What a run needs: the backend, its card and peaks, ptxas' figures, the
    precision and where the picks go."""
    if not args.emu and importlib.util.find_spec("cupy") is not None:
        pool(args)   # the oracle's processes start before CUDA does (no fork of a CUDA process)
    be, cp, mode = load_backend(args)
    card = be.card_name() or "unknown card"
    tpath = None
    if not args.no_write:
        tpath = Path(args.tuning) if args.tuning else (None if mode == "emu"
                                                       else tiling.tuning_path())
    figures, ptx_note = ptxas.table()
    return argparse.Namespace(be=be, cp=cp, mode=mode, card=card, peak=peaks(card),
                              figures=figures, ptx_note=ptx_note, tpath=tpath,
                              precision=args.precision)


def run(args, family, make_cases, ctx=None):
    """Check and time every variant of every case, print the table, write the
    winners. Returns (exit status: 1 if a variant failed its check, [pick of
    each case]). Deterministic mode unless --fast; no index checks (no wait
    for the device), as Loop.run trains."""
    ctx = ctx or context(args)
    be = ctx.be
    saved = (be.set_deterministic(not args.fast), be.set_debug(False), be.set_index_checks(False),
             be.set_precision(ctx.precision))
    try:
        return _run(args, family, make_cases, ctx)
    finally:   # the backend's modes as they were (the tests share the emulated backend)
        be.set_deterministic(saved[0])
        be.set_debug(saved[1])
        be.set_index_checks(saved[2])
        be.set_precision(saved[3])


def _run(args, family, make_cases, ctx):
    pk = ctx.peak
    print(f"\n{family}: {ctx.card} ({ctx.mode}); "
          + (f"peak {pk.fp32:g} TFLOP/s fp32, {pk.tf32:g} TF32, {pk.gbs:g} GB/s ({pk.label})"
             if pk else "peak unknown for this card: no % columns")
          + f"; {ctx.ptx_note}; {ctx.precision}, {'fast' if args.fast else 'deterministic'} mode"
          + (f"; picks -> {ctx.tpath}" if ctx.tpath else "; picks not written"))
    if ctx.mode == "emu":
        print("emulator: every variant is checked; 'ms' is the host's wall time of the "
              "emulation, not a GPU's")
    print(f"{'variant':<26s} {'ms':>9s} {'GFLOP/s':>9s} {'%peak':>6s} {'%floor':>6s} "
          f"{'err/tol':>7s} {'regs':>4s} {'smem B':>6s} {'spill':>5s}  kernel")
    failed, picks = 0, []
    for case in make_cases(args):
        if out_of_time(args):
            print(f"-- budget of {args.budget:g} s spent: {case.op} {case.label} and after not run")
            break
        rows = _sweep(args, ctx, case)
        failed += sum(1 for r in rows if r[4].startswith("FAILED"))
        picks.append(_report(ctx, case, rows))
    print_picks(f"{family}: the picks", picks)
    if out_of_time(args):
        print(f"{family}: out of time (--budget {args.budget:g} s); the picks so far are kept")
    print(f"{family}: " + (f"FAILED: {failed} variant(s) failed their check" if failed
                           else "every variant run agrees with the float64 oracle"))
    return (1 if failed else 0), picks


def out_of_time(args):
    return bool(args.budget) and time.perf_counter() - args.t0 > args.budget


def _sweep(args, ctx, case):
    """[(variant, ms or None, err/tol, kernels launched, note)] of every variant."""
    inputs = case.inputs()
    be, ref = ctx.be, case.reference(inputs)
    tols = case.tol(ref) if callable(case.tol) else case.tol
    heur = tiling.heuristic(case.op, case.shape, ctx.precision)
    rows, twin = [], None
    if case.bits_of and ctx.precision == "fp32" and not args.fast:   # the bits to give
        with tiling.forced({case.op: case.bits_of}):
            twin = {k: host(a).copy() for k, a in case.call(be, case.setup(be, inputs)).items()}
    for v in tiling.variants(case.op, case.shape, ctx.precision):
        if args.variants and args.variants not in v.name and v != heur:
            continue
        if out_of_time(args):
            rows.append((v, None, None, None, "not run: budget spent", False))
            continue
        with tiling.forced({case.op: v.name}):
            state = case.setup(be, inputs)
            with Spy(be) as spy:
                t0 = time.perf_counter()
                got = case.call(be, state)
                wall = 1e3 * (time.perf_counter() - t0)
            tf32 = _is_tf32(v, spy.files)
            worst, text = check(got, ref, tf32_tols(tols) if tf32 else tols)
            if worst > 1.0:
                print(f"FAIL {case.op} {v.name} ({case.label}): {text}")
                rows.append((v, None, worst, spy.seen, "FAILED the oracle check", tf32))
                continue
            differ = bit_difference(got, twin, case.bits_of) if twin else ""
            if differ:
                print(f"FAIL {case.op} {v.name} ({case.label}): {differ}")
                rows.append((v, None, worst, spy.seen, "FAILED the bitwise check", tf32))
                continue
            note = ""
            if ctx.mode == "emu":   # the emulation's wall time: one run is enough
                ms = wall
            else:
                state = case.setup(be, inputs)
                best = min((r[1] for r in rows if r[1] is not None), default=None)
                ms, whole = gpu_time(args, ctx.cp, lambda: case.call(be, state), best)
                note = "" if whole else f"(one sample: over {ABANDON:g}x the best)"
        rows.append((v, ms, worst, spy.seen, note, tf32))
    return rows


def _report(ctx, case, rows):
    """Print the case's rows; write its winner; return its pick."""
    pk, heur = ctx.peak, tiling.heuristic(case.op, case.shape, ctx.precision)
    ok = [r for r in rows if r[1] is not None]
    best = min(ok, key=lambda r: r[1]) if ok else None
    hrow = next((r for r in rows if r[0] == heur and r[1] is not None), None)
    floor = None
    if pk:
        floor = 1e3 * max(case.flops / (pk.fp32 * 1e12), case.bytes / (pk.gbs * 1e9))
    print(f"-- {case.op} {case.label} ({case.shape.key()}): {case.flops / 1e9:.4g} GFLOP, "
          f"{case.bytes / 1e6:.4g} MB" + (f"; floor {floor:.4g} ms at the card's peak "
                                          f"(compute {1e3 * case.flops / (pk.fp32 * 1e12):.3g}, "
                                          f"memory {1e3 * case.bytes / (pk.gbs * 1e9):.3g})"
                                          if pk else ""))
    for v, ms, worst, seen, note, tf32 in rows:
        res = resources(seen or [], ctx.figures)
        marks = [m for m, on in (("heuristic", v == heur), ("FASTEST", best and v == best[0]))
                 if on]
        gfs = case.flops / (ms * 1e6) if ms else None
        pct = 100 * gfs / 1e3 / (pk.tf32 if tf32 else pk.fp32) if pk and gfs else None
        print(f"  {v.name:<24s} {fmt(ms, 9, 4)} {fmt(gfs, 9, 1)} {fmt(pct, 6, 1)} "
              f"{fmt(100 * floor / ms if floor and ms else None, 6, 1)} {fmt(worst, 7, 3)} "
              + (f"{res[0]:4d} {res[1]:6d} {res[2]:5d}  {res[3]}" if res else
                 f"{'-':>4s} {'-':>6s} {'-':>5s}  {'(no ptxas figures)' if seen else ''}")
              + (f"  <- {', '.join(marks)}" if marks else "") + (f"  {note}" if note else ""))
    if best and ctx.tpath is not None:
        tiling.record(ctx.tpath, ctx.card, ctx.precision, case.op, case.shape, best[0],
                      ms=round(best[1], 5), heuristic=heur.name,
                      heuristic_ms=round(hrow[1], 5) if hrow else None, mode=ctx.mode)
    return dict(op=case.op, label=case.label, shape=case.shape.key(), heuristic=heur.name,
                heuristic_ms=hrow[1] if hrow else None, best=best[0].name if best else None,
                best_ms=best[1] if best else None, floor_ms=floor, variants=len(rows),
                failed=[r[0].name for r in rows if r[4].startswith("FAILED")])


def print_picks(title, picks):
    print(f"\n{title}")
    print(f"  {'case':<24s} {'heuristic':<24s} {'ms':>9s}  {'fastest':<24s} {'ms':>9s} "
          f"{'gain':>6s} {'floor ms':>9s}")
    for p in picks:
        gain = p["heuristic_ms"] / p["best_ms"] if p["heuristic_ms"] and p["best_ms"] else None
        print(f"  {p['op'] + ' ' + p['label']:<24s} {p['heuristic']:<24s} "
              f"{fmt(p['heuristic_ms'], 9, 4)}  {str(p['best']):<24s} {fmt(p['best_ms'], 9, 4)} "
              f"{fmt(gain, 6, 3)} {fmt(p['floor_ms'], 9, 3)}")


TF32_U = 2.0 ** -11   # TF32's unit roundoff (docs/ops.md, "TF32")


def tf32_tols(tols):
    """The TF32 tolerance of each output: atol 1e-5 sqrt(L) scale grows by
    15 u sqrt(L) scale (the Hoeffding bound of docs/ops.md at the inputs'
    scale); rtol as for fp32."""
    return {k: t if callable(t) else (t[0], t[1] * (1 + 15 * TF32_U / 1e-5))
            for k, t in tols.items()}


TF32_FILES = ("lsconv_tc",)   # kernels/ files whose kernels multiply in TF32


def _is_tf32(v, files=()):
    """Whether variant v computes in TF32: its family is TF32's, or it ran a
    TF32 kernel (a composition of ops that chose their TF32 variants)."""
    return (tiling.families(v.op)[v.family].precision == "tf32"
            or any(f in TF32_FILES for f in files))


def fmt(v, width, digits):
    if v is None:
        return f"{'-':>{width}s}"
    return f"{v:{width}.{digits}g}" if abs(v) < 1e5 else f"{v:{width}.0f}"


def main(family, description, make_cases, argv=None):
    args = parse(description, argv)
    status, _ = run(args, family, make_cases)
    return status
