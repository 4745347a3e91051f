"""Helpers shared by the benchmark scripts (bench_ops.py, bench_train.py).

Importing this module has no side effects: it defines constants and
functions and imports only the standard library (never numpy or torch), so a
script can import it first and then, in this order:

  1. parse its own command line;
  2. ensure_malloc_env()    (unless --no-malloc-tune): may re-exec the script;
  3. set_thread_env(threads) before numpy, torch or deepid2_core are imported;
  4. import numpy / torch / deepid2_core.

What is here: the thread and glibc malloc environment set-up, the timing loop
(measure), the CPU-noise detection (cpu_snapshot, foreign_load, NOISY) with
the retry-until-quiet loop (quietest_of), and machine info (cpu_name,
loadavg).
"""
import gc
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# $DEEPID2_REFERENCE_DIR: where ../shared is not beside the checkout (a GPU
# machine gets a copy carried with the repository)
REF_DIR = os.environ.get("DEEPID2_REFERENCE_DIR") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "reference"))

# Same values as the reference's MALLOC_ENV: keep freed large buffers in the
# glibc heap instead of returning them to the kernel after every call (else
# every big activation costs thousands of page faults and timings swing).
# glibc reads these at start-up only, so we re-exec once with them set.  Both
# sides (numpy arrays of ours, tensors of torch) get the same treatment.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}

NOISY = 0.10   # warn when other processes used more than this share of the CPUs

# modules that read the thread variables when they load
_THREAD_READERS = ("numpy", "torch", "deepid2_core")


# --------------------------------------------------------------------------
# Process set-up: call before numpy, torch or our module are imported
# --------------------------------------------------------------------------
def ensure_malloc_env():
    """Make sure MALLOC_ENV is in effect: if any of its variables is missing
    or different, set them and re-exec this script with the same command line
    (does not return).  glibc reads them at start-up only, hence the re-exec.
    Call it first, before any expensive work."""
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.environ.update(MALLOC_ENV)
        os.execv(sys.executable, [sys.executable] + sys.argv)


def set_thread_env(threads):
    """Put the thread count into the environment: OMP_NUM_THREADS (our
    module's OpenMP, torch), and OPENBLAS_NUM_THREADS / MKL_NUM_THREADS unless
    already set.  They are read when those libraries load, so this must run
    before numpy, torch or deepid2_core are imported."""
    loaded = [m for m in _THREAD_READERS if m in sys.modules]
    if loaded:
        raise RuntimeError(f"set_thread_env() called after {', '.join(loaded)} was imported: "
                           f"the thread count would not take effect")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(k, str(threads))


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
def import_reference(threads, disabled=False):
    """(torch, the reference module torch_deepid2, error text): torch and
    ../shared/reference imported, torch set to `threads`; (None, None, why)
    when disabled or missing. Call after set_thread_env."""
    if disabled:
        return None, None, "disabled by --no-torch"
    try:
        import torch
        sys.path.insert(0, REF_DIR)
        import torch_deepid2 as ref
        torch.set_num_threads(threads)
        return torch, ref, None
    except Exception as e:  # not installed, reference absent, ...
        return None, None, f"{type(e).__name__}: {e}"


def measure(fn, reset=None, *, reps, warmup, min_time):
    """Median of timed calls of fn(); reset() runs before each call, untimed.
    warmup untimed calls first, then at least reps timed calls and at least
    min_time seconds.  Returns median, minimum and quartiles in ms and the
    number of timed calls."""
    for _ in range(warmup):
        if reset:
            reset()
        fn()
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    ts = []
    try:
        t_start = time.perf_counter()
        while len(ts) < reps or (time.perf_counter() - t_start) < min_time:
            if reset:
                reset()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    ts.sort()
    q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": ts[0] * 1e3,
            "p25_ms": q(0.25) * 1e3, "p75_ms": q(0.75) * 1e3, "n": len(ts)}


# --------------------------------------------------------------------------
# CPU noise: how much of the machine other processes used meanwhile
# --------------------------------------------------------------------------
def cpu_snapshot():
    """(wall s, busy CPU s of the whole machine, CPU s of this process)."""
    busy = None
    try:
        with open("/proc/stat") as fh:
            v = [int(t) for t in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def foreign_load(a, b):
    """Fraction of the machine's CPUs used by OTHER processes between two
    snapshots (0 = quiet machine); None where /proc/stat is unreadable."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    ncpu = os.cpu_count() or 1
    other = (b[1] - a[1]) - (b[2] - a[2])
    # both counters tick in 1/CLK_TCK steps (per CPU for /proc/stat): forgive
    # that rounding, else a run of a few ms looks busy or quiet by chance
    other -= (2 * ncpu + 2) / os.sysconf("SC_CLK_TCK")
    return max(0.0, other / ((b[0] - a[0]) * ncpu))


def quietest_of(attempt_fn, *, retries, retry_budget, t_all, warning, keeping):
    """Run attempt_fn(attempt) for attempt = 0, 1, ... until one ran while
    other processes used at most NOISY of the CPUs, at most 1 + retries
    times, and no new attempt once retry_budget seconds have passed since
    t_all (a time.perf_counter() value).

    attempt_fn returns a dict with "foreign_cpu_frac" (None: unknown, taken as
    quiet) and "attempt" (1-based, set by attempt_fn where it wants the key).
    After a noisy attempt, prints warning(frac) (+ "; timing it again" when
    another follows).  Returns the quietest attempt; prints keeping(best)
    when that is not the last one."""
    best = None
    for attempt in range(1 + max(0, retries)):
        r = attempt_fn(attempt)
        fl = r["foreign_cpu_frac"]
        if best is None or (fl or 0.0) < (best["foreign_cpu_frac"] or 0.0):
            best = r
        if fl is None or fl <= NOISY:
            break
        msg = warning(fl)
        if attempt < retries and time.perf_counter() - t_all < retry_budget:
            print(msg + "; timing it again")
        else:
            print(msg)
            break
    if best is not r:
        print(keeping(best))
    return best


# --------------------------------------------------------------------------
# Machine info
# --------------------------------------------------------------------------
def cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return None
