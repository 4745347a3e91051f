"""Inference speed (features only, no ident layer) at batch 1 and 128:
the C++ library (cpp/bench/bench_features.cpp, run in the same run), our
Python CPU backend (DeepID2.features) and PyTorch eager inference of the
reference network (../shared/reference/torch_deepid2.py, imported by path).

One image = one 3x55x47 patch through one network. The C++ "features" rows
count a face of P = 1 as its 2 images (the patch and its flipped partner).

  python bench/bench_infer.py [--threads 2] [--min-time 1.0] [--no-torch]
                              [--cpp-bin build/cpp/deepid2_bench_features]
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

sys.path.insert(0, bc.REPO)  # deepid2_core from this checkout


def cpp_binary(path):
    """The C++ bench binary: the given one, or build/cpp's, (re)built with cmake
    so that it is never older than the sources (a no-op when up to date)."""
    default = os.path.join(bc.REPO, "build", "cpp", "deepid2_bench_features")
    if path and os.path.abspath(path) != default:
        if not os.path.exists(path):
            raise SystemExit(f"bench_infer: --cpp-bin {path} does not exist")
        return path
    build = os.path.dirname(default)
    for cmd in (["cmake", "-S", os.path.join(bc.REPO, "cpp"), "-B", build, "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", build, "-j", "2", "--target", "deepid2_bench_features"]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return default


def run_cpp(binary, threads, min_time):
    """{(case, batch): images/s} from the C++ bench's "result" lines."""
    out = subprocess.run([binary, "--threads", str(threads), "--min-time", str(min_time)],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        if line.startswith("result "):
            f = line.split()
            kv = dict(x.split("=") for x in f[2:])
            res[(f[1], int(kv["batch"]))] = float(kv["images_per_s"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-malloc-tune", action="store_true")
    ap.add_argument("--cpp-bin", default=os.path.join(bc.REPO, "build", "cpp", "deepid2_bench_features"))
    args = ap.parse_args()
    if not args.no_malloc_tune:
        bc.ensure_malloc_env()
    bc.set_thread_env(args.threads)

    import numpy as np
    from deepid2_core.backends import get_backend
    from deepid2_core.nets.deepid2 import DeepID2, NetConfig, init_params

    batches = (1, 128)
    rows = {}  # name -> {batch: images/s}
    timing = dict(reps=args.reps, warmup=3, min_time=args.min_time)
    rng = np.random.default_rng(0)
    xs = {b: rng.uniform(-1, 1, (b, 3, 55, 47)).astype(np.float32) for b in batches}

    cfg = NetConfig(n_classes=8192)
    net, params = DeepID2(cfg, get_backend("cpu")), init_params(cfg, 0)
    rows["python CPU backend, DeepID2.features"] = {
        b: b / bc.measure(lambda b=b: net.features(params, xs[b]), **timing)["median_ms"] * 1e3
        for b in batches}

    torch, ref, why = bc.import_reference(args.threads, args.no_torch)
    if torch is not None:
        model = ref.DeepID2(8192).eval()
        txs = {b: torch.from_numpy(xs[b]) for b in batches}

        def run(b):
            with torch.inference_mode():
                model.features(txs[b])
        rows["pytorch eager NCHW, reference features"] = {
            b: b / bc.measure(lambda b=b: run(b), **timing)["median_ms"] * 1e3 for b in batches}
    else:
        print(f"PyTorch reference not timed: {why}")

    cpp = run_cpp(cpp_binary(args.cpp_bin), args.threads, args.min_time)
    rows["C++ Model::patch_features (one network)"] = {b: cpp[("patch_features", b)] for b in batches}
    rows["C++ Model::features (b faces = 2b images)"] = {b: cpp[("features", b)] for b in batches}

    base = rows.get("pytorch eager NCHW, reference features")
    print(f"\ninference, images/s, {args.threads} threads, cpu: {bc.cpu_name()}, "
          f"load {bc.loadavg()}" + (f", torch {torch.__version__}" if torch else ""))
    head = "| what | b1 img/s | b128 img/s |" + (" b1 / torch | b128 / torch |" if base else "")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for name, r in rows.items():
        line = f"| {name} | {r[1]:,.0f} | {r[128]:,.0f} |"
        if base:
            line += f" {r[1] / base[1]:.2f} | {r[128] / base[128]:.2f} |"
        print(line)


if __name__ == "__main__":
    main()
