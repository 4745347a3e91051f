#!/usr/bin/env python3
"""Dense layers, forward y = act(concat(xs) @ w + b) and backward (dxs, dw +=,
db +=): every variant of dense_fwd / dense_bwd (cuBLAS GEMMs; block size of
the kernels around them) at DeepID2's deepid (pool3 + conv4 -> 160) and
ident (160 -> 8192) layers, batches 128, 512, 2048; checked against the
float64 oracle (atol = 1e-5 sqrt(L) x the terms' scale, L the reduction:
D forward, M for dx, N for dw / db; rtol = 1e-4), timed, tabled.

    python bench/kernels/dense.py [--batches 2048] [--layers ident]
    python bench/kernels/dense.py --shape 512,2160,160
    python bench/kernels/dense.py --emu
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
import oracle as O  # noqa: E402
from deepid2_core.backends.gpu_variants import DenseShape  # noqa: E402


def setup(be, inp):
    d = L.to_device(be, inp)
    d["xs"] = [d.pop(k) for k in sorted(k for k in list(d) if k.startswith("x"))]
    d["dwb"], d["dbb"] = be.xp.zeros_like(d["w"]), be.xp.zeros_like(d["b"])
    return d


def backward(be, d, relu):
    dxs, dw, db = be.dense_backward(d["xs"], d["w"], d["y"], d["dy"], relu=relu, dw=d["dwb"],
                                    db=d["dbb"])
    return {**{f"dx{i}": a for i, a in enumerate(dxs)}, "dw": dw, "db": db}


def inputs(n, in_shapes, m, backward):
    """Unit normal xs, y, dy and b; w scaled by 1/sqrt(D) (the outputs of order 1)."""
    rng = L.rng_for("dense", n, in_shapes, m)
    xs = {f"x{i}": H.rand(rng, n, *s) for i, s in enumerate(in_shapes)}
    d = sum(int(np.prod(s)) for s in in_shapes)
    inp = dict(xs, w=H.rand(rng, d, m, scale=1 / np.sqrt(d)), b=H.rand(rng, m))
    return dict(inp, y=H.rand(rng, n, m), dy=H.rand(rng, n, m)) if backward else inp


def xs_of(i):
    return [i[k] for k in sorted(i) if k.startswith("x")]


def cases(args):
    for label, n, in_shapes, m, relu in L.dense(args):
        d = sum(int(np.prod(s)) for s in in_shapes)
        scale = 1 / np.sqrt(d)
        yield H.Case(
            label, "dense_fwd", DenseShape(n, m),
            lambda n=n, s=in_shapes, m=m: inputs(n, s, m, False), setup=setup,
            call=lambda be, dv, relu=relu: {"y": be.dense_forward(dv["xs"], dv["w"], dv["b"],
                                                                   relu=relu)},
            reference=lambda i, relu=relu: {"y": O.dense_forward(xs_of(i), i["w"], i["b"], relu)},
            tol={"y": H.tol(d, scale)}, flops=2 * n * d * m,
            bytes=L.nbytes((n, d), (d, m), (m,), (n, m)))

        def reference(i, relu=relu):
            dxs, dw, db = O.dense_backward(xs_of(i), i["w"], i["y"], i["dy"], relu)
            return {**{f"dx{j}": a for j, a in enumerate(dxs)}, "dw": dw, "db": db}
        tols = {f"dx{j}": H.tol(m, scale) for j in range(len(in_shapes))}
        yield H.Case(
            label, "dense_bwd", DenseShape(n, m),
            lambda n=n, s=in_shapes, m=m: inputs(n, s, m, True), setup=setup, call=lambda be, dv, relu=relu: backward(be, dv, relu),
            reference=reference, tol=dict(tols, dw=H.tol(n), db=H.tol(n)), flops=4 * n * d * m,
            bytes=L.nbytes((n, d), (n, d), (d, m), (d, m), (n, m), (n, m), (n, m), (m,)))

if __name__ == "__main__":
    sys.exit(H.main("dense", __doc__.splitlines()[0], cases))
