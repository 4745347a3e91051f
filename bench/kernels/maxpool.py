#!/usr/bin/env python3
"""2x2 max-pool, forward (y, argmax) and backward (dx from dy and argmax): every
block size of maxpool_fwd / maxpool_bwd at DeepID2's pool1..pool3 (batches
128, 512, 2048), checked against the float64 oracle exactly (tolerance 0:
the op only selects and copies), timed, tabled.

    python bench/kernels/maxpool.py [--batches 512] [--layers pool1]
    python bench/kernels/maxpool.py --shape 512,20,52,44
    python bench/kernels/maxpool.py --emu
"""
import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
import oracle as O  # noqa: E402
from deepid2_core.backends.gpu_variants import GridShape  # noqa: E402

EXACT = (0.0, 0.0)


def cases(args):
    for label, (n, c, h, w) in L.pools(args):
        @functools.lru_cache(maxsize=1)
        def data(n=n, c=c, h=h, w=w):
            rng = L.rng_for("pool", n, c, h, w)
            x = H.rand(rng, n, c, h, w)
            y, am = O.maxpool_forward(x, 2)
            return x, y, am, H.rand(rng, *y.shape)
        x, y = (n, c, h, w), (n, c, h // 2, w // 2)
        yield H.Case(
            label, "maxpool_fwd", GridShape(int(np.prod(y))), lambda data=data: {"x": data()[0]},
            setup=L.to_device,
            call=lambda be, d: dict(zip(("y", "argmax"), be.maxpool_forward(d["x"], 2))),
            reference=lambda i, data=data: {"y": data()[1], "argmax": data()[2]},
            tol={"y": EXACT, "argmax": EXACT}, flops=int(np.prod(x)), bytes=L.nbytes(x, y, y))
        yield H.Case(
            label, "maxpool_bwd", GridShape(int(np.prod(x))),
            lambda data=data: {"dy": data()[3], "argmax": data()[2].astype(np.int32)},
            setup=L.to_device,
            call=lambda be, d, hw=(h, w): {"dx": be.maxpool_backward(d["dy"], d["argmax"], hw, 2)},
            reference=lambda i, hw=(h, w): {"dx": O.maxpool_backward(i["dy"], i["argmax"], hw)},
            tol={"dx": EXACT}, flops=0, bytes=L.nbytes(y, y, x))

if __name__ == "__main__":
    sys.exit(H.main("maxpool", __doc__.splitlines()[0], cases))
