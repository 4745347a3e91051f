"""The launchers of the gpu backend's kernel variants: for each op and
variant family (gpu_tiling.py), the kernels it runs with their grids, blocks,
shared memory and arguments.

LAUNCHERS[op][family](kit, shape, variant, *arrays...) runs one variant;
gpu.py checks the arguments, allocates the outputs and calls the launcher of
the chosen variant. ``kit`` is the backend's toolbox (gpu.KIT: its CuPy,
launch, new (a fresh output, poisoned in debug mode), blocks, check_written,
state), so a launcher, here or in another module
(gpu.register_variant), imports no CuPy and serves the real backend and the
tests' emulated one alike. The arrays each op passes:

  lsconv_fwd   (s: LsShape, v, x, w, b, y, relu)
  lsconv_dx    (s, v, w, grad, dx)                     grad: Grad (below)
  lsconv_dw    (s, v, x, grad, dw, db)                 dw += , db +=
  lsconv_pool_fwd (ps: LsPoolShape, v, x, w, b, relu)  -> (y, argmax)  (fused only:
  lsconv_pool_bwd                                      gpu.py runs the composition)
  maxpool_fwd  (g: GridShape, v, x, y, argmax, planes, h, w, s)
  maxpool_bwd  (g, v, dy, argmax, dx, flags, planes, h, w, s, oh, ow)
  dense_fwd    (d: DenseShape, v, X, w, b, y, relu)    -> None
  dense_bwd    (d, v, arrays, widths, w, y, dy, need_dx, dw, db, relu) -> dxs or None
  joint_loss   (ls: LossShape, v, args, params, lam, dlogits, dfeatures, dparams, out)
  sgd          (g, v, param, grad, velocity, lr, momentum, weight_decay)
"""

from collections import namedtuple

import numpy as np

from deepid2_core.backends.gpu_variants import dx_staging, wgrad_grid

_f32, _i32, _i64, _f64 = np.float32, np.int32, np.int64, np.float64
_PINFO = 10  # doubles per pair (kernels/loss.cu)


# ----------------------------------------------------------------------------
# lsconv
class Grad(namedtuple("Grad", "ptrs relu suffix")):
    """The gradient the backward kernels multiply (kernels/grad_src.cuh): dy
    masked where y <= 0 with relu, ptrs (y, dy), suffix ""; or lsconv_pool's,
    the pooled dy at each 2 x 2 window's argmax, ptrs (pooled y, pooled dy,
    argmax), suffix "_pooled" (the kernels' _pooled twins). relu: int32 0/1."""
    __slots__ = ()

    def rows(self, n0, n1):
        return Grad(tuple(a[n0:n1] for a in self.ptrs), self.relu, self.suffix)


_qoff_cache = {}


def tap_offsets(kit, c, h, w, kh, kw):
    """Offsets c*H*W + i*W + j of the taps q = (c, i, j), as int32 on the device."""
    key = (id(kit.cupy), kit.cupy.cuda.Device().id, c, h, w, kh, kw)
    q = _qoff_cache.get(key)
    if q is None:
        off = (np.arange(c, dtype=np.int64)[:, None, None] * h * w
               + np.arange(kh, dtype=np.int64)[None, :, None] * w
               + np.arange(kw, dtype=np.int64)[None, None, :]).ravel()
        if off.max() >= 2 ** 31:
            raise ValueError(f"x: one image of {c}x{h}x{w} is too large for the gpu backend")
        if len(_qoff_cache) > 64:
            _qoff_cache.clear()
        q = _qoff_cache[key] = kit.cupy.asarray(off.astype(np.int32))
    return q


def dims(s):
    """The int32 geometry arguments every lsconv kernel takes."""
    return tuple(_i32(v) for v in (s.n, s.c, s.h, s.w, s.k, s.kh, s.kw, s.rh, s.rw))


def fwd_tiled(kit, s, v, x, w, b, y, relu):
    col_tiles = -(-s.n * s.pmax // 64)
    kit.launch("lsconv", "lsconv_fwd", (s.r * col_tiles, -(-s.k // 32)), 128,
               (x, w, b, tap_offsets(kit, s.c, s.h, s.w, s.kh, s.kw), y, *dims(s),
                _i32(bool(relu)), _i32(col_tiles)))


def padded_as_forward(kit, s, w, grad):
    """dx of a layer with one region (an ordinary convolution) as a forward
    conv: (the zero-padded masked gradient, the flipped, transposed weights
    W'[c, k, i, j] = W[k, c, kh-1-i, kw-1-j], zero bias, its tap offsets, its
    dims), a GEMM-shaped problem (C x (N H W) x (K kh kw)) that the forward
    kernels tile well."""
    ph, pw = s.oh + 2 * (s.kh - 1), s.ow + 2 * (s.kw - 1)
    gp = kit.new((s.n, s.k, ph, pw))
    kit.launch("lsconv", "lsconv_pad_grad" + grad.suffix, (kit.blocks(gp.size),), 256,
               (*grad.ptrs, gp, _i32(s.n), _i32(s.k), _i32(s.oh), _i32(s.ow), _i32(s.kh),
                _i32(s.kw), grad.relu))
    wf = kit.cupy.ascontiguousarray(w[0, 0].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])[None, None]
    bias = kit.cupy.zeros((1, 1, s.c), dtype=_f32)
    dims_ = tuple(_i32(v) for v in (s.n, s.k, ph, pw, s.c, s.kh, s.kw, s.h, s.w))
    return gp, wf, bias, tap_offsets(kit, s.k, ph, pw, s.kh, s.kw), dims_


def dx_as_forward_conv(kit, s, v, w, grad, dx):
    """dx of a one-region layer: lsconv_fwd over padded_as_forward's problem."""
    gp, wf, bias, qoff, dims_ = padded_as_forward(kit, s, w, grad)
    col_tiles = -(-s.n * s.h * s.w // 64)
    kit.launch("lsconv", "lsconv_fwd", (col_tiles, -(-s.c // 32)), 128,
               (gp, wf, bias, qoff, dx, *dims_, _i32(0), _i32(col_tiles)))


def dx_simple(kit, s, v, w, grad, dx):
    """dx by the gather kernel without shared memory, one element per thread."""
    kit.launch("lsconv", "lsconv_bwd_data_simple" + grad.suffix, (kit.blocks(dx.size, v["b"]),),
               v["b"], (*grad.ptrs, w, dx, *dims(s), grad.relu))


def dx_staged(kit, s, v, w, grad, dx):
    """dx by gathering, for each input position, the taps that reach it, the
    masked gradient staged in shared memory: lsconv_bwd_data, or _px2 (two
    positions per thread, where one region covers the map)."""
    px = 2 if v.family == "px2" else 1
    (th, tw), nb, kc = v["t"], v["n"], v["k"]
    cp_ = -(-s.c // 8) * 8
    wt = kit.cupy.empty((s.r, s.k, s.kh, s.kw, cp_), dtype=_f32)
    kit.launch("lsconv", "lsconv_wt_transpose", (kit.blocks(wt.size),), 256,
               (w, wt, _i32(s.r), _i32(s.k), _i32(s.c), _i32(s.kh), _i32(s.kw), _i32(cp_)))
    tiles = -(-s.h // th) * -(-s.w // tw)
    threads, smem = dx_staging(s, v, px)
    kit.launch("lsconv", ("lsconv_bwd_data_px2" if px == 2 else "lsconv_bwd_data") + grad.suffix,
               (-(-s.n // nb) * tiles, cp_ // 8), threads,
               (*grad.ptrs, wt, dx, *dims(s), grad.relu, _i32(cp_), _i32(kc), _i32(th), _i32(tw),
                _i32(nb)), shared_mem=smem)


def dw_tiled(kit, s, v, x, grad, dw, db):
    """dw += and db += by the tiled kernel lsconv_bwd_w[_pooled]_<BM>_<BN>."""
    (bm, bn), splits = v["t"], v["s"]
    threads = (bm // 4) * (bn // (4 if bn == 64 else 8))
    dw_chunks(kit, s, x, grad, dw, db, ("lsconv", f"lsconv_bwd_w{grad.suffix}_{bm}_{bn}"),
              threads, wgrad_grid(s, (bm, bn)), splits)


def dw_chunks(kit, s, x, grad, dw, db, kernel, threads, tiles, splits):
    """A weight-gradient kernel (file, name) over `splits` column chunks:
    per-chunk sums reduced in chunk order (deterministic) or added by
    atomics (fast). tiles: (q_tiles, k_tiles)."""
    q_tiles, k_tiles = tiles
    grid = (s.r * q_tiles, k_tiles, splits)
    head = (x, *grad.ptrs, tap_offsets(kit, s.c, s.h, s.w, s.kh, s.kw))
    tail = (*dims(s), grad.relu, _i32(q_tiles), _i32(splits))
    if kit.state["deterministic"]:
        part = kit.new((splits, s.r, s.k, s.q + 1))
        kit.launch(*kernel, grid, threads, (*head, part, dw, db, *tail, _i32(0)))
        kit.check_written("lsconv_backward", workspace=part)
        kit.launch("lsconv", "lsconv_bwd_w_reduce", (kit.blocks(part.size // splits),), 256,
                   (part, dw, db, _i32(s.r), _i32(s.k), _i32(s.q), _i32(splits)))
    else:
        kit.launch(*kernel, grid, threads, (*head, dw, dw, db, *tail, _i32(1)))


# ----------------------------------------------------------------------------
# maxpool, dense, loss, sgd
def pool_fwd_grid(kit, g, v, x, y, am, planes, h, w, s):
    kit.launch("maxpool", "maxpool_fwd", (kit.blocks(g.total, v["b"]),), v["b"],
               (x, y, am, _i64(planes), _i32(h), _i32(w), _i32(s)))


def pool_bwd_grid(kit, g, v, dy, am, dx, flags, planes, h, w, s, oh, ow):
    kit.launch("maxpool", "maxpool_bwd", (kit.blocks(g.total, v["b"]),), v["b"],
               (dy, am, dx, flags, _i64(planes), _i32(h), _i32(w), _i32(s), _i32(oh), _i32(ow)))


def dense_fwd_cublas(kit, d, v, X, w, b, y, relu):
    kit.cupy.matmul(X, w, out=y)
    kit.launch("dense", "bias_act", (kit.blocks(y.size, v["b"]),), v["b"],
               (y, b, _i64(d.n), _i32(d.m), _i32(bool(relu))))


def dense_bwd_cublas(kit, dn, v, arrays, widths, w, y, dy, need_dx, dw, db, relu):
    n, m, b = dn.n, dn.m, v["b"]
    g = dy
    if relu:
        g = kit.new((n, m))
        kit.launch("dense", "relu_mask", (kit.blocks(g.size, b),), b, (y, dy, g, _i64(g.size)))
    dxs = None
    if need_dx:
        dxs, row = [], 0
        for a, d in zip(arrays, widths):
            dx = kit.new(a.shape)
            kit.cupy.matmul(g, w[row:row + d].T, out=dx.reshape(n, d))
            dxs.append(dx)
            row += d
    row = 0
    for a, d in zip(arrays, widths):
        dw[row:row + d] += kit.cupy.matmul(a.reshape(n, d).T, g)
        row += d
    kit.launch("dense", "colsum_add", (-(-m // b),), b, (g, db, _i32(n), _i32(m)))
    return dxs


def joint_rows(kit, ls, v, a, params, lam, dlogits, dfeat, dparams, out):
    n, nc, d, p = a.n, a.nc, a.d, a.p
    row_loss = kit.cupy.empty(n, dtype=_f64)
    row_correct = kit.cupy.empty(n, dtype=_i32)
    flags = kit.cupy.zeros(1, dtype=_i32)
    kit.launch("loss", "xent_rows", (n,), 256,
               (a.logits, a.labels, dlogits, row_loss, row_correct, flags, _i32(n), _i32(nc)))
    if p > 0:
        pinfo = kit.cupy.empty(p * _PINFO, dtype=_f64)
        scale = _f64(float(lam) / p)
        kit.launch("loss", "verif_pairs", (p,), 128,
                   (a.f, a.pa, a.pb, a.pyy, params, pinfo, flags, _i32(n), _i32(d), _i32(a.v),
                    scale))
        kit.launch("loss", "verif_dfeatures", (n,), 128,
                   (a.f, a.pa, a.pb, pinfo, dfeat, _i32(d), _i32(p), _i32(a.v)))
    else:
        pinfo = row_loss  # not read (dfeat: zeros already)
    kit.launch("loss", "joint_finalize", (1,), 256,
               (row_loss, row_correct, pinfo, flags, _i32(n), _i32(p), _i32(a.npar), lam, dparams,
                out))


def sgd_grid(kit, g, v, p, gr, vel, lr, momentum, weight_decay):
    kit.launch("sgd", "sgd_update", (kit.blocks(g.total, v["b"]),), v["b"],
               (p, gr, vel, _i64(g.total), _f32(lr), _f32(momentum), _f32(weight_decay)))


LAUNCHERS = {
    "lsconv_fwd": {"tiled": fwd_tiled},
    "lsconv_dw": {"tiled": dw_tiled},
    "lsconv_dx": {"fwdconv": dx_as_forward_conv, "simple": dx_simple, "staged": dx_staged,
                  "px2": dx_staged},
    "maxpool_fwd": {"grid": pool_fwd_grid},
    "maxpool_bwd": {"grid": pool_bwd_grid},
    "dense_fwd": {"cublas": dense_fwd_cublas},
    "dense_bwd": {"cublas": dense_bwd_cublas},
    "joint_loss": {"rows": joint_rows},
    "sgd": {"grid": sgd_grid},
}
