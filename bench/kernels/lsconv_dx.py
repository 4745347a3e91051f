#!/usr/bin/env python3
"""lsconv input gradient, dx of lsconv_backward: every variant of lsconv_dx
(forward-conv / simple / staged / px2 x tile x images x staged maps x block
size) at DeepID2's conv1..conv4 (batches 128, 512, 2048), checked against the
float64 oracle (atol = 1e-5 sqrt(K kh kw), rtol = 1e-4), timed, tabled.

    python bench/kernels/lsconv_dx.py [--batches 2048] [--layers conv3 conv4]
    python bench/kernels/lsconv_dx.py --emu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402


def cases(args):
    for label, s in L.convs(args):
        a = L.ls_shapes(s)
        yield H.Case(
            label, "lsconv_dx", s, lambda s=s: L.ls_inputs(s, backward=True), setup=L.to_device,
            call=lambda be, d, r=(s.rh, s.rw): {"dx": be.lsconv_input_grad(
                d["x"], d["w"], d["y"], d["dy"], r)},
            reference=lambda i, s=s: {"dx": L.ls_backward_oracle(args, i, s)["dx"]},
            tol={"dx": H.tol(s.k * s.kh * s.kw)},
            flops=2 * s.n * s.oh * s.ow * s.k * s.q,
            bytes=L.nbytes(a["y"], a["y"], a["w"], a["x"]))


if __name__ == "__main__":
    sys.exit(H.main("lsconv_dx", __doc__.splitlines()[0], cases))
