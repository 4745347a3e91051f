"""Photograph to features, per photo, one thread: ours against face_recognition (dlib).

The same LFW photographs (a fixed, seeded choice) go through, in one run:
  python   deepid2_core.load().embed(path): read + detect + landmarks + align +
           features of the largest face (the package's Python API)
  c++      deepid2_bench_pipeline (cpp/bench/bench_pipeline.cpp): the same
           stages through deepid2::Pipeline, one thread (--cpp-bench PATH)
  dlib     face_recognition: load_image_file + face_locations (HOG, its
           default) + face_encodings of the largest face found

    python bench/bench_pipeline.py --setup     # once: bench/.venv-dlib with dlib
    python bench/bench_pipeline.py [--cpp-bench build/cpp/deepid2_bench_pipeline]

dlib is never a dependency of the package: --setup installs it into its own
virtual environment (bench/.venv-dlib, not in git), from prebuilt wheels
(dlib-bin: no 10-minute compile), and the dlib half runs in that interpreter
as a subprocess (this script with --dlib-worker) that prints its timings as
JSON. Every side runs with OMP_NUM_THREADS=1 (and OpenBLAS/MKL likewise; our
OpenCV with setNumThreads(1)), is warmed up on the first photos untimed, then
times each photo `--rounds` times, keeping each photo's fastest.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

from bench_common import REPO, cpu_name, loadavg

HERE = os.path.dirname(os.path.abspath(__file__))
DLIB_VENV = os.path.join(HERE, ".venv-dlib")
DLIB_PYTHON = os.path.join(DLIB_VENV, "bin", "python")
DEFAULT_DATA = os.environ.get("DEEPID2_DATA") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "data"))
# What --setup installs (tested together; face_recognition's own requirement
# "dlib" would compile dlib from source, hence --no-deps for it).
# face_recognition_models finds its files with pkg_resources, which newer
# setuptools no longer has.
DLIB_PACKAGES = ["dlib-bin==20.0.1.post1", "face_recognition_models==0.3.0", "numpy", "Pillow",
                 "Click>=6.0", "setuptools<81"]
FACE_RECOGNITION = "face_recognition==1.3.0"
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def choose_photos(data, n, seed):
    """n LFW photographs, the same for a given seed and data set."""
    lfw = os.path.join(data, "lfw")
    if not os.path.isdir(lfw):
        sys.exit(f"bench_pipeline: no LFW at {lfw} (--data DIR, or DEEPID2_DATA, names the "
                 f"folder holding lfw/)")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(lfw) for f in fs
                   if f.lower().endswith(".jpg"))
    if len(paths) < n:
        sys.exit(f"bench_pipeline: {lfw} has {len(paths)} photographs, fewer than --photos {n}")
    return random.Random(seed).sample(paths, n)


def time_each(fn, paths, warmup, rounds):
    """(each photo's fastest ms over `rounds`, how many photos fn found no face in)."""
    for p in paths[:warmup]:
        fn(p)
    best, no_face = [float("inf")] * len(paths), 0
    for r in range(rounds):
        for i, p in enumerate(paths):
            t0 = time.perf_counter()
            found = fn(p)
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
            no_face += (r == 0 and not found)
    return best, no_face


# ------------------------------------------------------------------ the sides
def run_python(paths, warmup, rounds):
    import cv2
    cv2.setNumThreads(1)
    import deepid2_core
    model = deepid2_core.load()
    ms, no_face = time_each(lambda p: model.embed(p) is not None, paths, warmup, rounds)
    return {"ms": ms, "no_face": no_face}


def run_cpp(binary, paths, warmup, rounds):
    best, no_face = None, 0
    for _ in range(rounds):
        r = subprocess.run([binary, "--json", "--warmup", str(warmup), *paths], capture_output=True,
                           text=True, env={**os.environ, **ONE_THREAD})
        if r.returncode != 0:
            return {"skipped": f"{binary} failed: {r.stderr.strip()[-300:]}"}
        out = json.loads(r.stdout)
        no_face = out["no_face"]
        best = out["total_ms"] if best is None else list(map(min, best, out["total_ms"]))
    return {"ms": best, "no_face": no_face}


def run_dlib(paths, warmup, rounds):
    if not os.path.exists(DLIB_PYTHON):
        return {"skipped": f"no {DLIB_VENV}: run `python bench/bench_pipeline.py --setup` first"}
    r = subprocess.run([DLIB_PYTHON, os.path.abspath(__file__), "--dlib-worker",
                        "--warmup", str(warmup), "--rounds", str(rounds)],
                       input=json.dumps(paths), capture_output=True, text=True,
                       env={**os.environ, **ONE_THREAD}, cwd=HERE)
    if r.returncode != 0:
        return {"skipped": f"the dlib worker failed: {r.stderr.strip()[-500:]}"}
    return json.loads(r.stdout)


def dlib_worker(warmup, rounds):
    """Runs in bench/.venv-dlib: paths (JSON) on stdin, timings (JSON) on stdout."""
    import dlib
    import face_recognition
    paths = json.load(sys.stdin)

    def encode_largest(path):
        image = face_recognition.load_image_file(path)
        boxes = face_recognition.face_locations(image)     # (top, right, bottom, left), HOG
        if not boxes:
            return False
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        return len(face_recognition.face_encodings(image, [largest])) == 1

    ms, no_face = time_each(encode_largest, paths, warmup, rounds)
    # the package's version: face_recognition 1.3.0 still says 1.2.3 in __version__
    from importlib.metadata import version
    json.dump({"ms": ms, "no_face": no_face, "dlib": dlib.__version__,
               "face_recognition": version("face_recognition")}, sys.stdout)


def setup():
    """Creates bench/.venv-dlib with dlib (prebuilt) and face_recognition."""
    if not os.path.exists(DLIB_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", DLIB_VENV], check=True)
    pip = [DLIB_PYTHON, "-m", "pip", "install", "-q"]
    subprocess.run(pip + DLIB_PACKAGES, check=True)
    subprocess.run(pip + ["--no-deps", FACE_RECOGNITION], check=True)
    subprocess.run([DLIB_PYTHON, "-c", "import dlib, face_recognition; "
                    "print('dlib', dlib.__version__, 'face_recognition', face_recognition.__version__)"],
                   check=True)
    print(f"ready: {DLIB_VENV}")


# ------------------------------------------------------------------ report
def report(results, args):
    print(f"{args.photos} LFW photos (seed {args.seed}), 1 thread each, each photo's best of "
          f"{args.rounds}; {cpu_name()}, load average {loadavg()}")
    dlib = results.get("dlib", {})
    print(f"{'pipeline':<44} {'median ms':>10} {'mean ms':>9} {'no face':>8}   dlib/ours (median, mean)")
    names = {"python": "deepid2_core.load().embed(path) (Python)",
             "cpp": "deepid2_bench_pipeline (C++)",
             "dlib": "face_recognition (dlib HOG + ResNet)"}
    for key, name in names.items():
        r = results.get(key)
        if r is None:
            continue
        if "skipped" in r:
            print(f"{name:<44} skipped: {r['skipped']}")
            continue
        med, mean = statistics.median(r["ms"]), statistics.fmean(r["ms"])
        ratio = ""
        if key != "dlib" and "ms" in dlib:
            ratio = (f"{statistics.median(dlib['ms']) / med:8.1f}x "
                     f"{statistics.fmean(dlib['ms']) / mean:6.1f}x")
        print(f"{name:<44} {med:10.1f} {mean:9.1f} {r['no_face']:8d}   {ratio}")
    if "dlib" in dlib:
        print(f"(dlib {dlib['dlib']}, face_recognition {dlib['face_recognition']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", action="store_true", help="create bench/.venv-dlib and exit")
    ap.add_argument("--data", default=DEFAULT_DATA, help="the folder holding lfw/ (default: %(default)s)")
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=3, help="untimed photos first, each side")
    ap.add_argument("--rounds", type=int, default=1, help="time each photo this many times, keep the best")
    ap.add_argument("--cpp-bench", help="the deepid2_bench_pipeline binary (absent: skipped)")
    ap.add_argument("--no-python", action="store_true")
    ap.add_argument("--no-dlib", action="store_true")
    ap.add_argument("--json", help="also write every photo's times here")
    ap.add_argument("--dlib-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(ONE_THREAD)   # before numpy, OpenCV or deepid2_core load
    if args.dlib_worker:
        return dlib_worker(args.warmup, args.rounds)
    if args.setup:
        return setup()
    paths = choose_photos(args.data, args.photos, args.seed)
    results = {}
    if not args.no_python:
        results["python"] = run_python(paths, args.warmup, args.rounds)
    if args.cpp_bench and os.path.exists(args.cpp_bench):
        results["cpp"] = run_cpp(args.cpp_bench, paths, args.warmup, args.rounds)
    else:
        results["cpp"] = {"skipped": f"no binary at {args.cpp_bench}" if args.cpp_bench
                          else "no --cpp-bench given"}
    if not args.no_dlib:
        results["dlib"] = run_dlib(paths, args.warmup, args.rounds)
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"photos": [os.path.relpath(p, args.data) for p in paths], **results}, f)


if __name__ == "__main__":
    main()
