#!/usr/bin/env python3
"""Per-op forward/backward benchmark: deepid2_core (cpu backend) vs PyTorch.

Times every op of the DeepID2 ConvNet at its real shapes (batch 128 by
default, 2 threads): our forward, our backward (dx included) and our
forward+backward, against the same op written the way the PyTorch reference
(../shared/reference/torch_deepid2.py, imported by path, never copied) writes
it, forward then .backward(grad) with inputs that require grad.  Each figure is
the median of many repetitions (time.perf_counter) after warm-up.

PyTorch is optional: without it the torch column is absent and only our ops
are timed.  PyTorch is never a dependency of the package.

Usage (from the repository root):
  python bench/bench_ops.py                      # batch 128, 2 threads
  python bench/bench_ops.py --batch 32 --threads 1 --reps 30 --min-time 1
  python bench/bench_ops.py --ops conv3 conv4    # a subset (network: the whole-network row)
  python bench/bench_ops.py --json bench_ops.json
  python bench/bench_ops.py --no-network         # skip the whole-network row
"""
import argparse
import json
import os
import platform
import sys
import time

import bench_common as bc
from bench_common import MALLOC_ENV, NOISY, REPO

OPS = ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "dense", "loss"]
# conv3/conv4 (our locally shared / locally connected layers) must beat torch
# outright; every other op must stay within TARGET_SLACK x torch's time.
STRICT_OPS = ("conv3", "conv4")
TARGET_SLACK = 1.5

IN_C, IN_H, IN_W = 3, 55, 47
LAM, MARGIN = 0.05, 1.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2,
                    help="OMP_NUM_THREADS for our ops and torch.set_num_threads (default 2)")
    ap.add_argument("--reps", type=int, default=20, help="at least this many timed repetitions")
    ap.add_argument("--min-time", type=float, default=0.4,
                    help="and keep repeating until this many seconds per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    ap.add_argument("--classes", type=int, default=8192)
    ap.add_argument("--ops", nargs="+", choices=OPS + ["network"], default=OPS + ["network"],
                    help="subset of rows to time (default: all ops and the whole network)")
    ap.add_argument("--no-network", action="store_true", help="skip the whole-network row")
    ap.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if importable")
    ap.add_argument("--no-ours", action="store_true", help="time only PyTorch (e.g. before the build)")
    ap.add_argument("--retries", type=int, default=2,
                    help="time an op again (up to this many times) when other processes used more than "
                         "10%% of the CPUs meanwhile; the quietest attempt is kept")
    ap.add_argument("--retry-budget", type=float, default=120.0,
                    help="no retries once the run has taken this many seconds")
    ap.add_argument("--pool-nchw-only", action="store_true",
                    help="time torch's max-pool in NCHW only (default: NCHW and channels_last, the faster "
                         "counts, as in the reference's channels_last network for pool1/pool2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write all results to this file")
    ap.add_argument("--no-malloc-tune", action="store_true",
                    help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ (noisier timings)")
    return ap.parse_args()


# This file is a script, not a module to import: it parses its command line
# and sets up the process here, before numpy, torch or our module load.
# Shared helpers live in bench_common.py.
ARGS = parse_args()

if not ARGS.no_malloc_tune:
    bc.ensure_malloc_env()      # re-execs this script once with MALLOC_ENV set
# Thread counts must be in the environment before numpy, torch or our module
# (OpenMP) are loaded.
bc.set_thread_env(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, REPO)

# --------------------------------------------------------------------------
# Optional imports: our backend, PyTorch + the reference
# --------------------------------------------------------------------------
BE, BE_ERR = None, None
if not ARGS.no_ours:
    try:
        from deepid2_core.backends import get_backend
        BE = get_backend("cpu")
    except Exception as e:  # not built yet, import error, ...
        BE_ERR = f"{type(e).__name__}: {e}"

torch, ref, TORCH_ERR = bc.import_reference(ARGS.threads, ARGS.no_torch)
nn = torch.nn if torch else None
F = torch.nn.functional if torch else None


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
def measure(fn, reset=None):
    """bench_common.measure with this run's --reps, --warmup and --min-time."""
    return bc.measure(fn, reset, reps=ARGS.reps, warmup=ARGS.warmup, min_time=ARGS.min_time)


# --------------------------------------------------------------------------
# Problem data: one set of float32 normal inputs/weights, shared by both sides
# --------------------------------------------------------------------------
def make_data(n, n_classes, seed):
    rng = np.random.default_rng(seed)

    def normal(*shape, std=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def he(shape, fan_in):
        return normal(*shape, std=np.sqrt(2.0 / fan_in))

    d = {}
    d["x"] = normal(n, IN_C, IN_H, IN_W)
    # conv weights in our layout RY x RX x K x C x kh x kw (biases RY x RX x K)
    d["w1"], d["b1"] = he((1, 1, 20, 3, 4, 4), 3 * 16), normal(1, 1, 20, std=0.1)
    d["w2"], d["b2"] = he((1, 1, 40, 20, 3, 3), 20 * 9), normal(1, 1, 40, std=0.1)
    d["w3"], d["b3"] = he((2, 2, 60, 40, 3, 3), 40 * 9), normal(2, 2, 60, std=0.1)
    d["w4"], d["b4"] = he((4, 3, 80, 60, 2, 2), 60 * 4), normal(4, 3, 80, std=0.1)
    d["wd"], d["bd"] = he((2160, 160), 2160), normal(160, std=0.1)          # (in, out)
    d["wi"], d["bi"] = normal(160, n_classes, std=0.01), normal(n_classes, std=0.01)
    # per-op inputs and output gradients (float32 normal)
    d["x2"] = normal(n, 20, 26, 22)
    d["x3"] = normal(n, 40, 12, 10)
    d["x4"] = normal(n, 60, 5, 4)
    d["dy1"] = normal(n, 20, 52, 44)
    d["dy2"] = normal(n, 40, 24, 20)
    d["dy3"] = normal(n, 60, 10, 8)
    d["dy4"] = normal(n, 80, 4, 3)
    d["px1"] = normal(n, 20, 52, 44)
    d["px2"] = normal(n, 40, 24, 20)
    d["px3"] = normal(n, 60, 10, 8)
    d["pdy1"] = normal(n, 20, 26, 22)
    d["pdy2"] = normal(n, 40, 12, 10)
    d["pdy3"] = normal(n, 60, 5, 4)
    d["p3"] = normal(n, 60, 5, 4)
    d["c4"] = normal(n, 80, 4, 3)
    d["dyd"] = normal(n, 160)
    d["f"] = normal(n, 160, std=0.05)
    # labels: half of the pairs (i, i + n/2) share an identity, as the reference
    h = n // 2
    base = rng.integers(0, n_classes, max(h, 1))
    other = rng.integers(0, n_classes, max(h, 1))
    second = np.where(np.arange(max(h, 1)) % 2 == 0, base, other)
    lab = np.concatenate([base[:h], second[:h]]) if h else base[:1]
    if n % 2:
        lab = np.concatenate([lab, base[:1]])
    d["labels"] = lab[:n].astype(np.int32)
    d["pair_a"] = np.arange(h, dtype=np.int32)
    d["pair_b"] = np.arange(h, 2 * h, dtype=np.int32)
    d["pair_y"] = np.where(d["labels"][:h] == d["labels"][h:2 * h], 1, -1).astype(np.int32)
    return d


CONV = {  # name: (input key, w, b, dy key, region)
    "conv1": ("x", "w1", "b1", "dy1", (52, 44)),
    "conv2": ("x2", "w2", "b2", "dy2", (24, 20)),
    "conv3": ("x3", "w3", "b3", "dy3", (5, 4)),
    "conv4": ("x4", "w4", "b4", "dy4", (1, 1)),
}
POOL = {"pool1": ("px1", "pdy1"), "pool2": ("px2", "pdy2"), "pool3": ("px3", "pdy3")}

DESCR = {
    "conv1": "conv1 3->20 4x4 on 3x55x47, ordinary conv + ReLU",
    "conv2": "conv2 20->40 3x3 on 20x26x22, ordinary conv + ReLU",
    "conv3": "conv3 40->60 3x3 on 40x12x10, locally shared, 2x2 grid of 5x4 regions + ReLU",
    "conv4": "conv4 60->80 2x2 on 60x5x4, locally connected (12 positions) + ReLU",
    "pool1": "maxpool 2x2 on 20x52x44",
    "pool2": "maxpool 2x2 on 40x24x20",
    "pool3": "maxpool 2x2 on 60x10x8",
    "dense": "deepid dense (1200 + 960) -> 160 + ReLU",
    "loss": "ident dense 160 -> %d + softmax CE + %.2f * l2 verification on (i, i+N/2)",
    "network": "whole network: all of the above chained (training step without SGD)",
}


def _first(dxs):
    return dxs[0] if isinstance(dxs, (list, tuple)) else dxs


# --------------------------------------------------------------------------
# Ours: each op is fwd() -> state, bwd(state), reset() (zero param grads)
# --------------------------------------------------------------------------
def ours_op(name, d):
    be = BE
    if name in CONV:
        xk, wk, bk, dyk, region = CONV[name]
        x, w, b, dy = d[xk], d[wk], d[bk], d[dyk]
        dw, db = np.zeros_like(w), np.zeros_like(b)

        def fwd():
            return be.lsconv_forward(x, w, b, region, relu=True)

        def bwd(y):
            return be.lsconv_backward(x, w, y, dy, region, relu=True, need_dx=True, dw=dw, db=db)[0]
        out_dx = lambda y, r: (y, r)
    elif name in POOL:
        xk, dyk = POOL[name]
        x, dy = d[xk], d[dyk]
        hw = tuple(x.shape[2:])
        dw = db = None

        def fwd():
            return be.maxpool_forward(x, 2)

        def bwd(st):
            return be.maxpool_backward(dy, st[1], hw)
        out_dx = lambda st, r: (st[0], r)
    elif name == "dense":
        xs, w, b, dy = [d["p3"], d["c4"]], d["wd"], d["bd"], d["dyd"]
        dw, db = np.zeros_like(w), np.zeros_like(b)

        def fwd():
            return be.dense_forward(xs, w, b, relu=True)

        def bwd(y):
            return be.dense_backward(xs, w, y, dy, relu=True, need_dx=True, dw=dw, db=db)[0]
        out_dx = lambda y, r: (y, r[0])
    elif name == "loss":
        f, w, b = d["f"], d["wi"], d["bi"]
        lab, pa, pb, py = d["labels"], d["pair_a"], d["pair_b"], d["pair_y"]
        dw, db = np.zeros_like(w), np.zeros_like(b)

        def fwd():
            logits = be.dense_forward(f, w, b, relu=False)
            jl = be.joint_loss(logits, lab, f, pa, pb, py, variant="l2", lam=LAM)
            return logits, jl

        def bwd(st):
            logits, jl = st
            dxs = be.dense_backward(f, w, logits, jl.dlogits, relu=False, need_dx=True, dw=dw, db=db)[0]
            df = _first(dxs)
            np.add(df, jl.dfeatures, out=df)   # ident part + verification part
            return df
        out_dx = lambda st, r: (np.float32(st[1].total), r)
    elif name == "network":
        return ours_network(d)
    else:
        raise ValueError(name)

    def reset():
        if dw is not None:
            dw.fill(0)
            db.fill(0)
    return fwd, bwd, reset, out_dx


def ours_network(d):
    be = BE
    x = d["x"]
    p = {k: d[k] for k in ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "wd", "bd", "wi", "bi")}
    g = {k: np.zeros_like(v) for k, v in p.items()}
    lab, pa, pb, py = d["labels"], d["pair_a"], d["pair_b"], d["pair_y"]
    R = {k: v[4] for k, v in CONV.items()}

    def fwd():
        s = {}
        # conv + pool as one op each, as deepid2_core.nets.deepid2 trains
        s["p1"], s["a1"] = be.lsconv_pool_forward(x, p["w1"], p["b1"], R["conv1"], relu=True)
        s["p2"], s["a2"] = be.lsconv_pool_forward(s["p1"], p["w2"], p["b2"], R["conv2"],
                                                  relu=True)
        s["p3"], s["a3"] = be.lsconv_pool_forward(s["p2"], p["w3"], p["b3"], R["conv3"],
                                                  relu=True)
        s["c4"] = be.lsconv_forward(s["p3"], p["w4"], p["b4"], R["conv4"], relu=True)
        s["f"] = be.dense_forward([s["p3"], s["c4"]], p["wd"], p["bd"], relu=True)
        s["logits"] = be.dense_forward(s["f"], p["wi"], p["bi"], relu=False)
        s["jl"] = be.joint_loss(s["logits"], lab, s["f"], pa, pb, py, variant="l2", lam=LAM)
        return s

    def bwd(s):
        jl = s["jl"]
        df = _first(be.dense_backward(s["f"], p["wi"], s["logits"], jl.dlogits, relu=False,
                                      need_dx=True, dw=g["wi"], db=g["bi"])[0])
        np.add(df, jl.dfeatures, out=df)
        dp3, dc4 = be.dense_backward([s["p3"], s["c4"]], p["wd"], s["f"], df, relu=True,
                                     need_dx=True, dw=g["wd"], db=g["bd"])[0]
        dp3b = be.lsconv_backward(s["p3"], p["w4"], s["c4"], dc4, R["conv4"], relu=True,
                                  need_dx=True, dw=g["w4"], db=g["b4"])[0]
        np.add(dp3, dp3b, out=dp3)
        dp2 = be.lsconv_pool_backward(s["p2"], p["w3"], s["p3"], s["a3"], dp3, R["conv3"],
                                      relu=True, need_dx=True, dw=g["w3"], db=g["b3"])[0]
        dp1 = be.lsconv_pool_backward(s["p1"], p["w2"], s["p2"], s["a2"], dp2, R["conv2"],
                                      relu=True, need_dx=True, dw=g["w2"], db=g["b2"])[0]
        be.lsconv_pool_backward(x, p["w1"], s["p1"], s["a1"], dp1, R["conv1"], relu=True,
                                need_dx=False, dw=g["w1"], db=g["b1"])
        return g["w1"]

    def reset():
        for v in g.values():
            v.fill(0)
    out_dx = lambda s, r: (np.float32(s["jl"].total), r)
    return fwd, bwd, reset, out_dx


# --------------------------------------------------------------------------
# PyTorch, in the reference's style: each variant is (label, fwd, fb, reset, eval)
# fwd: autograd-enabled forward (what a training step runs); fb: forward then
# .backward(grad) (.backward() on the scalar loss); reset: grads set to None.
# eval() -> (output, dx) as numpy, for the cross-check against ours.
# --------------------------------------------------------------------------
def _p(a):
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)).clone())


def _leaf(a, cl=False):
    t = torch.from_numpy(a).clone()
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(True)


def _const(a, cl=False):
    t = torch.from_numpy(a).clone()
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def _np(t):
    return t.detach().contiguous().numpy()


def torch_variants(name, d):
    out = []
    if name in ("conv1", "conv2"):
        xk, wk, bk, dyk, _ = CONV[name]
        w, b = d[wk][0, 0], d[bk][0, 0]
        for cl in (False, True):
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2])   # the reference's layer
            conv.weight, conv.bias = _p(w), _p(b)
            if cl:   # as the reference's channels_last clone: 4-D weight, input, (and grad) in NHWC
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
            x, dy = _leaf(d[xk], cl), _const(d[dyk], cl)
            fwd = lambda conv=conv, x=x: F.relu(conv(x))
            out.append(("channels_last" if cl else "NCHW", fwd, _fb(fwd, dy), _reset([conv], [x]),
                        _eval(fwd, dy, x)))
    elif name in ("conv3", "conv4"):
        xk, wk, bk, dyk, region = CONV[name]
        w, b = d[wk], d[bk]
        k, cout, cin = w.shape[4], w.shape[2], w.shape[3]
        in_hw = d[xk].shape[2:]
        if name == "conv3":
            mod = ref.LocallySharedConv2d(cin, cout, k, in_hw, region)
            label = "LocallySharedConv2d (strided im2col + baddbmm)"
        else:
            mod = ref.LocallyConnected2d(cin, cout, k, in_hw)
            label = "LocallyConnected2d (strided im2col + baddbmm)"
        assert tuple(mod.weight.shape) == (w.shape[0] * w.shape[1],) + w.shape[2:]
        mod.weight = _p(w.reshape(mod.weight.shape))
        mod.bias = _p(b.reshape(mod.bias.shape))
        x, dy = _leaf(d[xk]), _const(d[dyk])
        fwd = lambda mod=mod, x=x: F.relu(mod(x))
        out.append((label, fwd, _fb(fwd, dy), _reset([mod], [x]), _eval(fwd, dy, x)))
    elif name in POOL:
        xk, dyk = POOL[name]
        for cl in ((False,) if ARGS.pool_nchw_only else (False, True)):
            x, dy = _leaf(d[xk], cl), _const(d[dyk], cl)
            fwd = lambda x=x: F.max_pool2d(x, 2)
            out.append(("F.max_pool2d " + ("channels_last" if cl else "NCHW"), fwd, _fb(fwd, dy),
                        _reset([], [x]), _eval(fwd, dy, x)))
    elif name == "dense":
        fc1 = nn.Linear(60 * 5 * 4, 160)                 # as the reference: W1 (+ b)
        fc2 = nn.Linear(80 * 4 * 3, 160, bias=False)     # W2
        fc1.weight, fc1.bias = _p(d["wd"][:1200].T), _p(d["bd"])
        fc2.weight = _p(d["wd"][1200:].T)
        p3, c4, dy = _leaf(d["p3"]), _leaf(d["c4"]), _const(d["dyd"])
        # the reference's deepid layer (DeepID2.features): relu(fc1(p3) + fc2(c4))
        fwd = lambda: F.relu(fc1(p3.flatten(1)) + fc2(c4.flatten(1)))
        out.append(("relu(fc1(pool3) + fc2(conv4)), nn.Linear", fwd, _fb(fwd, dy),
                    _reset([fc1, fc2], [p3, c4]), _eval(fwd, dy, p3)))
    elif name == "loss":
        ident = nn.Linear(160, d["wi"].shape[1])
        ident.weight, ident.bias = _p(d["wi"].T), _p(d["bi"])
        f = _leaf(d["f"])
        lab = torch.from_numpy(d["labels"].astype(np.int64))

        def fwd():
            logits = ident(f)
            return F.cross_entropy(logits, lab) + LAM * ref.verification_loss(f, lab, MARGIN)

        def fb():
            fwd().backward()

        def ev():
            f.grad = None
            loss = fwd()
            loss.backward()
            r = (np.float32(loss.item()), _np(f.grad))
            f.grad = None
            return r
        out.append(("nn.Linear + F.cross_entropy + ref.verification_loss", fwd, fb,
                    _reset([ident], [f]), ev))
    elif name == "network":
        for cl in (False, True):
            model = ref.DeepID2(d["wi"].shape[1])
            load_ref_model(model, d)
            if cl:
                for c in (model.conv1, model.conv2):
                    c.weight.data = c.weight.data.contiguous(memory_format=torch.channels_last)
            x = _const(d["x"], cl)
            lab = torch.from_numpy(d["labels"].astype(np.int64))
            fwd = lambda model=model, x=x, lab=lab: ref.total_loss(model, x, lab, LAM, MARGIN)

            def fb(fwd=fwd):
                fwd().backward()

            def ev(fwd=fwd, model=model):
                model.zero_grad(set_to_none=True)
                loss = fwd()
                loss.backward()
                r = (np.float32(loss.item()), _np(model.conv1.weight.grad))
                model.zero_grad(set_to_none=True)
                return r
            out.append(("ref.DeepID2 + ref.total_loss, " + ("channels_last" if cl else "NCHW"),
                        fwd, fb, _reset([model], []), ev))
    return out


def load_ref_model(model, d):
    with torch.no_grad():
        model.conv1.weight.copy_(torch.from_numpy(d["w1"][0, 0]))
        model.conv1.bias.copy_(torch.from_numpy(d["b1"][0, 0]))
        model.conv2.weight.copy_(torch.from_numpy(d["w2"][0, 0]))
        model.conv2.bias.copy_(torch.from_numpy(d["b2"][0, 0]))
        model.conv3.weight.copy_(torch.from_numpy(d["w3"]).reshape(model.conv3.weight.shape))
        model.conv3.bias.copy_(torch.from_numpy(d["b3"]).reshape(model.conv3.bias.shape))
        model.conv4.weight.copy_(torch.from_numpy(d["w4"]).reshape(model.conv4.weight.shape))
        model.conv4.bias.copy_(torch.from_numpy(d["b4"]).reshape(model.conv4.bias.shape))
        model.fc1.weight.copy_(torch.from_numpy(d["wd"][:1200].T))
        model.fc1.bias.copy_(torch.from_numpy(d["bd"]))
        model.fc2.weight.copy_(torch.from_numpy(d["wd"][1200:].T))
        model.ident.weight.copy_(torch.from_numpy(d["wi"].T))
        model.ident.bias.copy_(torch.from_numpy(d["bi"]))


def _fb(fwd, dy):
    def fb():
        fwd().backward(dy)
    return fb


def _reset(mods, leaves):
    def reset():
        for m in mods:
            m.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
    return reset


def _eval(fwd, dy, x):
    def ev():
        x.grad = None
        y = fwd()
        y.backward(dy)
        r = (_np(y), _np(x.grad))
        x.grad = None
        return r
    return ev


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size != b.size:
        return float("inf")
    a, b = a.reshape(-1), b.reshape(-1)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def n_off_elements(a, b, tol=1e-3):
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.size != b.size:
        return a.size
    return int(np.count_nonzero(np.abs(a - b) > tol * max(1.0, float(np.max(np.abs(b))))))


# --------------------------------------------------------------------------
def time_op(name, d):
    """Time one op, ours and torch's variants; returns its result dict."""
    r = {"descr": DESCR[name] % ((ARGS.classes, LAM) if name == "loss" else ())}
    print(f"\n[{name}] {r['descr']}")
    t_op = time.perf_counter()
    snap = bc.cpu_snapshot()
    ours_eval = None
    if BE is not None:
        try:
            fwd, bwd, reset, out_dx = ours_op(name, d)
            st = fwd()
            reset()
            ours_eval = tuple(np.array(v, copy=True) for v in out_dx(st, bwd(st)))
            r["ours_fwd"] = measure(fwd, reset)
            r["ours_bwd"] = measure(lambda: bwd(st), reset)
            r["ours_fb"] = measure(lambda: bwd(fwd()), reset)
            print(f"  ours : fwd {r['ours_fwd']['median_ms']:8.3f} ms   bwd {r['ours_bwd']['median_ms']:8.3f} ms"
                  f"   f+b {r['ours_fb']['median_ms']:8.3f} ms  (min {r['ours_fb']['min_ms']:.3f}, "
                  f"n={r['ours_fb']['n']})")
        except Exception as e:
            r["ours_error"] = f"{type(e).__name__}: {e}"
            print(f"  ours : FAILED {r['ours_error']}")
    if torch is not None:
        r["torch"] = {}
        variants = torch_variants(name, d)
        for label, tfwd, tfb, treset, tev in variants:
            try:
                m = measure(tfb, treset)
                r["torch"][label] = {"fb": m}
                line = f"  torch: f+b {m['median_ms']:8.3f} ms  (min {m['min_ms']:.3f}, n={m['n']})  {label}"
                if ours_eval is not None:
                    tout, tdx = tev()
                    e_out, e_dx = rel_err(ours_eval[0], tout), rel_err(ours_eval[1], tdx)
                    n_off = n_off_elements(ours_eval[1], tdx)
                    r["torch"][label]["check_rel_err"] = {"out": e_out, "grad": e_dx,
                                                          "grad_elements_off": n_off}
                    if e_out < 1e-3 and e_dx < 1e-3:
                        verdict = ""
                    elif e_out < 1e-3 and n_off <= 1e-4 * np.size(tdx):
                        # y within rounding of 0: ours and torch pick other sides of
                        # the ReLU there, and that output's whole patch of dx differs
                        verdict = f", {n_off} elements off: ReLU ties at y~0, ok"
                    else:
                        verdict = " MISMATCH"
                    line += f"  [check vs ours: out {e_out:.1e}, grad {e_dx:.1e}{verdict}]"
                print(line)
            except Exception as e:
                r["torch"][label] = {"error": f"{type(e).__name__}: {e}"}
                print(f"  torch: FAILED {label}: {r['torch'][label]['error']}")
        timed = {k: v for k, v in r["torch"].items() if "fb" in v}
        if timed:
            best = min(timed, key=lambda k: timed[k]["fb"]["median_ms"])
            r["torch_best"] = best
            r["torch_fb_ms"] = timed[best]["fb"]["median_ms"]
            # forward alone of the fastest variant (autograd on, graph dropped)
            tfwd = [v[1] for v in variants if v[0] == best][0]
            r["torch_fwd"] = measure(tfwd)
            print(f"  torch: fwd {r['torch_fwd']['median_ms']:8.3f} ms (autograd on) of the faster: {best}")
    if "ours_fb" in r and "torch_fb_ms" in r:
        ratio = r["torch_fb_ms"] / r["ours_fb"]["median_ms"]
        r["ratio_torch_over_ours"] = ratio
        if name == "network":
            r["target"] = None
        elif name in STRICT_OPS:
            r["target"] = "ours < torch"
            r["target_met"] = ratio > 1.0
        else:
            r["target"] = f"ours <= {TARGET_SLACK}x torch"
            r["target_met"] = ratio >= 1.0 / TARGET_SLACK
    r["wall_s"] = time.perf_counter() - t_op
    r["foreign_cpu_frac"] = bc.foreign_load(snap, bc.cpu_snapshot())
    return r


def main():
    n = ARGS.batch
    ops = [o for o in OPS + ["network"] if o in ARGS.ops and not (o == "network" and ARGS.no_network)]
    info = {
        "batch": n, "threads": ARGS.threads, "classes": ARGS.classes,
        "reps": ARGS.reps, "min_time_s": ARGS.min_time, "warmup": ARGS.warmup,
        "cpu": bc.cpu_name(), "python": platform.python_version(), "numpy": np.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_error": TORCH_ERR, "ours_error": BE_ERR,
        "ours_threads": None, "loadavg_start": bc.loadavg(),
    }
    if BE is not None:
        mt = getattr(BE, "max_threads", None)
        try:
            info["ours_threads"] = mt() if callable(mt) else mt
        except Exception:
            pass
    print(f"deepid2 per-op benchmark: batch {n}, {ARGS.classes} classes, "
          f"median of >= {ARGS.reps} reps and >= {ARGS.min_time}s after {ARGS.warmup} warm-up calls")
    print(f"cpu: {info['cpu']}   python {info['python']}, numpy {info['numpy']}")
    print(f"threads: --threads {ARGS.threads}, OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, "
          f"ours max_threads()={info['ours_threads']}, torch.get_num_threads()={info['torch_threads']}")
    print(f"malloc env: {info['malloc_env']}   load average at start: {info['loadavg_start']}")
    if torch is not None:
        print(f"torch {torch.__version__}, reference imported from {os.path.abspath(ref.__file__)}")
    else:
        print(f"torch column ABSENT: PyTorch or the reference not importable ({TORCH_ERR}); timing ours only")
    if BE is None:
        why = "disabled by --no-ours" if ARGS.no_ours else BE_ERR
        print(f"ours ABSENT: deepid2_core cpu backend not available ({why}); timing torch only")
    if BE is None and torch is None:
        print("nothing to time")
        return 1

    snap_all = bc.cpu_snapshot()
    d = make_data(n, ARGS.classes, ARGS.seed)
    results = {}
    t_all = time.perf_counter()
    for name in ops:
        def attempt_fn(attempt, name=name):
            r = time_op(name, d)
            r["attempt"] = attempt + 1
            return r
        results[name] = bc.quietest_of(
            attempt_fn, retries=ARGS.retries, retry_budget=ARGS.retry_budget, t_all=t_all,
            warning=lambda fl: (f"  WARNING: other processes used {100 * fl:.0f}% of the CPUs while this op "
                                f"was timed: its figures are unreliable"),
            keeping=lambda best: (f"  (keeping attempt {best['attempt']}: the quietest, other processes at "
                                  f"{100 * best['foreign_cpu_frac']:.0f}%)"))

    info["loadavg_end"] = bc.loadavg()
    info["wall_s"] = time.perf_counter() - t_all
    info["foreign_cpu_frac"] = bc.foreign_load(snap_all, bc.cpu_snapshot())

    # ---------------------------------------------------------------- table
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"
    head = ["op", "ours fwd ms", "ours bwd ms", "ours f+b ms", "torch f+b ms",
            "torch/ours", "target met?"]
    rows = []
    for name, r in results.items():
        med = lambda k: r[k]["median_ms"] if k in r else None
        ratio = r.get("ratio_torch_over_ours")
        if "target_met" in r:
            tgt = ("yes" if r["target_met"] else "NO") + (" (<1x)" if name in STRICT_OPS else " (<=1.5x)")
        elif name == "network":
            tgt = "n/a (info)"
        else:
            tgt = "n/a"
        noisy = (r.get("foreign_cpu_frac") or 0.0) > NOISY
        rows.append([name + (" *" if noisy else ""), fmt(med("ours_fwd")), fmt(med("ours_bwd")), fmt(med("ours_fb")),
                     fmt(r.get("torch_fb_ms")), f"{ratio:.2f}" if ratio is not None else "-", tgt])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 or i == 6 else c.rjust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    fl = info["foreign_cpu_frac"]
    print(f"\nload average at end: {info['loadavg_end']}, total wall {info['wall_s']:.1f}s, other processes "
          f"used {'?' if fl is None else f'{100 * fl:.0f}%'} of the CPUs during the run")
    if torch is not None:
        print("torch variant used per op (the faster where several were timed):")
        for name, r in results.items():
            if "torch_best" in r:
                print(f"  {name:8s} {r['torch_best']}")
    print(f"\nbatch {n}, threads {ARGS.threads}, torch {info['torch'] or 'ABSENT'}, cpu {info['cpu']}")
    print("ratio = torch f+b / ours f+b (> 1: ours faster). target: ours f+b <= 1.5x torch; "
          "conv3/conv4: ours strictly faster")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if any(row[0].endswith(" *") for row in rows):
        print(f"* other processes used > {100 * NOISY:.0f}% of the CPUs while this op was timed "
              f"(whole run: {100 * (info['foreign_cpu_frac'] or 0):.0f}%): rerun on a quiet machine")

    if ARGS.json:
        with open(ARGS.json, "w") as fh:
            json.dump({"info": info, "ops": results}, fh, indent=1)
        print("wrote", ARGS.json)
    # exit 1 when ours could not be imported (unless --no-ours asked for torch only)
    return 0 if (BE is not None or ARGS.no_ours) else 1


if __name__ == "__main__":
    sys.exit(main())
