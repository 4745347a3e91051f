#!/usr/bin/env python3
"""The joint identification-verification loss (softmax cross-entropy over the
classes + lambda x the l2 verification loss of N/2 pairs) and its gradients:
every variant of joint_loss at DeepID2's batches 128, 512, 2048 (8192
classes, 160-d features), checked against the float64 oracle (losses:
atol 1e-5, rtol 1e-4; gradients: atol 1e-5 max|ref|, rtol 1e-4, the tests'
bounds), timed (the op returns floats: each call waits for the device).

    python bench/kernels/loss.py [--batches 512]
    python bench/kernels/loss.py --shape 512,8192,160
    python bench/kernels/loss.py --emu
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402
import oracle as O  # noqa: E402
from deepid2_core.backends.gpu_variants import LossShape  # noqa: E402

LAM = 0.05
KEYS = ("total", "ident", "verif", "correct", "dlogits", "dfeatures", "dparams")


def inputs(n, classes, d, p):
    rng = L.rng_for("loss", n, classes, d)
    return dict(logits=H.rand(rng, n, classes, scale=3.0),
                labels=rng.integers(0, classes, n).astype(np.int32),
                features=H.rand(rng, n, d), pair_a=np.arange(p, dtype=np.int32),
                pair_b=np.arange(p, 2 * p, dtype=np.int32),
                pair_y=np.where(rng.random(p) < 0.5, 1, -1).astype(np.int32),
                params=np.float32([1.0]))


def reference(i):
    return O.joint_loss(*(i[k] for k in ("logits", "labels", "features", "pair_a", "pair_b",
                                         "pair_y")), "l2", float(np.float32(LAM)), [1.0])


def tolerances(ref):
    """The tests' bounds: losses 1e-5 + 1e-4 |ref|, gradients 1e-5 max|ref| + 1e-4 |ref|."""
    grads = {k: (H.RTOL, 1e-5 * float(np.abs(ref[k]).max())) for k in KEYS[4:]}
    return dict(grads, total=(H.RTOL, 1e-5), ident=(H.RTOL, 1e-5), verif=(H.RTOL, 1e-5),
                correct=(0.0, 0.0))


def cases(args):
    for label, n, classes, d, p in L.loss(args):
        yield H.Case(
            label, "joint_loss", LossShape(n, classes, d, p),
            lambda a=(n, classes, d, p): inputs(*a), setup=L.to_device,
            call=lambda be, dv: dict(zip(KEYS, be.joint_loss(**dv, variant="l2", lam=LAM))),
            reference=reference, tol=tolerances,
            flops=8 * n * classes + 8 * p * d, bytes=L.nbytes((2, n, classes), (3, n, d)))

if __name__ == "__main__":
    sys.exit(H.main("loss", __doc__.splitlines()[0], cases))
