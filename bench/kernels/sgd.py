#!/usr/bin/env python3
"""Momentum SGD with weight decay, in place (v = m v - lr (g + wd p); p += v):
every variant of sgd (block size) for each parameter tensor of DeepID2
(8192 classes), checked against the float64 oracle (rtol 1e-5, atol 1e-6:
a few float32 roundings), timed, tabled. One launch per tensor, as the
trainer does.

    python bench/kernels/sgd.py [--layers ident.w]
    python bench/kernels/sgd.py --shape 1310720
    python bench/kernels/sgd.py --emu
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
import oracle as O  # noqa: E402
from deepid2_core.backends.gpu_variants import GridShape  # noqa: E402

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4


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
            tol={"param": (1e-5, 1e-6), "velocity": (1e-5, 1e-6)}, flops=6 * size,
            bytes=L.nbytes((5, size)))

if __name__ == "__main__":
    sys.exit(H.main("sgd", __doc__.splitlines()[0], cases))
