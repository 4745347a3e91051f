#!/usr/bin/env python3
"""Inference on a GPU: DeepID2 features (DeepID2.features, no ident layer) of a
batch already on the device, ours (the gpu backend, with the tuning file's
picks) vs the PyTorch reference (eager, fp32): images/s at batch 1024, and
the latency of one image (batch 1), eagerly and replayed as a CUDA graph
where the backend can capture one (a ``capture_graph(fn) -> replay`` of the
gpu backend or of its TF32 module); else the row says "not available".

    python bench/bench_infer_gpu.py [--batch 1024] [--json out.json]
    python bench/bench_infer_gpu.py --emu        # the kernel emulator, tiny
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_common as bc  # noqa: E402
from bench_train_gpu import backend, feature  # noqa: E402


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, help="the throughput batch (default 1024; emulator 4)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--emu", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.batches = args.classes = None
    return args


def median_ms(fn, sync, reps, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        t.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(t)


def main():
    args = parse()
    be, cupy, mode = backend(args)
    be.set_debug(False)
    from deepid2_core.nets.deepid2 import DeepID2, NetConfig, init_params
    cfg = NetConfig(args.classes, height=args.in_h, width=args.in_w)
    net = DeepID2(cfg, be)
    params = {k: be.to_device(v) for k, v in init_params(cfg, 0).items()}
    batch = args.batch or (4 if mode == "emu" else 1024)
    reps = 2 if mode == "emu" else args.reps
    sync = cupy.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    xs = {n: be.to_device(rng.standard_normal((n, 3, args.in_h, args.in_w)).astype(np.float32))
          for n in (batch, 1)}
    out = {"batch": batch}
    out["ours_ms"] = median_ms(lambda: net.features(params, xs[batch]), sync, reps, 1)
    out["ours_b1_ms"] = median_ms(lambda: net.features(params, xs[1]), sync, reps, 1)
    cap = feature(be, "capture_graph")
    if cap is not None:
        replay = cap(lambda: net.features(params, xs[1]))
        out["ours_b1_graph_ms"] = median_ms(replay, sync, reps, 1)
    torch, ref, why = bc.import_reference(threads=4, disabled=args.no_torch)
    if mode == "emu":
        why = "the emulator (no GPU)"
    elif torch is not None and not torch.cuda.is_available():
        torch, why = None, "torch sees no CUDA device"
    if torch is not None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        ref.LocallySharedConv2d.im2col = ref.LocallyConnected2d.im2col = "strided"
        model = ref.DeepID2(args.classes).cuda().eval()
        feats = model.features
        for n, key in ((batch, "torch_ms"), (1, "torch_b1_ms")):
            tx = torch.as_tensor(xs[n].get() if hasattr(xs[n], "get") else xs[n]).cuda()
            with torch.no_grad():
                out[key] = median_ms(lambda: feats(tx), torch.cuda.synchronize, reps)
    name = be.card_name() or "unknown card"
    print(f"bench_infer_gpu summary ({name}, {mode}; DeepID2 features, batch on the device)")
    if mode == "emu":
        print("(the emulator: the figures check the path, they are not a GPU's speed)")
    f = lambda k, scale=1.0: f"{out[k] * scale:10.4g}" if k in out else f"{'-':>10s}"  # noqa: E731
    print(f"{'what':<34s} {'ours':>10s} {'torch fp32':>10s}")
    ips = {k: batch / out[k] * 1e3 for k in ("ours_ms", "torch_ms") if k in out}
    print(f"{f'images/s at batch {batch}':<34s} {ips.get('ours_ms', 0):10.0f} "
          + (f"{ips['torch_ms']:10.0f}" if "torch_ms" in ips else f"{'-':>10s}"))
    print(f"{'ms, batch 1, eager':<34s} {f('ours_b1_ms')} {f('torch_b1_ms')}")
    print(f"{'ms, batch 1, CUDA graph':<34s} {f('ours_b1_graph_ms')} {'-':>10s}"
          + ("" if cap else "  (not available: the gpu backend has no capture_graph)"))
    if torch is None:
        print(f"torch column: not run ({why})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(gpu=name, mode=mode, **out), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
