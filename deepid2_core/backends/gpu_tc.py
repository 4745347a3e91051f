"""Variants of the gpu backend's ops (issue 22): TF32 tensor-core lsconv,
lsconv + max-pool fused, one SGD launch for all parameters, and the capture
of a whole step as a CUDA graph.

Each launcher has the signature, argument checks and meaning (docs/ops.md)
of the gpu.py op it can replace; only the kernels differ:

  lsconv_forward_tf32         gpu.lsconv_forward       TF32 (docs/ops.md, "TF32")
  lsconv_backward_tf32        gpu.lsconv_backward      TF32
  lsconv_pool_forward_fused   gpu.lsconv_pool_forward  fp32, bit-identical
  lsconv_pool_backward_fused  gpu.lsconv_pool_backward fp32, bit-identical
  lsconv_pool_backward_tf32   gpu.lsconv_pool_backward TF32
  sgd_update_multi            gpu.sgd_update on lists  bit-identical

lsconv_forward / lsconv_backward / lsconv_pool_backward pick TF32 or fp32 by
set_precision() ("fp32", the default, or "tf32"; $DEEPID2_GPU_PRECISION).
TF32 needs compute capability 8.0 or newer. The deterministic mode of
gpu.set_deterministic holds for every variant: no atomics (fast mode's weight
gradient excepted, as in gpu.py), fixed summation orders.

The module works on the gpu backend module it is bound to (its CuPy, checks,
launcher and modes): gpu.py by default, or the one given to bind() (the
tests bind a copy to the CPU emulator's gpu module).
"""

import os

import numpy as np

_state = {"precision": os.environ.get("DEEPID2_GPU_PRECISION", "fp32"), "gpu": None}
PRECISIONS = ("fp32", "tf32")
if _state["precision"] not in PRECISIONS:
    _state["precision"] = "fp32"

_i32, _f32 = np.int32, np.float32
_TC_ROWS = (32, 48, 64, 80)          # block tile rows of the lsconv_tc kernels
_DCOL_BYTES = 256 * 1024 * 1024      # largest input-gradient workspace; more images: chunks


def bind(gpu_module):
    """Use this gpu backend module (gpu.py, or a copy bound to another CuPy)."""
    _state["gpu"] = gpu_module


def _g():
    if _state["gpu"] is None:
        from deepid2_core.backends import gpu
        _state["gpu"] = gpu
    return _state["gpu"]


def set_precision(precision):
    """"fp32" (the default) or "tf32" for the precision-picking ops; returns the old one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
    old = _state["precision"]
    _state["precision"] = precision
    return old


def get_precision():
    return _state["precision"]


def _need_tensor_cores():
    cc = str(_g().cupy.cuda.Device().compute_capability)
    if int(cc) < 80:
        raise RuntimeError(f"the TF32 kernels need an NVIDIA GPU of compute capability 8.0 or "
                           f"newer (this one: {cc[:-1]}.{cc[-1]}); use precision 'fp32'")


def _tc_rows(m):
    """Block tile rows (lsconv_tc_*_m<rows>) that waste the fewest of m rows; ties: larger."""
    return min(_TC_ROWS, key=lambda bm: (-(-m // bm) * bm - m, -bm))


# ----------------------------------------------------------------------------
# lsconv in TF32
def lsconv_forward_tf32(x, w, b, region, relu=True):
    """gpu.lsconv_forward with TF32 products (docs/ops.md, "TF32")."""
    g = _g()
    x, w, b = g._checked(x, "x"), g._checked(w, "w"), g._checked(b, "b")
    s = g._Ls(x, w, region)
    g._expect_shape(b, "b", (s.ry, s.rx, s.k), "RY x RX x K")
    _need_tensor_cores()
    y = g._new(s.yshape)
    _fwd_tc(s, x, w, b, g._qoff(s.c, s.h, s.w, s.kh, s.kw), y, s.dims(), s.k, bool(relu))
    g._check_written("lsconv_forward_tf32", y=y)
    return y


def _fwd_tc(s, x, w, b, qoff, y, dims, maps, relu):
    """lsconv_tc_fwd over x with the geometry dims (gpu._Ls.dims order) and s's regions."""
    g = _g()
    bm = _tc_rows(maps)
    n, c, h, wd, k, kh, kw, rh, rw = (int(v) for v in dims)
    oh, ow = h - kh + 1, wd - kw + 1
    regions = -(-oh // rh) * -(-ow // rw)
    col_tiles = -(-n * min(rh, oh) * min(rw, ow) // 64)
    g._launch("lsconv_tc", f"lsconv_tc_fwd_m{bm}", (regions * col_tiles, -(-maps // bm)), 128,
              (x, w, b, qoff, y, *dims, _i32(relu), _i32(col_tiles)))


class _DenseGrad:
    """The gradient lsconv_backward multiplies: dy, masked where y <= 0 with relu."""
    suffix = ""

    def __init__(self, y, dy, relu):
        self.ptrs, self.tail = (y, dy), (_i32(relu),)

    def rows(self, n0, n1):
        return _DenseGrad(*(a[n0:n1] for a in self.ptrs), bool(self.tail[0]))


class _PooledGrad:
    """lsconv_pool's: the pooled dy at each window's argmax (masked by the pooled y)."""
    suffix = "_pooled"

    def __init__(self, yp, dyp, am, relu, pool):
        self.ptrs, self.tail = (yp, dyp, am), (_i32(relu), _i32(pool))

    def rows(self, n0, n1):
        return _PooledGrad(*(a[n0:n1] for a in self.ptrs), bool(self.tail[0]),
                           int(self.tail[1]))


def lsconv_backward_tf32(x, w, y, dy, region, relu=True, need_dx=True, dw=None, db=None):
    """gpu.lsconv_backward with TF32 products: (dx or None, dw, db), dw += and db +=."""
    g = _g()
    x, w, dy = g._checked(x, "x"), g._checked(w, "w"), g._checked(dy, "dy")
    s = g._Ls(x, w, region)
    g._expect_shape(dy, "dy", s.yshape, "N x K x OH x OW")
    if relu:
        y = g._checked(y, "y")
        g._expect_shape(y, "y", s.yshape, "N x K x OH x OW")
    else:
        y = dy  # not read
    dw = g._out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = g._out_or_new(db, "db", (s.ry, s.rx, s.k), "RY x RX x K")
    _need_tensor_cores()
    return _backward_tc(s, x, w, _DenseGrad(y, dy, bool(relu)), need_dx, dw, db,
                        "lsconv_backward_tf32")


def _backward_tc(s, x, w, grad, need_dx, dw, db, op):
    g = _g()
    dx = None
    if need_dx:
        dx = g._new(tuple(x.shape))
        padded = (s.oh + 2 * (s.kh - 1)) * (s.ow + 2 * (s.kw - 1))
        if s.r == 1 and padded <= 2 * s.h * s.w:
            _dx_one_region_tc(s, w, grad, dx)
        else:
            _dx_regions_tc(s, w, grad, dx)
    _wgrad_tc(s, x, grad, dw, db)
    g._check_written(op, dx=dx, dw=dw, db=db)
    return dx, dw, db


def _dx_one_region_tc(s, w, grad, dx):
    """dx of a one-region layer: the TF32 forward over the zero-padded gradient
    with the flipped, transposed weights (as gpu._dx_as_forward_conv)."""
    g, cp = _g(), _g().cupy
    ph, pw = s.oh + 2 * (s.kh - 1), s.ow + 2 * (s.kw - 1)
    gp = g._new((s.n, s.k, ph, pw))
    g._launch("lsconv", "lsconv_pad_grad" + grad.suffix, (g._blocks(gp.size),), 256,
              (*grad.ptrs, gp, _i32(s.n), _i32(s.k), _i32(s.oh), _i32(s.ow), _i32(s.kh),
               _i32(s.kw), *grad.tail))
    wf = cp.ascontiguousarray(w[0, 0].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])[None, None]
    bias = cp.zeros((1, 1, s.c), dtype=_f32)
    dims = tuple(_i32(v) for v in (s.n, s.k, ph, pw, s.c, s.kh, s.kw, s.h, s.w))
    _fwd_tc(s, gp, wf, bias, g._qoff(s.k, ph, pw, s.kh, s.kw), dx, dims, s.c, False)


def _dx_regions_tc(s, w, grad, dx):
    """dx of a layer of several regions: per region D = W_r^T G (TF32) into an
    N x Q x OH x OW workspace, then each input's taps summed (lsconv_col2im);
    the batch in chunks that keep the workspace under _DCOL_BYTES."""
    g = _g()
    bm = _tc_rows(s.q)
    per_image = s.q * s.oh * s.ow
    step = max(1, _DCOL_BYTES // (4 * per_image))
    for n0 in range(0, s.n, step):
        n1 = min(s.n, n0 + step)
        part, dcol = grad.rows(n0, n1), g._new((n1 - n0, s.q, s.oh, s.ow))
        col_tiles = -(-(n1 - n0) * s.pmax // 64)
        g._launch("lsconv_tc", f"lsconv_tc_dcol{grad.suffix}_m{bm}",
                  (s.r * col_tiles, -(-s.q // bm)), 128,
                  (*part.ptrs, w, dcol, _i32(n1 - n0), _i32(s.k), _i32(s.oh), _i32(s.ow),
                   _i32(s.q), _i32(s.rh), _i32(s.rw), *part.tail, _i32(col_tiles)))
        out = dx[n0:n1]
        g._launch("lsconv_tc", "lsconv_col2im", (g._blocks(out.size),), 256,
                  (dcol, out, _i32(n1 - n0), _i32(s.c), _i32(s.h), _i32(s.w), _i32(s.kh),
                   _i32(s.kw)))


def _wgrad_tc(s, x, grad, dw, db):
    """dw, db += the TF32 weight gradient, column chunks as gpu.lsconv_backward splits
    them: per-chunk sums added in chunk order (deterministic) or atomics (fast)."""
    g = _g()
    bm = _tc_rows(s.k)
    q_tiles, k_tiles = -(-(s.q + 1) // 64), -(-s.k // bm)
    splits = g._wgrad_splits(s, q_tiles, k_tiles)
    kname = f"lsconv_tc_bwd_w{grad.suffix}_m{bm}"
    grid = (s.r * q_tiles, k_tiles, splits)
    qoff = g._qoff(s.c, s.h, s.w, s.kh, s.kw)
    tail = (*grad.tail, _i32(q_tiles), _i32(splits))
    if g.is_deterministic():
        part = g._new((splits, s.r, s.k, s.q + 1))
        g._launch("lsconv_tc", kname, grid, 128,
                  (x, *grad.ptrs, qoff, part, dw, db, *s.dims(), *tail, _i32(0)))
        g._launch("lsconv", "lsconv_bwd_w_reduce", (g._blocks(part.size // splits),), 256,
                  (part, dw, db, _i32(s.r), _i32(s.k), _i32(s.q), _i32(splits)))
    else:
        g._launch("lsconv_tc", kname, grid, 128,
                  (x, *grad.ptrs, qoff, dw, dw, db, *s.dims(), *tail, _i32(1)))


# ----------------------------------------------------------------------------
# by precision
def lsconv_forward(x, w, b, region, relu=True):
    """gpu.lsconv_forward in the precision of set_precision()."""
    f = lsconv_forward_tf32 if _state["precision"] == "tf32" else _g().lsconv_forward
    return f(x, w, b, region, relu)


def lsconv_backward(x, w, y, dy, region, relu=True, need_dx=True, dw=None, db=None):
    """gpu.lsconv_backward in the precision of set_precision()."""
    f = lsconv_backward_tf32 if _state["precision"] == "tf32" else _g().lsconv_backward
    return f(x, w, y, dy, region, relu, need_dx, dw, db)
