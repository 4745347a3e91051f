#!/usr/bin/env python3
"""lsconv + bias + ReLU + 2x2 max-pool, forward (pooled y, argmax) and backward
(dx, dw +=, db += from the pooled dy through the argmax): every variant of
lsconv_pool_fwd / lsconv_pool_bwd (composed: the ops one after the other;
fused: the default) at DeepID2's pooled layers conv1..conv3 (batches 128,
512, 2048; conv1 without dx, as the network), checked against the float64
oracle (y: atol = 1e-5 sqrt(C kh kw), rtol = 1e-4; argmax: in its window,
and the value there within y's bound of the window's maximum; dx, dw, db as
lsconv_dx.py and lsconv_dw.py), in fp32 also bit for bit against the
composition; timed, tabled. The backward's flops count one gradient term per
window (the op's minimum).

    python bench/kernels/lsconv_pool.py [--batches 512] [--layers conv2]
    python bench/kernels/lsconv_pool.py --shape 64,20,26,22,40,3,3,24,20
    python bench/kernels/lsconv_pool.py --emu [--precision tf32]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
from deepid2_core.backends.gpu_variants import LsPoolShape  # noqa: E402


def window_max(z):
    n, k, oh, ow = z.shape
    return z[:, :, :oh // 2 * 2, :ow // 2 * 2].reshape(n, k, oh // 2, 2, ow // 2, 2).max((3, 5))


def argmax_check(g, z, tols):
    """The pooled argmax g against the unpooled oracle z: each index in its 2x2
    window, the value there within y's bound of the window's maximum (a
    near-tie may pick either position)."""
    n, k, oh, ow = z.shape
    if g.shape != (n, k, oh // 2, ow // 2):
        return np.inf, f"argmax: shape {g.shape} != {(n, k, oh // 2, ow // 2)}"
    g = g.astype(np.int64)
    inside = ((g // ow) // 2 == np.arange(oh // 2)[:, None]) \
        & ((g % ow) // 2 == np.arange(ow // 2)) & (g >= 0)
    if not inside.all():
        i = tuple(int(a[0]) for a in np.nonzero(~inside))
        return np.inf, f"argmax{list(i)}: {g[i]} is outside its 2x2 window"
    picked = np.take_along_axis(z.reshape(n, k, -1), g.reshape(n, k, -1), 2).reshape(g.shape)
    return H.close("y at argmax", picked, window_max(z), *tols["y"])


def forward_reference(args, i, s):
    z = L.ls_forward_oracle(args, i, s)   # ReLU'd, unpooled
    return {"y": window_max(z), "argmax": z}


def backward_setup(be, inp):
    d = L.to_device(be, inp)
    d["dw"], d["db"] = be.xp.zeros_like(d["w"]), be.xp.zeros(d["w"].shape[:3], dtype="float32")
    return d


def backward_call(be, d, region, need_dx):
    dx, dw, db = be.lsconv_pool_backward(d["x"], d["w"], d["y"], d["argmax"], d["dy"], region,
                                         need_dx=need_dx, dw=d["dw"], db=d["db"], s=2)
    return dict(dw=dw, db=db, **({"dx": dx} if need_dx else {}))


def cases(args):
    for label, s in L.convs(args, pooled=True):
        ps, r, a = LsPoolShape(*s, 2), (s.rh, s.rw), L.ls_shapes(s)
        pooled = (s.n, s.k, s.oh // 2, s.ow // 2)
        windows = int(np.prod(pooled))
        yield H.Case(
            label, "lsconv_pool_fwd", ps, lambda s=s: L.ls_inputs(s, backward=False),
            setup=L.to_device,
            call=lambda be, d, r=r: dict(zip(("y", "argmax"), be.lsconv_pool_forward(
                d["x"], d["w"], d["b"], r, s=2))),
            reference=lambda i, s=s: forward_reference(args, i, s),
            tol={"y": H.tol(s.q), "argmax": argmax_check},
            flops=2 * s.n * s.oh * s.ow * s.k * s.q,
            bytes=L.nbytes(a["x"], a["w"], a["b"], pooled, pooled), bits_of="composed")
        need_dx = not label.startswith("conv1 ")
        yield H.Case(
            label, "lsconv_pool_bwd", ps, lambda s=s: L.ls_pool_inputs(s), setup=backward_setup,
            call=lambda be, d, r=r, dx=need_dx: backward_call(be, d, r, dx),
            reference=lambda i, s=s, dx=need_dx: {
                k: v for k, v in L.ls_pool_backward_oracle(args, i, s).items()
                if dx or k != "dx"},
            tol={"dx": H.tol(s.k * s.kh * s.kw), "dw": H.tol(s.n * s.pmax),
                 "db": H.tol(s.n * s.pmax)},
            flops=2 * windows * (s.q + 1) + (2 * windows * s.q if need_dx else 0),
            bytes=L.nbytes(a["x"], a["w"], *[pooled] * 3, a["w"], a["w"], a["b"],
                           *([a["x"]] if need_dx else [])),
            bits_of="composed")


if __name__ == "__main__":
    sys.exit(H.main("lsconv_pool", __doc__.splitlines()[0], cases))
