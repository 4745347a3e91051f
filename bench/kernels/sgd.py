#!/usr/bin/env python3
"""Momentum SGD with weight decay, in place (v = m v - lr (g + wd p); p += v):
every variant of sgd (block size) for each parameter tensor of DeepID2
(8192 classes), checked against the float64 oracle (rtol 1e-5, atol 1e-6:
a few float32 roundings), timed, tabled, one launch per tensor. Then the
whole parameter list at once: sgd_update_many (one launch for every tensor,
as the trainer updates on the gpu backend) against sgd_update on each tensor
(the pick above), bit for bit and against the oracle, both timed.

    python bench/kernels/sgd.py [--layers ident.w]
    python bench/kernels/sgd.py --shape 1310720
    python bench/kernels/sgd.py --emu
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
import oracle as O  # noqa: E402
from deepid2_core.backends.gpu_variants import GridShape  # noqa: E402

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4
TOL = (1e-5, 1e-6)


def call(be, d):
    be.sgd_update(d["param"], d["grad"], d["velocity"], LR, MOMENTUM, WD)
    return {"param": d["param"], "velocity": d["velocity"]}


def inputs(shape):
    rng = L.rng_for("sgd", shape)
    return dict(param=H.rand(rng, *shape), grad=H.rand(rng, *shape),
                velocity=H.rand(rng, *shape, scale=0.1))


def cases(args):
    for label, shape in L.params(args):
        size = int(np.prod(shape))
        yield H.Case(
            label, "sgd", GridShape(size), lambda shape=shape: inputs(shape),
            setup=lambda be, i: L.to_device(be, i, fresh=("param", "velocity")), call=call,
            reference=lambda i: dict(zip(("param", "velocity"), O.sgd_update(
                i["param"], i["grad"], i["velocity"], LR, MOMENTUM, WD))),
            tol={"param": TOL, "velocity": TOL}, flops=6 * size,
            bytes=L.nbytes((5, size)))


def _many(be, ds):
    be.sgd_update_many([d["param"] for d in ds], [d["grad"] for d in ds],
                       [d["velocity"] for d in ds], LR, MOMENTUM, WD)


PATHS = {"per tensor": lambda be, ds: [call(be, d) for d in ds], "one launch": _many}


def after(args, ctx):
    """sgd_update_many over the parameter list against sgd_update per tensor:
    checked (bits, oracle), timed, tabled. Returns 1 where a check fails."""
    be, pk = ctx.be, ctx.peak
    if not hasattr(be, "sgd_update_many") or H.out_of_time(args):
        print("\nsgd_update_many: not run (" + ("budget spent" if H.out_of_time(args)
                                                else "not in this backend") + ")")
        return 0
    shapes = [s for _, s in L.params(args)]
    host = [inputs(s) for s in shapes]
    refs = [dict(zip(("param", "velocity"), O.sgd_update(h["param"], h["grad"], h["velocity"],
                                                         LR, MOMENTUM, WD))) for h in host]
    total = sum(int(np.prod(s)) for s in shapes)
    floor = 1e3 * max(6 * total / (pk.fp32 * 1e12), 20 * total / (pk.gbs * 1e9)) if pk else None
    print(f"\nsgd_update_many: {len(shapes)} tensor(s) ({total} elements) in one launch "
          f"against one launch per tensor; floor " + (f"{floor:.4g} ms" if floor else "-"))
    print(f"  {'path':<12s} {'ms':>9s} {'GB/s':>8s} {'%floor':>6s} {'err/tol':>7s} "
          f"{'launches':>8s}  bits")
    rows, first, failed = [], None, 0
    for name, path in PATHS.items():
        ds = [{k: be.to_device(a) for k, a in h.items()} for h in host]
        with H.Spy(be) as spy:
            t0 = time.perf_counter()
            path(be, ds)
            wall = 1e3 * (time.perf_counter() - t0)
        got = [{k: H.host(d[k]).copy() for k in ("param", "velocity")} for d in ds]
        worst = max(H.check(g, r, {"param": TOL, "velocity": TOL})[0] for g, r in zip(got, refs))
        differ = next((f"tensor {i} {dif}" for i, (g, f) in enumerate(zip(got, first or got))
                       if (dif := H.bit_difference(g, f, "per tensor"))), "")
        first = first or got
        if worst > 1.0 or differ:
            failed += 1
            print(f"FAIL sgd_update_many {name}: " + (differ or f"err/tol {worst:.3g} against "
                                                      "the float64 oracle"))
        ms = wall if ctx.mode == "emu" else H.gpu_time(args, ctx.cp, lambda: path(be, ds))[0]
        gbs = 20 * total / (ms * 1e6)
        print(f"  {name:<12s} {H.fmt(ms, 9, 4)} {H.fmt(gbs, 8, 4)} "
              f"{H.fmt(100 * floor / ms if floor else None, 6, 1)} {worst:7.3g} "
              f"{len(spy.seen):8d}  {'differ' if differ else 'equal'}")
        rows.append((name, ms))
    print(f"sgd_update_many: " + (f"FAILED: {failed} path(s)" if failed else
                                  "bit-identical to sgd_update per tensor, agrees with the "
                                  "float64 oracle; one launch / per tensor: "
                                  f"{rows[1][1] / rows[0][1]:.3g} of the time"))
    return 1 if failed else 0


if __name__ == "__main__":
    args = H.parse(__doc__.splitlines()[0])
    ctx = H.context(args)
    status, _ = H.run(args, "sgd", cases, ctx)
    sys.exit(max(status, after(args, ctx)))
