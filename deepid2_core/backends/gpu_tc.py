"""Variants of the gpu backend's lsconv ops (issue 22): TF32 tensor-core
kernels, and lsconv + max-pool fused (gpu_step.py: one SGD launch for all
parameters, a step captured as a CUDA graph).

Each launcher has the signature, argument checks and meaning (docs/ops.md)
of the gpu.py op it can replace; only the kernels differ:

  lsconv_forward_tf32         gpu.lsconv_forward        TF32 (docs/ops.md, "TF32")
  lsconv_backward_tf32        gpu.lsconv_backward       TF32
  lsconv_pool_forward_fused   gpu.lsconv_pool_forward   fp32, bit-identical
  lsconv_pool_backward_fused  gpu.lsconv_pool_backward  fp32, bit-identical
  lsconv_pool_backward_tf32   gpu.lsconv_pool_backward  TF32

lsconv_forward, lsconv_backward, lsconv_pool_forward and lsconv_pool_backward
pick by set_precision(): "fp32" (the default; $DEEPID2_GPU_PRECISION) runs
gpu.py's kernels or the fused fp32 ones, "tf32" the TF32 ones (compute
capability 8.0 or newer). gpu.set_deterministic holds for every variant: no
atomics (fast mode's weight gradient excepted, as in gpu.py), sums in fixed
orders.

The module works on the gpu backend module it is bound to (its CuPy, checks,
launcher and modes): gpu.py by default, or the one given to bind() (the
tests bind a copy to the CPU emulator's gpu module).
"""

import os

import numpy as np

_state = {"precision": os.environ.get("DEEPID2_GPU_PRECISION", "fp32")}
PRECISIONS = ("fp32", "tf32")
if _state["precision"] not in PRECISIONS:
    _state["precision"] = "fp32"

_i32, _f32 = np.int32, np.float32
TILE_ROWS = (32, 48, 64, 80)         # block tile rows of the lsconv_tc kernels
_force = {"rows": None}
_DCOL_BYTES = 256 * 1024 * 1024      # largest input-gradient workspace; more images: chunks


class Binding:
    """The gpu backend module a variants module works on: gpu.py (imported at
    first use), or the one given to bind()."""

    def __init__(self):
        self.module = None

    def bind(self, gpu_module):
        self.module = gpu_module

    def __call__(self):
        if self.module is None:
            from deepid2_core.backends import gpu
            self.module = gpu
        return self.module


_g = Binding()
bind = _g.bind


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


def set_tile_rows(rows=None):
    """Force the lsconv_tc kernels' block tile rows (one of TILE_ROWS; None: the
    pick that wastes the fewest rows); returns the old setting. For benches."""
    if rows is not None and rows not in TILE_ROWS:
        raise ValueError(f"rows must be one of {TILE_ROWS} or None, got {rows!r}")
    old, _force["rows"] = _force["rows"], rows
    return old


def _tc_rows(m):
    """Block tile rows (lsconv_tc_*_m<rows>) that waste the fewest of m rows; ties: larger."""
    if _force["rows"]:
        return _force["rows"]
    return min(TILE_ROWS, key=lambda bm: (-(-m // bm) * bm - m, -bm))


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
    _fwd_tc(x, w, b, g._qoff(s.c, s.h, s.w, s.kh, s.kw), y, s.dims(), s.k, bool(relu))
    g._check_written("lsconv_forward_tf32", y=y)
    return y


def _fwd_tc(x, w, b, qoff, y, dims, maps, relu):
    """lsconv_tc_fwd over x with the geometry dims (gpu._Ls.dims order), `maps` outputs."""
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
        self.ptrs, self.relu = (y, dy), bool(relu)

    def rows(self, n0, n1):
        return _DenseGrad(*(a[n0:n1] for a in self.ptrs), self.relu)


class _PooledGrad(_DenseGrad):
    """lsconv_pool's (2 x 2 windows): the pooled dy at each window's argmax,
    masked by the pooled y; the *_pooled kernels read it (grad_src.cuh)."""
    suffix = "_pooled"

    def __init__(self, yp, dyp, am, relu):
        self.ptrs, self.relu = (yp, dyp, am), bool(relu)

    def rows(self, n0, n1):
        return _PooledGrad(*(a[n0:n1] for a in self.ptrs), self.relu)


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
    return _backward(s, x, w, _DenseGrad(y, dy, relu), need_dx, dw, db, True,
                     "lsconv_backward_tf32")


def _backward(s, x, w, grad, need_dx, dw, db, tc, op):
    """dx (or None), dw +=, db += from grad: TF32 kernels (tc) or the fp32 ones
    of lsconv.cu, with gpu.lsconv_backward's choices of path, tile and split."""
    g = _g()
    dx = None
    if need_dx:
        dx = g._new(tuple(x.shape))
        padded = (s.oh + 2 * (s.kh - 1)) * (s.ow + 2 * (s.kw - 1))
        if s.r == 1 and padded <= 2 * s.h * s.w:
            _dx_one_region(s, w, grad, dx, tc)
        elif tc:
            _dx_regions_tc(s, w, grad, dx)
        else:
            _dx_gather(s, w, grad, dx)
    (_wgrad_tc if tc else _wgrad)(s, x, grad, dw, db)
    g._check_written(op, dx=dx, dw=dw, db=db)
    return dx, dw, db


def _dx_one_region(s, w, grad, dx, tc):
    """dx of a one-region layer: the forward over the zero-padded gradient with
    the flipped, transposed weights (as gpu._dx_as_forward_conv)."""
    g, cp = _g(), _g().cupy
    ph, pw = s.oh + 2 * (s.kh - 1), s.ow + 2 * (s.kw - 1)
    gp = g._new((s.n, s.k, ph, pw))
    g._launch("lsconv", "lsconv_pad_grad" + grad.suffix, (g._blocks(gp.size),), 256,
              (*grad.ptrs, gp, _i32(s.n), _i32(s.k), _i32(s.oh), _i32(s.ow), _i32(s.kh),
               _i32(s.kw), _i32(grad.relu)))
    wf = cp.ascontiguousarray(w[0, 0].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])[None, None]
    bias = cp.zeros((1, 1, s.c), dtype=_f32)
    dims = tuple(_i32(v) for v in (s.n, s.k, ph, pw, s.c, s.kh, s.kw, s.h, s.w))
    qoff = g._qoff(s.k, ph, pw, s.kh, s.kw)
    if tc:
        _fwd_tc(gp, wf, bias, qoff, dx, dims, s.c, False)
    else:
        col_tiles = -(-s.n * s.h * s.w // 64)
        g._launch("lsconv", "lsconv_fwd", (col_tiles, -(-s.c // 32)), 128,
                  (gp, wf, bias, qoff, dx, *dims, _i32(0), _i32(col_tiles)))


def _dx_gather(s, w, grad, dx):
    """fp32 dx by gathering each input's taps (gpu._dx_gather's kernels and tiles)."""
    g, cp = _g(), _g().cupy
    px = 2 if s.r == 1 else 1
    th, tw, nb, kc = g._dx_tile_for(s.h, s.w, s.kh, s.kw, s.k, px)
    if not kc:
        g._launch("lsconv", "lsconv_bwd_data_simple" + grad.suffix, (g._blocks(dx.size),), 256,
                  (*grad.ptrs, w, dx, *s.dims(), _i32(grad.relu)))
        return
    cp_ = -(-s.c // 8) * 8
    wt = cp.empty((s.r, s.k, s.kh, s.kw, cp_), dtype=_f32)
    g._launch("lsconv", "lsconv_wt_transpose", (g._blocks(wt.size),), 256,
              (w, wt, _i32(s.r), _i32(s.k), _i32(s.c), _i32(s.kh), _i32(s.kw), _i32(cp_)))
    tiles = -(-s.h // th) * -(-s.w // tw)
    threads = -(-nb * th * tw // px // 32) * 32
    smem = nb * kc * (th + s.kh - 1) * (tw + s.kw - 1 + px - 1) * 4
    kname = ("lsconv_bwd_data_px2" if px == 2 else "lsconv_bwd_data") + grad.suffix
    g._launch("lsconv", kname, (-(-s.n // nb) * tiles, cp_ // 8), threads,
              (*grad.ptrs, wt, dx, *s.dims(), _i32(grad.relu), _i32(cp_), _i32(kc), _i32(th),
               _i32(tw), _i32(nb)), shared_mem=smem)


def _wgrad(s, x, grad, dw, db):
    """fp32 dw, db += (gpu.lsconv_backward's tile and split, its kernels' _pooled twins)."""
    g = _g()
    bm, bn = g._wgrad_tile(s.k, s.q + 1)
    threads = (bm // 4) * (bn // (4 if bn == 64 else 8))
    _wgrad_launch(s, x, grad, dw, db, f"lsconv_bwd_w{grad.suffix}_{bm}_{bn}", "lsconv",
                  threads, -(-(s.q + 1) // bn), -(-s.k // bm))


def _wgrad_launch(s, x, grad, dw, db, kname, file, threads, q_tiles, k_tiles):
    """Column chunks as gpu.lsconv_backward splits them: per-chunk sums added in
    chunk order (deterministic) or atomics (fast)."""
    g = _g()
    splits = g._wgrad_splits(s, q_tiles, k_tiles)
    grid = (s.r * q_tiles, k_tiles, splits)
    head = (x, *grad.ptrs, g._qoff(s.c, s.h, s.w, s.kh, s.kw))
    tail = (*s.dims(), _i32(grad.relu), _i32(q_tiles), _i32(splits))
    if g.is_deterministic():
        part = g._new((splits, s.r, s.k, s.q + 1))
        g._launch(file, kname, grid, threads, (*head, part, dw, db, *tail, _i32(0)))
        g._launch("lsconv", "lsconv_bwd_w_reduce", (g._blocks(part.size // splits),), 256,
                  (part, dw, db, _i32(s.r), _i32(s.k), _i32(s.q), _i32(splits)))
    else:
        g._launch(file, kname, grid, threads, (*head, dw, dw, db, *tail, _i32(1)))


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
                   _i32(s.q), _i32(s.rh), _i32(s.rw), _i32(part.relu), _i32(col_tiles)))
        out = dx[n0:n1]
        g._launch("lsconv_tc", "lsconv_col2im", (g._blocks(out.size),), 256,
                  (dcol, out, _i32(n1 - n0), _i32(s.c), _i32(s.h), _i32(s.w), _i32(s.kh),
                   _i32(s.kw)))


def _wgrad_tc(s, x, grad, dw, db):
    """TF32 dw, db += (lsconv_tc_bwd_w*: 64 taps x _tc_rows maps per block)."""
    bm = _tc_rows(s.k)
    _wgrad_launch(s, x, grad, dw, db, f"lsconv_tc_bwd_w{grad.suffix}_m{bm}", "lsconv_tc", 128,
                  -(-(s.q + 1) // 64), -(-s.k // bm))


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


# ----------------------------------------------------------------------------
# lsconv + max-pool, fused
_cells_cache = {}


def _pool_cells(s):
    """int32 device table of lsconv_pool_fwd's cells, 8 ints each: rectangles
    {py0, npy, px0, npx} of 2 x 2 windows whose positions (0,0), (0,1), (1,0),
    (1,1) lie in the regions {r0, r1, r2, r3}; and the most windows of a cell."""
    cp = _g().cupy
    key = (s.oh, s.ow, s.rh, s.rw, cp.cuda.Device().id)
    if key not in _cells_cache:
        def runs(n_win, size):   # [(first window, windows, (region of 2w, of 2w + 1))]
            out = []
            for i in range(n_win):
                regs = ((2 * i) // size, (2 * i + 1) // size)
                if out and out[-1][2] == regs:
                    out[-1][1] += 1
                else:
                    out.append([i, 1, regs])
            return out
        rows, cols = runs(s.oh // 2, s.rh), runs(s.ow // 2, s.rw)
        table = [[py0, npy, px0, npx, *(ry * s.rx + rx for ry in rys for rx in rxs)]
                 for py0, npy, rys in rows for px0, npx, rxs in cols]
        most = max(r[1] * r[3] for r in table)
        if len(_cells_cache) > 64:
            _cells_cache.clear()
        _cells_cache[key] = (cp.asarray(np.array(table, dtype=np.int32)), most)
    return _cells_cache[key]


def _pool_shape(s, pool):
    """The pooled shape, or None where the fused kernels do not apply (a window
    other than 2 x 2, or a map smaller than it: gpu's composition then gives
    the result or the error)."""
    if int(pool) != 2 or s.oh < 2 or s.ow < 2:
        return None
    return (s.n, s.k, s.oh // 2, s.ow // 2)


def lsconv_pool_forward_fused(x, w, b, region, relu=True, s=2):
    """gpu.lsconv_pool_forward in one kernel, bit-identical: (y, argmax)."""
    g = _g()
    x, w, b = g._checked(x, "x"), g._checked(w, "w"), g._checked(b, "b")
    ls = g._Ls(x, w, region)
    g._expect_shape(b, "b", (ls.ry, ls.rx, ls.k), "RY x RX x K")
    pshape = _pool_shape(ls, s)
    if pshape is None:
        return g.lsconv_pool_forward(x, w, b, region, relu, s)
    y, am = g._new(pshape), g._new(pshape, np.int32)
    cells, most = _pool_cells(ls)
    col_tiles = -(-ls.n * most // 16)
    g._launch("lsconv_pool", "lsconv_pool_fwd", (len(cells) * col_tiles, -(-ls.k // 32)), 128,
              (x, w, b, g._qoff(ls.c, ls.h, ls.w, ls.kh, ls.kw), cells, y, am,
               *ls.dims()[:7], _i32(bool(relu)), _i32(col_tiles)))
    g._check_written("lsconv_pool_forward_fused", y=y, argmax=am)
    return y, am


def _pooled_backward(x, w, y, argmax, dy, region, relu, need_dx, dw, db, s, tc, op):
    g = _g()
    x, w, dy = g._checked(x, "x"), g._checked(w, "w"), g._checked(dy, "dy")
    ls = g._Ls(x, w, region)
    pshape = _pool_shape(ls, s)
    if pshape is None and not tc:
        return g.lsconv_pool_backward(x, w, y, argmax, dy, region, relu, need_dx, dw, db, s)
    if pshape is None:   # TF32 with other windows: gpu.lsconv_pool_backward's composition
        s = int(s)
        if s < 1 or s > ls.oh or s > ls.ow:
            raise ValueError(f"s: the {s}x{s} window does not fit the {ls.oh}x{ls.ow} output map")
        pshape = (ls.n, ls.k, ls.oh // s, ls.ow // s)
        g._expect_shape(dy, "dy", pshape, "N x K x OH/s x OW/s")
        if relu:
            y = g._checked(y, "y")
            g._expect_shape(y, "y", pshape, "N x K x OH/s x OW/s")
            dy = g.cupy.where(y > 0, dy, _f32(0))
        dconv = g.maxpool_backward(dy, argmax, (ls.oh, ls.ow), s)
        return lsconv_backward_tf32(x, w, None, dconv, region, False, need_dx, dw, db)
    g._expect_shape(dy, "dy", pshape, "N x K x OH/s x OW/s")
    if relu:
        y = g._checked(y, "y")
        g._expect_shape(y, "y", pshape, "N x K x OH/s x OW/s")
    am = g._checked(argmax, "argmax", np.int32)
    g._expect_shape(am, "argmax", pshape, "same as dy")
    if g._state["index_checks"]:   # before dw, db are touched, as maxpool_backward
        flags = g.cupy.zeros(1, dtype=np.int32)
        g._launch("lsconv_pool", "pool_argmax_check", (g._blocks(am.size),), 256,
                  (am, flags, np.int64(am.size), _i32(ls.ow), _i32(pshape[2]), _i32(pshape[3])))
        if int(flags.get()[0]):
            raise ValueError("argmax holds an index outside its window (maxpool_backward)")
    dw = g._out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = g._out_or_new(db, "db", (ls.ry, ls.rx, ls.k), "RY x RX x K")
    if tc:
        _need_tensor_cores()
    grad = _PooledGrad(y if relu else dy, dy, am, relu)
    return _backward(ls, x, w, grad, need_dx, dw, db, tc, op)


def lsconv_pool_backward_fused(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None,
                               db=None, s=2):
    """gpu.lsconv_pool_backward, reading the gradient through the argmax (no
    unpooled gradient in memory), bit-identical: (dx or None, dw, db)."""
    return _pooled_backward(x, w, y, argmax, dy, region, relu, need_dx, dw, db, s, False,
                            "lsconv_pool_backward_fused")


def lsconv_pool_backward_tf32(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None,
                              db=None, s=2):
    """lsconv_pool_backward_fused with TF32 products (other windows than 2 x 2:
    the composition, as gpu.lsconv_pool_backward, with the TF32 lsconv)."""
    return _pooled_backward(x, w, y, argmax, dy, region, relu, need_dx, dw, db, s, True,
                            "lsconv_pool_backward_tf32")


def lsconv_pool_forward(x, w, b, region, relu=True, s=2):
    """gpu.lsconv_pool_forward: the fused kernel (fp32), or the TF32 forward then
    gpu.maxpool_forward (tf32)."""
    if _state["precision"] == "tf32":
        return _g().maxpool_forward(lsconv_forward_tf32(x, w, b, region, relu), s)
    return lsconv_pool_forward_fused(x, w, b, region, relu, s)


def lsconv_pool_backward(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None, db=None,
                         s=2):
    """gpu.lsconv_pool_backward in the precision of set_precision(), through the argmax."""
    f = (lsconv_pool_backward_tf32 if _state["precision"] == "tf32"
         else lsconv_pool_backward_fused)
    return f(x, w, y, argmax, dy, region, relu, need_dx, dw, db, s)


# op -> {variant: launcher}, for the gpu backend's registry of variants. The
# "tf32" ones change the results within docs/ops.md's TF32 tolerance: only
# for precision "tf32" (TF32_VARIANTS); the others give gpu.py's bits.
VARIANTS = {
    "lsconv_forward": {"tf32": lsconv_forward_tf32},
    "lsconv_backward": {"tf32": lsconv_backward_tf32},
    "lsconv_pool_forward": {"fused": lsconv_pool_forward_fused},
    "lsconv_pool_backward": {"fused": lsconv_pool_backward_fused,
                             "tf32": lsconv_pool_backward_tf32},
}
TF32_VARIANTS = ("tf32",)
