#!/usr/bin/env python3
"""lsconv forward, y = ReLU(b + lsconv(x, w)): every variant of lsconv_fwd at
DeepID2's conv1..conv4 (batches 128, 512, 2048), checked against the float64
oracle (tolerance: atol = 1e-5 sqrt(C kh kw), rtol = 1e-4), timed, tabled.

    python bench/kernels/lsconv_fwd.py [--batches 512] [--layers conv3]
    python bench/kernels/lsconv_fwd.py --shape 64,20,26,22,40,3,3,24,20
    python bench/kernels/lsconv_fwd.py --emu      # the kernel emulator, small shapes
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402
import layers as L  # noqa: E402


def cases(args):
    for label, s in L.convs(args):
        region = (s.rh, s.rw)
        yield H.Case(
            label, "lsconv_fwd", s, lambda s=s: L.ls_inputs(s, backward=False), setup=L.to_device,
            call=lambda be, d, r=region: {"y": be.lsconv_forward(d["x"], d["w"], d["b"], r)},
            reference=lambda i, s=s: {"y": L.ls_forward_oracle(args, i, s)},
            tol={"y": H.tol(s.q)}, flops=2 * s.n * s.oh * s.ow * s.k * s.q,
            bytes=L.nbytes(*L.ls_shapes(s).values()))


if __name__ == "__main__":
    sys.exit(H.main("lsconv_fwd", __doc__.splitlines()[0], cases))
