#!/usr/bin/env python3
"""lsconv weight gradient, dw += and db += of lsconv_backward (need_dx=False):
every variant of lsconv_dw (tile x column splits) at DeepID2's conv1..conv4
(batches 128, 512, 2048), in deterministic mode (--fast: atomics), checked
against the float64 oracle (atol = 1e-5 sqrt(N x region columns), rtol =
1e-4), timed, tabled; the fastest goes to the tuning file.

    python bench/kernels/lsconv_dw.py [--batches 512] [--layers conv1] [--fast]
    python bench/kernels/lsconv_dw.py --shape 512,3,55,47,20,4,4,52,44
    python bench/kernels/lsconv_dw.py --emu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402


def setup(be, inp):
    d = L.to_device(be, inp)
    d["dw"], d["db"] = be.xp.zeros_like(d["w"]), be.xp.zeros(d["w"].shape[:3], dtype="float32")
    return d


def cases(args):
    for label, s in L.convs(args):
        cols, a = s.n * s.oh * s.ow, L.ls_shapes(s)
        yield H.Case(
            label, "lsconv_dw", s, lambda s=s: L.ls_inputs(s, backward=True), setup=setup,
            call=lambda be, d, r=(s.rh, s.rw): dict(zip(("dw", "db"), be.lsconv_backward(
                d["x"], d["w"], d["y"], d["dy"], r, need_dx=False, dw=d["dw"], db=d["db"])[1:])),
            reference=lambda i, s=s: {k: v for k, v in L.ls_backward_oracle(args, i, s).items()
                                      if k != "dx"},
            tol={"dw": H.tol(s.n * s.pmax), "db": H.tol(s.n * s.pmax)},
            flops=2 * cols * s.k * (s.q + 1),
            bytes=L.nbytes(a["x"], a["y"], a["y"], a["w"], a["w"]))


if __name__ == "__main__":
    sys.exit(H.main("lsconv_dw", __doc__.splitlines()[0], cases))
