"""Times the gpu backend's ops at the DeepID2 network's shapes against the same
ops in PyTorch CUDA, at batch 128 and 1024 (see bench/README.md, "bench_gpu.py").

    python bench/bench_gpu.py                      # batches 128 1024, every op
    python bench/bench_gpu.py --batches 128 --ops conv3 conv4 --reps 50
    python bench/bench_gpu.py --json gpu.json      # also every figure as JSON

Timing: CUDA events around `--inner` back-to-back calls, after `--warmup`
untimed calls; `--reps` such samples; the median per call is reported.
Both sides run float32 (PyTorch's TF32 is switched off unless --torch-tf32).
Before timing, each op's outputs are compared with PyTorch's (max relative
error printed; a mismatch is flagged, not fatal).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = 8192
# name: (C, H, W, K, kh, kw, region) -- the DeepID2 net of bench/README.md
CONVS = {
    "conv1": (3, 55, 47, 20, 4, 4, (52, 44)),
    "conv2": (20, 26, 22, 40, 3, 3, (24, 20)),
    "conv3": (40, 12, 10, 60, 3, 3, (5, 4)),
    "conv4": (60, 5, 4, 80, 2, 2, (1, 1)),
}
POOLS = {"pool1": (20, 52, 44), "pool2": (40, 24, 20), "pool3": (60, 10, 8)}
ALL_OPS = [*CONVS, *POOLS, "dense", "ident_fc", "loss", "sgd", "assemble"]


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--ops", nargs="+", default=ALL_OPS, choices=ALL_OPS)
    ap.add_argument("--reps", type=int, default=25, help="timed samples per figure")
    ap.add_argument("--inner", type=int, default=4, help="calls per timed sample")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="our fast (atomics) mode, not deterministic")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-tf32", action="store_true", help="let PyTorch use TF32")
    ap.add_argument("--json", help="write all figures here")
    return ap.parse_args()


class Timer:
    """Median ms per call over CUDA events; `sync` waits for the device."""

    def __init__(self, event_factory, sync, args):
        self.ev, self.sync, self.a = event_factory, sync, args

    def __call__(self, fn):
        for _ in range(self.a.warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(self.a.reps):
            s, e = self.ev(), self.ev()
            s.record()
            for _ in range(self.a.inner):
                fn()
            e.record()
            e.synchronize()
            samples.append(self._elapsed(s, e) / self.a.inner)
        return statistics.median(samples)

    @staticmethod
    def _elapsed(s, e):
        if hasattr(s, "elapsed_time"):          # torch.cuda.Event
            return s.elapsed_time(e)
        import cupy                              # cupy.cuda.Event
        return cupy.cuda.get_elapsed_time(s, e)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main():
    args = parse()
    import cupy
    from deepid2_core.backends import get_backend
    be = get_backend("gpu")
    be.set_deterministic(not args.fast)
    be.set_debug(False)
    torch = None
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as F
            if not torch.cuda.is_available():
                print("bench_gpu: torch sees no CUDA device: torch columns absent")
                torch = None
            else:
                torch.backends.cuda.matmul.allow_tf32 = args.torch_tf32
                torch.backends.cudnn.allow_tf32 = args.torch_tf32
                torch.backends.cudnn.benchmark = True
        except ImportError:
            print("bench_gpu: PyTorch not importable: torch columns absent")
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"bench_gpu: {gpu_name}; CuPy {cupy.__version__}"
          + (f"; torch {torch.__version__} (TF32 {'on' if args.torch_tf32 else 'off'})"
             if torch else "")
          + f"; ours {'fast' if args.fast else 'deterministic'}; median of {args.reps} x "
          f"{args.inner} calls after {args.warmup} warm-up")
    ours_t = Timer(cupy.cuda.Event, lambda: cupy.cuda.Device().synchronize(), args)
    torch_t = Timer(lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize,
                    args) if torch else None

    rows, checks, failed = [], [], []
    rng = np.random.default_rng(0)

    def r32(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def add(op, n, of, ob, tf=None, tb=None, note=""):
        rows.append(dict(op=op, batch=n, ours_fwd=of, ours_bwd=ob, torch_fwd=tf, torch_bwd=tb,
                         note=note))
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"  {op:9s} N={n:5d}  ours fwd {fmt(of)} bwd {fmt(ob)} ms | torch fwd {fmt(tf)} "
              f"bwd {fmt(tb)} ms {note}", flush=True)

    def check(op, n, name, ours, ref):
        e = rel_err(cupy.asnumpy(ours), ref.detach().cpu().numpy())
        checks.append(dict(op=op, batch=n, output=name, max_rel_err=e))
        if e > 1e-3:
            print(f"  MISMATCH {op} N={n} {name}: max rel err {e:.2e}")

    t0 = time.perf_counter()
    for n in args.batches:
        print(f"batch {n}:")
        for op in args.ops:
            try:
                if op in CONVS:
                    c, h, w, k, kh, kw, region = CONVS[op]
                    oh, ow = h - kh + 1, w - kw + 1
                    ry, rx = -(-oh // region[0]), -(-ow // region[1])
                    x, wt, b = r32(n, c, h, w), r32(ry, rx, k, c, kh, kw, scale=0.1), r32(ry, rx, k)
                    gx, gw, gb = cupy.asarray(x), cupy.asarray(wt), cupy.asarray(b)
                    y = be.lsconv_forward(gx, gw, gb, region)
                    dy = cupy.asarray(r32(*y.shape))
                    need_dx = op != "conv1"      # the network never needs conv1's dx
                    dwb, dbb = cupy.zeros_like(gw), cupy.zeros_like(gb)
                    of = ours_t(lambda: be.lsconv_forward(gx, gw, gb, region))
                    ob = ours_t(lambda: be.lsconv_backward(gx, gw, y, dy, region, need_dx=need_dx,
                                                           dw=dwb, db=dbb))
                    tf = tb = None
                    if torch:
                        tx = torch.tensor(x, device="cuda", requires_grad=need_dx)
                        fwd, tparams = _torch_conv(torch, F, op, wt, b, (h, w), region)
                        with torch.no_grad():
                            tf = torch_t(lambda: fwd(tx))
                        ty = fwd(tx)
                        check(op, n, "y", y, ty)
                        tdy = torch.as_tensor(dy, device="cuda")
                        ins = tparams + ([tx] if need_dx else [])
                        tb = torch_t(lambda: torch.autograd.grad(ty, ins, tdy, retain_graph=True))
                    if need_dx:   # where the backward's time goes: weights alone
                        obw = ours_t(lambda: be.lsconv_backward(gx, gw, y, dy, region,
                                                                need_dx=False, dw=dwb, db=dbb))
                        note = f"(ours dw+db alone {obw:.4f}, dx {ob - obw:.4f})"
                    else:
                        note = "(no dx)"
                    add(op, n, of, ob, tf, tb, note)
                elif op in POOLS:
                    c, h, w = POOLS[op]
                    x = r32(n, c, h, w)
                    gx = cupy.asarray(x)
                    y, am = be.maxpool_forward(gx, 2)
                    dy = cupy.asarray(r32(*y.shape))
                    of = ours_t(lambda: be.maxpool_forward(gx, 2))
                    ob = ours_t(lambda: be.maxpool_backward(dy, am, (h, w), 2))
                    tf = tb = None
                    if torch:
                        tx = torch.tensor(x, device="cuda", requires_grad=True)
                        with torch.no_grad():
                            tf = torch_t(lambda: F.max_pool2d(tx, 2))
                        ty = F.max_pool2d(tx, 2)
                        check(op, n, "y", y, ty)
                        tdy = torch.as_tensor(dy, device="cuda")
                        tb = torch_t(lambda: torch.autograd.grad(ty, [tx], tdy, retain_graph=True))
                    add(op, n, of, ob, tf, tb, "(bwd checks argmax: syncs)")
                elif op in ("dense", "ident_fc"):
                    if op == "dense":
                        xs = [r32(n, 60, 5, 4), r32(n, 80, 4, 3)]
                        m, relu = 160, True
                    else:
                        xs, m, relu = [r32(n, 160)], CLASSES, False
                    d = sum(int(np.prod(a.shape[1:])) for a in xs)
                    w, b = r32(d, m, scale=1 / math.sqrt(d)), r32(m)
                    gxs, gw, gb = [cupy.asarray(a) for a in xs], cupy.asarray(w), cupy.asarray(b)
                    y = be.dense_forward(gxs, gw, gb, relu=relu)
                    dy = cupy.asarray(r32(n, m))
                    dwb, dbb = cupy.zeros_like(gw), cupy.zeros_like(gb)
                    of = ours_t(lambda: be.dense_forward(gxs, gw, gb, relu=relu))
                    ob = ours_t(lambda: be.dense_backward(gxs, gw, y, dy, relu=relu, dw=dwb, db=dbb))
                    tf = tb = None
                    if torch:
                        txs = [torch.tensor(a, device="cuda", requires_grad=True) for a in xs]
                        tw = torch.tensor(w, device="cuda", requires_grad=True)
                        tbias = torch.tensor(b, device="cuda", requires_grad=True)

                        def fwd():
                            z = torch.addmm(tbias, torch.cat([a.flatten(1) for a in txs], 1), tw)
                            return torch.relu(z) if relu else z
                        with torch.no_grad():
                            tf = torch_t(fwd)
                        ty = fwd()
                        check(op, n, "y", y, ty)
                        tdy = torch.as_tensor(dy, device="cuda")
                        tb = torch_t(lambda: torch.autograd.grad(ty, [*txs, tw, tbias], tdy,
                                                                 retain_graph=True))
                    add(op, n, of, ob, tf, tb)
                elif op == "loss":
                    logits, feats = r32(n, CLASSES, scale=3.0), r32(n, 160)
                    labels = rng.integers(0, CLASSES, n).astype(np.int32)
                    half = n // 2
                    pa = np.arange(half, dtype=np.int32)
                    pb = pa + half
                    py = np.where(rng.random(half) < 0.5, 1, -1).astype(np.int32)
                    g = [cupy.asarray(a) for a in (logits, labels, feats, pa, pb, py)]
                    params = cupy.asarray(np.float32([1.0]))
                    r = be.joint_loss(*g, variant="l2", lam=0.05, params=params)
                    of = ours_t(lambda: be.joint_loss(*g, variant="l2", lam=0.05, params=params))
                    tf = None
                    if torch:
                        tl = torch.tensor(logits, device="cuda", requires_grad=True)
                        tfe = torch.tensor(feats, device="cuda", requires_grad=True)
                        tlab = torch.as_tensor(labels.astype(np.int64), device="cuda")
                        tpa, tpb = (torch.as_tensor(a.astype(np.int64), device="cuda") for a in (pa, pb))
                        same = torch.as_tensor(py == 1, device="cuda")

                        def fb():
                            ce = F.cross_entropy(tl, tlab)
                            dd = (tfe[tpa] - tfe[tpb]).pow(2).sum(1)
                            hinge = torch.clamp(1.0 - torch.sqrt(dd + 1e-12), min=0).pow(2)
                            ver = 0.5 * torch.where(same, dd, hinge).mean()
                            return torch.autograd.grad(ce + 0.05 * ver, [tl, tfe])
                        tf = torch_t(fb)
                        check(op, n, "dlogits", r.dlogits, fb()[0])
                    add(op, n, of, None, tf, None, "(f+b in fwd; ours returns floats: syncs)")
                elif op == "sgd":
                    shapes = _param_shapes()
                    ps = [cupy.asarray(r32(*s)) for s in shapes]
                    gs = [cupy.asarray(r32(*s)) for s in shapes]
                    vs = [cupy.zeros_like(p) for p in ps]

                    def step():
                        for p, g_, v in zip(ps, gs, vs):
                            be.sgd_update(p, g_, v, 0.01, 0.9, 5e-4)
                    of = ours_t(step)
                    tf = None
                    if torch:
                        tps = [torch.zeros(s, device="cuda", requires_grad=True) for s in shapes]
                        for tp in tps:
                            tp.grad = torch.randn_like(tp)
                        opt = torch.optim.SGD(tps, lr=0.01, momentum=0.9, weight_decay=5e-4,
                                              foreach=True)
                        tf = torch_t(opt.step)
                    add(op, n, of, None, tf, None,
                        f"({len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes)} params; "
                        "batch-independent)")
                elif op == "assemble":
                    count = 16384
                    patches = rng.integers(0, 256, (count, 55, 47, 3), dtype=np.uint8)
                    gp = cupy.asarray(patches)
                    idx = cupy.asarray(rng.integers(0, count, n).astype(np.int64))
                    flip = cupy.asarray(rng.random(n) < 0.5)
                    out = cupy.empty((n, 3, 55, 47), dtype=np.float32)
                    of = ours_t(lambda: be.assemble_batch(gp, idx, flip, out=out))
                    tf = None
                    if torch:
                        tp = torch.as_tensor(patches, device="cuda")
                        ti = torch.as_tensor(cupy.asnumpy(idx), device="cuda")
                        tfl = torch.as_tensor(cupy.asnumpy(flip), device="cuda")

                        def tasm():
                            x = tp[ti]
                            x = torch.where(tfl[:, None, None, None], x.flip(2), x)
                            return ((x.permute(0, 3, 1, 2).float() - 127.5) * (1 / 128.0)).contiguous()
                        tf = torch_t(tasm)
                        check(op, n, "batch", be.assemble_batch(gp, idx, flip), tasm())
                    add(op, n, of, None, tf, None, "(device idx: range check syncs)")
            except Exception as e:  # noqa: BLE001 - report and go on with the next op
                failed.append((op, n))
                print(f"  {op:9s} N={n:5d}  FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            cupy.get_default_memory_pool().free_all_blocks()
            if torch:
                torch.cuda.empty_cache()
    elapsed = time.perf_counter() - t0

    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            gpu=gpu_name, cupy=cupy.__version__, torch=torch.__version__ if torch else None,
            deterministic=not args.fast, reps=args.reps, inner=args.inner, warmup=args.warmup,
            rows=rows, checks=checks, seconds=elapsed), indent=1))
    print()
    print(f"bench_gpu summary ({gpu_name}; ms per call, median; ratio = torch / ours, > 1: ours "
          f"faster; {elapsed:.0f} s)")
    print(f"{'op':9s} {'N':>5s} {'ours fwd':>9s} {'torch fwd':>9s} {'ours bwd':>9s} "
          f"{'torch bwd':>9s} {'ratio f+b':>9s}")
    fmt = lambda v: f"{v:9.4f}" if v is not None else f"{'-':>9s}"  # noqa: E731
    for r in rows:
        ours = r["ours_fwd"] + (r["ours_bwd"] or 0.0)
        th = None if r["torch_fwd"] is None else r["torch_fwd"] + (r["torch_bwd"] or 0.0)
        ratio = f"{th / ours:9.2f}" if th is not None else f"{'-':>9s}"
        print(f"{r['op']:9s} {r['batch']:5d} {fmt(r['ours_fwd'])} {fmt(r['torch_fwd'])} "
              f"{fmt(r['ours_bwd'])} {fmt(r['torch_bwd'])} {ratio}")
    bad = [c for c in checks if c["max_rel_err"] > 1e-3]
    print(f"checks: {len(checks) - len(bad)} of {len(checks)} outputs agree with torch "
          f"(max rel err <= 1e-3)" + (f"; MISMATCH: {[(c['op'], c['batch']) for c in bad]}"
                                      if bad else ""))
    if failed:
        print(f"FAILED ops: {failed}")
    return 1 if bad or failed else 0


def _torch_conv(torch, F, op, wt, b, in_hw, region):
    """(fwd(x) = relu(conv(x) + b), its parameters) in PyTorch with our weights:
    cuDNN conv2d where one region covers the map (conv1, conv2), else the
    reference's own layers (LocallySharedConv2d / LocallyConnected2d from
    ../shared/reference, strided im2col + one batched GEMM: its fastest)."""
    ry, rx, k, c, kh, kw = wt.shape
    if (ry, rx) == (1, 1):
        tw = torch.tensor(wt[0, 0], device="cuda", requires_grad=True)
        tbias = torch.tensor(b[0, 0], device="cuda", requires_grad=True)
        return (lambda x: torch.relu(F.conv2d(x, tw, tbias))), [tw, tbias]
    ref = _reference()
    oh, ow = in_hw[0] - kh + 1, in_hw[1] - kw + 1
    if tuple(region) == (1, 1):
        layer = ref.LocallyConnected2d(c, k, kh, in_hw)
    else:
        layer = ref.LocallySharedConv2d(c, k, kh, in_hw, tuple(region))
    assert (oh, ow) == (layer.ho, layer.wo)
    layer.im2col = "strided"
    layer = layer.cuda()
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(wt.reshape(layer.weight.shape)))
        layer.bias.copy_(torch.as_tensor(b.reshape(layer.bias.shape)))
    return (lambda x: torch.relu(layer(x))), [layer.weight, layer.bias]


def _reference():
    """../shared/reference/torch_deepid2.py (or $DEEPID2_REFERENCE_DIR), by path."""
    import bench_common
    sys.path.insert(0, bench_common.REF_DIR)
    import torch_deepid2
    return torch_deepid2


def _param_shapes():
    shapes = []
    for c, h, w, k, kh, kw, region in CONVS.values():
        oh, ow = h - kh + 1, w - kw + 1
        ry, rx = -(-oh // region[0]), -(-ow // region[1])
        shapes += [(ry, rx, k, c, kh, kw), (ry, rx, k)]
    return shapes + [(2160, 160), (160,), (160, CLASSES), (CLASSES,)]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
