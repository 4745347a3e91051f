"""Launchers of the gpu backend's newer lsconv variants (issue 22), in
gpu_launchers.py's form (kit, shape, variant, *arrays); gpu.py looks an op's
family up in gpu_launchers.LAUNCHERS, then in LAUNCHERS here; gpu_variants.py
holds their families:

  op               family  kernels (kernels/*.cu)              results
  lsconv_fwd       tc      lsconv_tc_fwd_m<M>                  TF32 (docs/ops.md)
  lsconv_dx        tc      one region: lsconv_pad_grad +       TF32
                           lsconv_tc_fwd_m<M>; several:
                           lsconv_tc_dcol_m<M> + lsconv_col2im
  lsconv_dw        tc      lsconv_tc_bwd_w_m<M> (+ reduce)     TF32
  lsconv_pool_fwd  fused   lsconv_pool_fwd                     fp32, the composition's bits
  lsconv_pool_bwd  fused   gpu.py: the chosen lsconv_dx and    the composition's bits
                           lsconv_dw through the argmax        (TF32 at precision tf32)

The TF32 families run only at the backend's precision "tf32"
(gpu.set_precision) and need compute capability 8.0 or newer. Every
variant keeps gpu.set_deterministic: no atomics outside fast mode's weight
gradient, sums in fixed orders. No CuPy here (kit is the backend's).
"""

import numpy as np

from deepid2_core.backends.gpu_launchers import dims, dw_chunks, padded_as_forward, tap_offsets
from deepid2_core.backends.gpu_variants import dx_pads, tc_dw_grid

_i32, _i64, _f32 = np.int32, np.int64, np.float32
_DCOL_BYTES = 256 * 1024 * 1024      # largest input-gradient workspace; more images: chunks


def _need_tensor_cores(kit):
    cc = str(kit.cupy.cuda.Device().compute_capability)
    if int(cc) < 80:
        raise RuntimeError(f"the TF32 kernels need an NVIDIA GPU of compute capability 8.0 or "
                           f"newer (this one: {cc[:-1]}.{cc[-1]}); use precision 'fp32'")


def _fwd_tc(kit, bm, x, w, b, qoff, y, dims_, maps, relu):
    """lsconv_tc_fwd_m<bm> over x with the geometry dims_ (gpu_launchers.dims
    order), `maps` outputs."""
    n, c, h, wd, k, kh, kw, rh, rw = (int(v) for v in dims_)
    oh, ow = h - kh + 1, wd - kw + 1
    regions = -(-oh // rh) * -(-ow // rw)
    col_tiles = -(-n * min(rh, oh) * min(rw, ow) // 64)
    kit.launch("lsconv_tc", f"lsconv_tc_fwd_m{bm}", (regions * col_tiles, -(-maps // bm)), 128,
               (x, w, b, qoff, y, *dims_, _i32(relu), _i32(col_tiles)))


def fwd_tc(kit, s, v, x, w, b, y, relu):
    _need_tensor_cores(kit)
    _fwd_tc(kit, v["m"], x, w, b, tap_offsets(kit, s.c, s.h, s.w, s.kh, s.kw), y, dims(s), s.k,
            bool(relu))


def dx_tc(kit, s, v, w, grad, dx):
    """One region (where padding costs little): the TF32 forward over the
    padded gradient. Several: per region D = W_r^T G into an N x Q x OH x OW
    workspace, then each input's taps summed (lsconv_col2im), the batch in
    chunks that keep the workspace under _DCOL_BYTES."""
    _need_tensor_cores(kit)
    if dx_pads(s):
        gp, wf, bias, qoff, dims_ = padded_as_forward(kit, s, w, grad)
        _fwd_tc(kit, v["m"], gp, wf, bias, qoff, dx, dims_, s.c, False)
        return
    bm = v["m"]
    step = max(1, _DCOL_BYTES // (4 * s.q * s.oh * s.ow))
    for n0 in range(0, s.n, step):
        n1 = min(s.n, n0 + step)
        part, dcol = grad.rows(n0, n1), kit.new((n1 - n0, s.q, s.oh, s.ow))
        col_tiles = -(-(n1 - n0) * s.pmax // 64)
        kit.launch("lsconv_tc", f"lsconv_tc_dcol{grad.suffix}_m{bm}",
                   (s.r * col_tiles, -(-s.q // bm)), 128,
                   (*part.ptrs, w, dcol, _i32(n1 - n0), _i32(s.k), _i32(s.oh), _i32(s.ow),
                    _i32(s.q), _i32(s.rh), _i32(s.rw), part.relu, _i32(col_tiles)))
        out = dx[n0:n1]
        kit.launch("lsconv_tc", "lsconv_col2im", (kit.blocks(out.size),), 256,
                   (dcol, out, _i32(n1 - n0), _i32(s.c), _i32(s.h), _i32(s.w), _i32(s.kh),
                    _i32(s.kw)))


def dw_tc(kit, s, v, x, grad, dw, db):
    """dw, db += by lsconv_tc_bwd_w[_pooled]_m<M> (64 taps x M maps per block)."""
    _need_tensor_cores(kit)
    dw_chunks(kit, s, x, grad, dw, db, ("lsconv_tc", f"lsconv_tc_bwd_w{grad.suffix}_m{v['m']}"),
              128, tc_dw_grid(s, v["m"]), v["s"])


# ----------------------------------------------------------------------------
# lsconv + max-pool, fused
_cells_cache = {}


def _pool_cells(kit, s):
    """int32 device table of lsconv_pool_fwd's cells, 8 ints each: rectangles
    {py0, npy, px0, npx} of 2 x 2 windows whose positions (0,0), (0,1), (1,0),
    (1,1) lie in the regions {r0, r1, r2, r3}; and the most windows of a cell."""
    cp = kit.cupy
    key = (id(cp), cp.cuda.Device().id, s.oh, s.ow, s.rh, s.rw)
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


def pool_fwd_fused(kit, s, v, x, w, b, relu):
    """(y, argmax) of lsconv + bias + ReLU + 2 x 2 max-pool in one kernel: each
    output summed as lsconv_fwd sums it, pooled with maxpool_fwd's ties."""
    pshape = (s.n, s.k, s.oh // 2, s.ow // 2)
    y, am = kit.new(pshape), kit.new(pshape, np.int32)
    cells, most = _pool_cells(kit, s)
    col_tiles = -(-s.n * most // 16)
    kit.launch("lsconv_pool", "lsconv_pool_fwd", (len(cells) * col_tiles, -(-s.k // 32)), 128,
               (x, w, b, tap_offsets(kit, s.c, s.h, s.w, s.kh, s.kw), cells, y, am,
                *dims(s)[:7], _i32(bool(relu)), _i32(col_tiles)))
    return y, am


def argmax_in_windows(kit, s, am):
    """Whether every argmax of the 2 x 2 pooling lies in its window (one wait
    for the device), as maxpool_backward checks before it scatters."""
    flags = kit.cupy.zeros(1, dtype=np.int32)
    kit.launch("lsconv_pool", "pool_argmax_check", (kit.blocks(am.size),), 256,
               (am, flags, _i64(am.size), _i32(s.ow), _i32(am.shape[2]), _i32(am.shape[3])))
    return not int(flags.get()[0])


LAUNCHERS = {
    "lsconv_fwd": {"tc": fwd_tc},
    "lsconv_dx": {"tc": dx_tc},
    "lsconv_dw": {"tc": dw_tc},
    "lsconv_pool_fwd": {"fused": pool_fwd_fused},
}
