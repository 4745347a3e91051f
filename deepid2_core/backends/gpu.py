"""GPU backend: the CUDA kernels of kernels/*.cu through CuPy (NVRTC).

CuPy arrays in, CuPy arrays out; the same functions, signatures, meanings
and argument errors as the cpu backend (docs/ops.md): a wrong dtype raises
TypeError, a wrong shape / layout / value ValueError, naming the argument.
C-contiguous float32 (int32 for indices) device arrays are used in place,
never copied. Work is queued on CuPy's current stream; functions that return
Python numbers (joint_loss, regression_loss) and those that must check
indices on the device (maxpool_backward, assemble_batch) wait for it.

Get it with ``deepid2_core.backends.get_backend("gpu")``, which raises
BackendUnavailable (one line, no CuPy traceback) where CuPy or a usable GPU
is missing. The kernels are compiled on first use (NVRTC; CuPy caches the
binaries on disk) from the kernels/ folder of the source tree, or
$DEEPID2_KERNELS_DIR.

Modes (module-wide):
- ``set_deterministic(True)`` (the default; $DEEPID2_GPU_DETERMINISTIC=0
  starts in fast mode): every result is bit-identical from run to run on the
  same GPU and CuPy. The weight gradients of lsconv are summed per column
  chunk into a workspace and the chunks added in a fixed order. In fast mode
  the chunks atomicAdd into dw / db instead (one launch less, a little
  faster, and the last bits vary between runs).
- ``set_debug(True)`` ($DEEPID2_GPU_DEBUG=1): every output is filled with NaN
  (int outputs with INT32_MIN) before its kernel runs, the device is
  synchronised after every launch so a faulting kernel is named, and after
  each op the outputs are checked for left-over poison (RuntimeError naming
  the op and output: the kernel did not write every element). Slow; for tests.
- ``set_index_checks(False)``: maxpool_backward and assemble_batch stop
  waiting for the device to report bad indices (see the function).
- Dense layers use cuBLAS (cupy.matmul) in float32; leave $CUPY_TF32 unset
  (TF32 would cost about 3 decimal digits).
- CuPy compiles every kernel with -ftz=true: float32 denormals (|v| below
  1.2e-38) are flushed to zero, where the cpu backend keeps them. No op here
  depends on them at the network's scales.
- The kernel sources are read from the source tree: install with
  a wheel (``pip install .`` installs them as deepid2_core/kernels), or
  point $DEEPID2_KERNELS_DIR at a kernels/ folder.
"""

import functools
import os
from collections import namedtuple

import numpy as np

from deepid2_core.backends import BackendUnavailable, _kernel_src

try:
    import cupy
except Exception as _e:  # noqa: BLE001 - ImportError, or a broken CUDA install
    raise BackendUnavailable(
        f"the gpu backend needs CuPy and an NVIDIA GPU: importing cupy failed "
        f"({type(_e).__name__}: {_e}); install cupy-cuda13x (or -cuda12x) or use "
        f"backend='cpu'") from None

name = "gpu"
xp = cupy

JointLoss = namedtuple("JointLoss", "total ident verif correct dlogits dfeatures dparams")

_f32, _i32, _i64, _f64 = np.float32, np.int32, np.int64, np.float64
_INT_POISON = np.iinfo(np.int32).min

_state = {
    "deterministic": os.environ.get("DEEPID2_GPU_DETERMINISTIC", "1") != "0",
    "debug": os.environ.get("DEEPID2_GPU_DEBUG", "0") not in ("", "0"),
    "index_checks": True,
}


def set_deterministic(flag=True):
    """Deterministic (True, the default) or fast (False) reductions; returns the old mode."""
    old = _state["deterministic"]
    _state["deterministic"] = bool(flag)
    return old


def is_deterministic():
    return _state["deterministic"]


def set_debug(flag=True):
    """Poison outputs, synchronise after every launch, check outputs; returns the old mode."""
    old = _state["debug"]
    _state["debug"] = bool(flag)
    return old


def is_debug():
    return _state["debug"]


def set_index_checks(flag=True):
    """Whether maxpool_backward (argmax) and assemble_batch (device indices)
    read the device's index check back and raise ValueError (True, the
    default: one wait for the device per call). With False they never wait;
    a bad index is then ignored (that argmax's gradient is dropped, that
    image is zeros), never used to touch memory. Returns the old setting."""
    old = _state["index_checks"]
    _state["index_checks"] = bool(flag)
    return old


def max_threads():
    """For parity with the cpu backend: the gpu backend uses no OpenMP threads."""
    return 1


def to_device(a):
    """host numpy -> CuPy array on the current device (a copy; a CuPy array
    is returned as it is)."""
    return cupy.asarray(a)


def to_host(a):
    """CuPy array -> numpy (a copy; waits for the work that writes it)."""
    return cupy.asnumpy(a)


def keep_freed_memory():
    """For parity with the cpu backend: CuPy's memory pool already keeps
    freed device memory for the next step. Returns True."""
    return True


def synchronize():
    """Wait for the work queued on the current stream (RuntimeError naming
    the device error if a kernel failed)."""
    _sync("queued work")


# ----------------------------------------------------------------------------
# kernels
_modules = {}


def _kernel(file, kname):
    dev = cupy.cuda.Device().id
    mod = _modules.get((file, dev))
    if mod is None:
        mod = cupy.RawModule(code=_kernel_src.source(file),
                             options=_kernel_src.NVRTC_OPTIONS)
        _modules[(file, dev)] = mod
    return mod.get_function(kname)


def _sync(what):
    try:
        cupy.cuda.get_current_stream().synchronize()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError / CUDADriverError
        raise RuntimeError(f"gpu backend: {what} failed on the device: {e}") from None


def _launch(file, kname, grid, block, args, shared_mem=0):
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    block = (int(block), 1, 1)
    if min(grid) < 1:
        raise AssertionError(f"{kname}: empty grid {grid}")
    if grid[0] > 2 ** 31 - 1 or grid[1] > 65535 or grid[2] > 65535:
        raise ValueError(f"{kname}: the shapes are too large for the gpu backend "
                         f"(grid {grid})")
    fn = _kernel(file, kname)
    try:
        fn(grid, block, args, shared_mem=int(shared_mem))
    except Exception as e:  # noqa: BLE001 - launch errors come back synchronously
        raise RuntimeError(f"gpu backend: launching {kname} (grid {grid}, block {block}, "
                           f"{int(shared_mem)} B shared) failed: {type(e).__name__}: {e}") from None
    if _state["debug"]:
        _sync(f"kernel {kname}")


def _blocks(total, threads=256, cap=65536):
    """Blocks for a grid-stride loop over `total` items."""
    return max(1, min(cap, -(-int(total) // threads)))


# ----------------------------------------------------------------------------
# argument checks (the cpu backend's messages, bindings/module.cpp)
def _shape_str(s):
    s = tuple(int(v) for v in s)
    return "(" + ", ".join(str(v) for v in s) + ("," if len(s) == 1 else "") + ")"


def _checked(a, argname, dtype=_f32):
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{argname} must be a cupy.ndarray (the gpu backend takes device "
                        f"arrays), got {type(a).__module__}.{type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{argname} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{argname} must be C-contiguous (use cupy.ascontiguousarray)")
    dev = cupy.cuda.Device().id
    if a.device.id != dev:
        raise ValueError(f"{argname} is on GPU {a.device.id}, but the current device is GPU {dev}")
    return a


def _expect_ndim(a, argname, ndim, meaning):
    if a.ndim != ndim:
        raise ValueError(f"{argname} must have {ndim} dimensions ({meaning}), got shape "
                         f"{_shape_str(a.shape)}")
    if any(d < 1 for d in a.shape):
        raise ValueError(f"{argname}: every dimension of {meaning} must be positive, got shape "
                         f"{_shape_str(a.shape)}")


def _expect_shape(a, argname, want, meaning):
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{argname}: expected shape {_shape_str(want)} ({meaning}), got "
                         f"{_shape_str(a.shape)}")


def _int_pair(v, argname):
    try:
        a, b = v
        if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a pair of integers, got {v!r}") from None


def _new(shape, dtype=_f32):
    """A fresh output; poisoned in debug mode."""
    if _state["debug"]:
        fill = np.nan if np.dtype(dtype).kind == "f" else _INT_POISON
        return cupy.full(shape, fill, dtype=dtype)
    return cupy.empty(shape, dtype=dtype)


def _out_or_new(given, argname, shape, meaning):
    if given is None:
        return cupy.zeros(shape, dtype=_f32)
    a = _checked(given, argname)
    _expect_shape(a, argname, shape, meaning)
    return a


def _check_written(op, **outs):
    """Debug mode: no output element may still hold the poison."""
    if not _state["debug"]:
        return
    for oname, a in outs.items():
        if a is None:
            continue
        if a.dtype.kind == "f":
            bad = int(cupy.count_nonzero(cupy.isnan(a)))
        else:
            bad = int(cupy.count_nonzero(a == _INT_POISON))
        if bad:
            raise RuntimeError(f"gpu backend: {op} left {bad} of {a.size} elements of {oname} "
                               "unwritten (or NaN)")


# ----------------------------------------------------------------------------
# lsconv
_qoff_cache = {}


def _qoff(c, h, w, kh, kw):
    """Offsets c*H*W + i*W + j of the taps q = (c, i, j), as int32 on the device."""
    key = (c, h, w, kh, kw, cupy.cuda.Device().id)
    q = _qoff_cache.get(key)
    if q is None:
        off = (np.arange(c, dtype=np.int64)[:, None, None] * h * w
               + np.arange(kh, dtype=np.int64)[None, :, None] * w
               + np.arange(kw, dtype=np.int64)[None, None, :]).ravel()
        if off.max() >= 2 ** 31:
            raise ValueError(f"x: one image of {c}x{h}x{w} is too large for the gpu backend")
        if len(_qoff_cache) > 64:
            _qoff_cache.clear()
        q = _qoff_cache[key] = cupy.asarray(off.astype(np.int32))
    return q


class _Ls:
    """Geometry of one lsconv call (cpp/include/deepid2/ops.h, LsconvShape)."""

    def __init__(self, x, w, region):
        _expect_ndim(x, "x", 4, "N x C x H x W")
        _expect_ndim(w, "w", 6, "RY x RX x K x C x kh x kw")
        self.n, self.c, self.h, self.w = (int(v) for v in x.shape)
        self.k, self.kh, self.kw = int(w.shape[2]), int(w.shape[4]), int(w.shape[5])
        self.rh, self.rw = _int_pair(region, "region")
        if self.rh < 1 or self.rw < 1:
            raise ValueError("region must be two positive integers")
        if self.kh > self.h or self.kw > self.w:
            raise ValueError(f"w: kernel {self.kh}x{self.kw} (axes 4, 5) is larger than x's "
                             f"{self.h}x{self.w} map")
        self.oh, self.ow = self.h - self.kh + 1, self.w - self.kw + 1
        if self.rh > self.oh or self.rw > self.ow:
            raise ValueError(f"region {self.rh}x{self.rw} is larger than the {self.oh}x{self.ow} "
                             "output map")
        self.ry, self.rx = -(-self.oh // self.rh), -(-self.ow // self.rw)
        self.r = self.ry * self.rx
        self.q = self.c * self.kh * self.kw
        _expect_shape(w, "w", (self.ry, self.rx, self.k, self.c, self.kh, self.kw),
                      "RY x RX x K x C x kh x kw for this x and region")
        # columns of the largest (first) region
        self.pmax = min(self.rh, self.oh) * min(self.rw, self.ow)

    def dims(self):
        return tuple(_i32(v) for v in (self.n, self.c, self.h, self.w, self.k, self.kh,
                                       self.kw, self.rh, self.rw))

    @property
    def yshape(self):
        return (self.n, self.k, self.oh, self.ow)


def lsconv_forward(x, w, b, region, relu=True):
    """y = act(b + lsconv(x, w)); see docs/ops.md."""
    x, w, b = _checked(x, "x"), _checked(w, "w"), _checked(b, "b")
    s = _Ls(x, w, region)
    _expect_shape(b, "b", (s.ry, s.rx, s.k), "RY x RX x K")
    y = _new(s.yshape)
    col_tiles = -(-s.n * s.pmax // 64)
    _launch("lsconv", "lsconv_fwd", (s.r * col_tiles, -(-s.k // 32)), 128,
            (x, w, b, _qoff(s.c, s.h, s.w, s.kh, s.kw), y, *s.dims(), _i32(bool(relu)),
             _i32(col_tiles)))
    _check_written("lsconv_forward", y=y)
    return y


# Weight-gradient split: about this many blocks in all, each chunk at least
# _MIN_CHUNK columns. Depends on the shapes only, so results do not depend
# on the GPU model in deterministic mode.
_TARGET_BLOCKS = 1024
_MIN_CHUNK = 256
_SMEM_LIMIT = 40 * 1024


def _dx_as_forward_conv(s, w, y, dy, dx, relu_):
    """dx of a layer with one region (an ordinary convolution): the forward
    kernel over the zero-padded masked gradient with the flipped, transposed
    weights W'[c, k, i, j] = W[k, c, kh-1-i, kw-1-j], a GEMM-shaped problem
    (C x (N H W) x (K kh kw)) that lsconv_fwd tiles well."""
    ph, pw = s.oh + 2 * (s.kh - 1), s.ow + 2 * (s.kw - 1)
    gp = _new((s.n, s.k, ph, pw))
    _launch("lsconv", "lsconv_pad_grad", (_blocks(gp.size),), 256,
            (y, dy, gp, _i32(s.n), _i32(s.k), _i32(s.oh), _i32(s.ow), _i32(s.kh), _i32(s.kw),
             relu_))
    wf = cupy.ascontiguousarray(w[0, 0].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])[None, None]
    bias = cupy.zeros((1, 1, s.c), dtype=_f32)
    col_tiles = -(-s.n * s.h * s.w // 64)
    _launch("lsconv", "lsconv_fwd", (col_tiles, -(-s.c // 32)), 128,
            (gp, wf, bias, _qoff(s.k, ph, pw, s.kh, s.kw), dx, _i32(s.n), _i32(s.k), _i32(ph),
             _i32(pw), _i32(s.c), _i32(s.kh), _i32(s.kw), _i32(s.h), _i32(s.w), _i32(0),
             _i32(col_tiles)))


def _dx_gather(s, w, y, dy, dx, relu_):
    """dx by gathering, for each input position, the taps that reach it:
    lsconv_bwd_data (_px2, two positions per thread, where one region covers
    the map), or the simple kernel where no staged tile fits."""
    px = 2 if s.r == 1 else 1
    th, tw, nb, kc = _dx_tile_for(s.h, s.w, s.kh, s.kw, s.k, px)
    if not kc:
        _launch("lsconv", "lsconv_bwd_data_simple", (_blocks(dx.size),), 256,
                (y, dy, w, dx, *s.dims(), relu_))
        return
    cp_ = -(-s.c // 8) * 8
    wt = cupy.empty((s.r, s.k, s.kh, s.kw, cp_), dtype=_f32)
    _launch("lsconv", "lsconv_wt_transpose", (_blocks(wt.size),), 256,
            (w, wt, _i32(s.r), _i32(s.k), _i32(s.c), _i32(s.kh), _i32(s.kw), _i32(cp_)))
    tiles = -(-s.h // th) * -(-s.w // tw)
    threads = -(-nb * th * tw // px // 32) * 32
    smem = nb * kc * (th + s.kh - 1) * (tw + s.kw - 1 + px - 1) * 4
    _launch("lsconv", "lsconv_bwd_data_px2" if px == 2 else "lsconv_bwd_data",
            (-(-s.n // nb) * tiles, cp_ // 8), threads,
            (y, dy, wt, dx, *s.dims(), relu_, _i32(cp_), _i32(kc), _i32(th), _i32(tw),
             _i32(nb)), shared_mem=smem)


@functools.lru_cache(maxsize=256)
def _dx_tile_for(h, w, kh, kw, k, px):
    """(TH, TW, NB, KC) of lsconv_bwd_data (px = 1) / _px2 (px = 2, one region):
    a TH x TW tile of dx for NB images per block, one thread per px positions,
    KC maps staged at a time; KC = 0 when even one map does not fit in shared
    memory (then the simple kernel runs). Small maps take a whole map per
    image and several images per block; larger ones the tile of 64..256
    threads that leaves the fewest idle."""
    wp = -(-w // px) * px
    if h * wp // px <= 128:
        th, tw = h, wp
        nb = max(1, 256 // (th * tw // px))
    else:
        def idle(t):
            a, b = t
            return -(-h // a) * -(-w // b) * (-(-a * b // px // 32) * 32) * px - h * w, -a * b
        th, tw = min(((a, b) for a in range(1, h + 1) for b in range(px, wp + 1, px)
                      if 64 <= a * b // px <= 256), key=idle, default=(min(h, 8), min(wp, 32)))
        nb = 1
    stage = (th + kh - 1) * (tw + kw - 1 + px - 1) * 4
    kc = min(k, 16)
    while kc > 1 and nb * kc * stage > _SMEM_LIMIT:
        kc //= 2
    while nb > 1 and nb * kc * stage > _SMEM_LIMIT:
        nb //= 2
    return th, tw, nb, (kc if nb * kc * stage <= _SMEM_LIMIT else 0)


def _wgrad_tile(k, q1):
    """(maps, taps) of the weight-gradient tile (kernels lsconv_bwd_w_<BM>_<BN>)
    that wastes the least of the K x (Q + 1) gradient; ties go to the larger tile."""
    def waste(t):
        bm, bn = t
        return (-(-k // bm) * bm) * (-(-q1 // bn) * bn) - k * q1, -bm * bn
    return min(((bm, bn) for bm in (20, 40, 60) for bn in (64, 128)), key=waste)


def _wgrad_splits(s, q_tiles, k_tiles):
    tiles = s.r * q_tiles * k_tiles
    return max(1, min(-(-_TARGET_BLOCKS // tiles), (s.n * s.pmax) // _MIN_CHUNK, 65535))


def lsconv_backward(x, w, y, dy, region, relu=True, need_dx=True, dw=None, db=None):
    """(dx or None, dw, db) with dw += and db += ; see docs/ops.md."""
    x, w, dy = _checked(x, "x"), _checked(w, "w"), _checked(dy, "dy")
    s = _Ls(x, w, region)
    _expect_shape(dy, "dy", s.yshape, "N x K x OH x OW")
    if relu:
        y = _checked(y, "y")
        _expect_shape(y, "y", s.yshape, "N x K x OH x OW")
    else:
        y = dy  # not read
    dw = _out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = _out_or_new(db, "db", (s.ry, s.rx, s.k), "RY x RX x K")
    relu_ = _i32(bool(relu))

    dx = None
    if need_dx:
        dx = _new(tuple(x.shape))
        padded = (s.oh + 2 * (s.kh - 1)) * (s.ow + 2 * (s.kw - 1))
        if s.r == 1 and padded <= 2 * s.h * s.w:   # (padding a big kernel would cost more)
            _dx_as_forward_conv(s, w, y, dy, dx, relu_)
        else:
            _dx_gather(s, w, y, dy, dx, relu_)

    bm, bn = _wgrad_tile(s.k, s.q + 1)
    kname = f"lsconv_bwd_w_{bm}_{bn}"
    threads = (bm // 4) * (bn // (4 if bn == 64 else 8))
    q_tiles, k_tiles = -(-(s.q + 1) // bn), -(-s.k // bm)
    splits = _wgrad_splits(s, q_tiles, k_tiles)
    qoff = _qoff(s.c, s.h, s.w, s.kh, s.kw)
    grid = (s.r * q_tiles, k_tiles, splits)
    if _state["deterministic"]:
        part = _new((splits, s.r, s.k, s.q + 1))
        _launch("lsconv", kname, grid, threads,
                (x, y, dy, qoff, part, dw, db, *s.dims(), relu_, _i32(q_tiles), _i32(splits),
                 _i32(0)))
        _check_written("lsconv_backward", workspace=part)
        _launch("lsconv", "lsconv_bwd_w_reduce", (_blocks(part.size // splits),), 256,
                (part, dw, db, _i32(s.r), _i32(s.k), _i32(s.q), _i32(splits)))
    else:
        _launch("lsconv", kname, grid, threads,
                (x, y, dy, qoff, dw, dw, db, *s.dims(), relu_, _i32(q_tiles), _i32(splits),
                 _i32(1)))
    _check_written("lsconv_backward", dx=dx, dw=dw, db=db)
    return dx, dw, db


# ----------------------------------------------------------------------------
# maxpool
def maxpool_forward(x, s=2):
    """(y, argmax int32); see docs/ops.md."""
    x = _checked(x, "x")
    _expect_ndim(x, "x", 4, "N x C x H x W")
    s = int(s)
    if s < 1:
        raise ValueError(f"s must be a positive integer, got {s}")
    n, c, h, w = (int(v) for v in x.shape)
    if s > h or s > w:
        raise ValueError(f"x: the {s}x{s} window is larger than the {h}x{w} map")
    oh, ow = h // s, w // s
    y, am = _new((n, c, oh, ow)), _new((n, c, oh, ow), _i32)
    _launch("maxpool", "maxpool_fwd", (_blocks(y.size),), 256,
            (x, y, am, _i64(n * c), _i32(h), _i32(w), _i32(s)))
    _check_written("maxpool_forward", y=y, argmax=am)
    return y, am


def maxpool_backward(dy, argmax, in_hw, s=None):
    """dx: dy scattered to the argmax positions, 0 elsewhere; see docs/ops.md."""
    dy = _checked(dy, "dy")
    am = _checked(argmax, "argmax", _i32)
    _expect_ndim(dy, "dy", 4, "N x C x OH x OW")
    h, w = _int_pair(in_hw, "in_hw")
    if h < 1 or w < 1:
        raise ValueError("in_hw must be two positive integers")
    n, c, oh, ow = (int(v) for v in dy.shape)
    s = h // oh if s is None else int(s)
    if s < 1:
        raise ValueError(f"dy: its {oh}x{ow} map is larger than in_hw = ({h}, {w})")
    if h // s != oh or w // s != ow:
        raise ValueError(f"dy: shape {_shape_str(dy.shape)} is not a {s}x{s} pooling of an "
                         f"input of size in_hw = ({h}, {w})")
    _expect_shape(am, "argmax", tuple(dy.shape), "same as dy")
    dx = _new((n, c, h, w))
    flags = cupy.zeros(1, dtype=_i32)
    _launch("maxpool", "maxpool_bwd", (_blocks(dx.size),), 256,
            (dy, am, dx, flags, _i64(n * c), _i32(h), _i32(w), _i32(s), _i32(oh), _i32(ow)))
    if _state["index_checks"] and int(flags.get()[0]):
        raise ValueError("argmax holds an index outside its window (maxpool_backward)")
    _check_written("maxpool_backward", dx=dx)
    return dx


# ----------------------------------------------------------------------------
# lsconv + maxpool: one op on the cpu backend; composed of the two here
def lsconv_pool_forward(x, w, b, region, relu=True, s=2):
    """(y, argmax) of maxpool_forward(lsconv_forward(x, w, b, region, relu), s)."""
    return maxpool_forward(lsconv_forward(x, w, b, region, relu), s)


def lsconv_pool_backward(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None, db=None,
                         s=2):
    """The backward of lsconv_pool_forward from the pooled gradient dy; see docs/ops.md."""
    x, w, dy = _checked(x, "x"), _checked(w, "w"), _checked(dy, "dy")
    ls = _Ls(x, w, region)
    s = int(s)
    if s < 1 or s > ls.oh or s > ls.ow:
        raise ValueError(f"s: the {s}x{s} window does not fit the {ls.oh}x{ls.ow} output map")
    pshape = (ls.n, ls.k, ls.oh // s, ls.ow // s)
    _expect_shape(dy, "dy", pshape, "N x K x OH/s x OW/s")
    if relu:  # the unpooled output's ReLU mask, where the scatter puts anything
        y = _checked(y, "y")
        _expect_shape(y, "y", pshape, "N x K x OH/s x OW/s")
        dy = cupy.where(y > 0, dy, _f32(0))
    dconv = maxpool_backward(dy, argmax, (ls.oh, ls.ow), s)
    return lsconv_backward(x, w, None, dconv, region, relu=False, need_dx=need_dx, dw=dw, db=db)


# ----------------------------------------------------------------------------
# dense: cuBLAS through cupy.matmul, small kernels around it
def _dense_inputs(xs):
    if isinstance(xs, cupy.ndarray):
        items = [xs]
    elif isinstance(xs, (list, tuple)):
        items = list(xs)
    else:
        raise TypeError("xs must be a cupy array or a list of cupy arrays")
    if not items:
        raise ValueError("xs must hold at least one array")
    arrays, dims, n = [], [], None
    for i, a in enumerate(items):
        nm = f"xs[{i}]"
        a = _checked(a, nm)
        if a.ndim < 2:
            raise ValueError(f"{nm} must be N x ... (at least 2 dimensions), got shape "
                             f"{_shape_str(a.shape)}")
        if a.size == 0:
            raise ValueError(f"{nm} must not be empty, got shape {_shape_str(a.shape)}")
        if n is None:
            n = int(a.shape[0])
        if a.shape[0] != n:
            raise ValueError(f"{nm} has {a.shape[0]} rows, xs[0] has {n}")
        arrays.append(a)
        dims.append(a.size // n)
    return arrays, dims, n


def _dense_w(w, total):
    w = _checked(w, "w")
    _expect_ndim(w, "w", 2, "sum(d_i) x M")
    m = int(w.shape[1])
    _expect_shape(w, "w", (total, m), "sum(d_i) x M")
    return w, m


def dense_forward(xs, w, b, relu=True):
    """y = act(concat(xs) @ w + b); see docs/ops.md."""
    arrays, dims, n = _dense_inputs(xs)
    w, m = _dense_w(w, sum(dims))
    b = _checked(b, "b")
    _expect_shape(b, "b", (m,), "M")
    if len(arrays) == 1:
        X = arrays[0].reshape(n, dims[0])
    else:
        X = cupy.concatenate([a.reshape(n, d) for a, d in zip(arrays, dims)], axis=1)
    y = _new((n, m))
    cupy.matmul(X, w, out=y)
    _launch("dense", "bias_act", (_blocks(y.size),), 256,
            (y, b, _i64(n), _i32(m), _i32(bool(relu))))
    _check_written("dense_forward", y=y)
    return y


def dense_backward(xs, w, y, dy, relu=True, need_dx=True, dw=None, db=None):
    """(list of dx or None, dw, db) with dw += and db += ; see docs/ops.md."""
    arrays, dims, n = _dense_inputs(xs)
    w, m = _dense_w(w, sum(dims))
    dy = _checked(dy, "dy")
    _expect_shape(dy, "dy", (n, m), "N x M")
    if relu:
        y = _checked(y, "y")
        _expect_shape(y, "y", (n, m), "N x M")
    dw = _out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = _out_or_new(db, "db", (m,), "M")
    g = dy
    if relu:
        g = _new((n, m))
        _launch("dense", "relu_mask", (_blocks(g.size),), 256, (y, dy, g, _i64(g.size)))
    dxs = None
    if need_dx:
        dxs, row = [], 0
        for a, d in zip(arrays, dims):
            dx = _new(a.shape)
            cupy.matmul(g, w[row:row + d].T, out=dx.reshape(n, d))
            dxs.append(dx)
            row += d
    row = 0
    for a, d in zip(arrays, dims):
        dw[row:row + d] += cupy.matmul(a.reshape(n, d).T, g)
        row += d
    _launch("dense", "colsum_add", (-(-m // 256),), 256, (g, db, _i32(n), _i32(m)))
    if _state["debug"]:
        _sync("dense_backward")
        _check_written("dense_backward", dw=dw, db=db,
                       **{f"dxs[{i}]": a for i, a in enumerate(dxs or [])})
    return dxs, dw, db


# ----------------------------------------------------------------------------
# losses
_VARIANTS = {"l2": 0, "l2_pos": 1, "l1": 2, "cosine": 3}
_PINFO = 10  # doubles per pair (kernels/loss.cu)


def _parse_variant(variant):
    if not isinstance(variant, str) or variant not in _VARIANTS:
        raise ValueError(f"variant must be one of 'l2', 'l2_pos', 'l1', 'cosine', got '{variant}'")
    return _VARIANTS[variant]


def joint_loss(logits, labels, features, pair_a, pair_b, pair_y, variant="l2", lam=0.05,
               params=None):
    """ident + lam * verif and its gradients (JointLoss); see docs/ops.md.

    Waits for the device (the losses come back as Python floats)."""
    v = _parse_variant(variant)
    logits = _checked(logits, "logits")
    labels = _checked(labels, "labels", _i32)
    f = _checked(features, "features")
    pa, pb = _checked(pair_a, "pair_a", _i32), _checked(pair_b, "pair_b", _i32)
    pyy = _checked(pair_y, "pair_y", _i32)
    _expect_ndim(logits, "logits", 2, "N x n_classes")
    n, nc = (int(d) for d in logits.shape)
    _expect_shape(labels, "labels", (n,), "N")
    _expect_ndim(f, "features", 2, "N x D")
    d = int(f.shape[1])
    _expect_shape(f, "features", (n, d), "N x D")
    if pa.ndim != 1:
        raise ValueError(f"pair_a must have 1 dimension (P), got shape {_shape_str(pa.shape)}")
    p = int(pa.shape[0])
    _expect_shape(pb, "pair_b", (p,), "P, same as pair_a")
    _expect_shape(pyy, "pair_y", (p,), "P, same as pair_a")
    npar = 2 if v == 3 else 1
    if params is None:
        params = cupy.asarray(np.array([1.0, 0.0][:npar], dtype=_f32))
    else:
        params = _checked(params, "params")
        _expect_shape(params, "params", (npar,), "[w, b] for cosine" if npar == 2 else "[m]")
    lam = _f32(lam)

    dlogits = _new((n, nc))
    row_loss = cupy.empty(n, dtype=_f64)
    row_correct = cupy.empty(n, dtype=_i32)
    flags = cupy.zeros(1, dtype=_i32)
    _launch("loss", "xent_rows", (n,), 256,
            (logits, labels, dlogits, row_loss, row_correct, flags, _i32(n), _i32(nc)))
    if p > 0:
        pinfo = cupy.empty(p * _PINFO, dtype=_f64)
        scale = _f64(float(lam) / p)
        _launch("loss", "verif_pairs", (p,), 128,
                (f, pa, pb, pyy, params, pinfo, flags, _i32(n), _i32(d), _i32(v), scale))
        dfeat = _new((n, d))
        _launch("loss", "verif_dfeatures", (n,), 128,
                (f, pa, pb, pinfo, dfeat, _i32(d), _i32(p), _i32(v)))
    else:
        pinfo = row_loss  # not read
        dfeat = cupy.zeros((n, d), dtype=_f32)
    dparams = _new((npar,))
    out = cupy.empty(5, dtype=_f64)
    _launch("loss", "joint_finalize", (1,), 256,
            (row_loss, row_correct, pinfo, flags, _i32(n), _i32(p), _i32(npar), lam, dparams,
             out))
    total, ident, verif, correct, bad = (float(t) for t in out.get())
    if bad:
        _joint_index_error(int(bad), labels, pa, pb, pyy, n, nc)
    _check_written("joint_loss", dlogits=dlogits, dfeatures=dfeat, dparams=dparams)
    return JointLoss(total, ident, verif, int(correct), dlogits, dfeat, dparams)


def _joint_index_error(flags, labels, pa, pb, pyy, n, nc):
    """The cpu backend's message for the first bad entry (checked in its order)."""
    if flags & 1:
        lab = labels.get()
        i = int(np.flatnonzero((lab < 0) | (lab >= nc))[0])
        raise ValueError(f"joint_loss: labels[{i}] = {int(lab[i])} is outside [0, {nc})")
    a, b, y = pa.get(), pb.get(), pyy.get()
    bad_i = (a < 0) | (a >= n) | (b < 0) | (b >= n)
    bad_y = (y != 1) & (y != -1)
    first = int(np.flatnonzero(bad_i | bad_y)[0])
    if bad_i[first]:
        raise ValueError(f"joint_loss: pair_a/pair_b[{first}] is outside [0, {n})")
    raise ValueError(f"joint_loss: pair_y[{first}] must be +1 or -1")


def regression_loss(pred, target):
    """(loss, dpred): mean over rows of 1/2 ||pred - target||^2; waits for the device."""
    pred, target = _checked(pred, "pred"), _checked(target, "target")
    _expect_ndim(pred, "pred", 2, "N x D")
    _expect_shape(target, "target", tuple(pred.shape), "same as pred")
    n, d = (int(v) for v in pred.shape)
    dpred = _new((n, d))
    row = cupy.empty(n, dtype=_f64)
    _launch("loss", "regression_rows", (n,), 128, (pred, target, dpred, row, _i32(n), _i32(d)))
    out = cupy.empty(1, dtype=_f64)
    _launch("loss", "sum_double", (1,), 256, (row, _i32(n), out))
    loss = 0.5 * float(out.get()[0]) / n
    _check_written("regression_loss", dpred=dpred)
    return loss, dpred


# ----------------------------------------------------------------------------
def sgd_update(param, grad, velocity, lr, momentum=0.9, weight_decay=0.0):
    """In place: v = momentum * v - lr * (g + weight_decay * p); p += v."""
    p, v = _checked(param, "param"), _checked(velocity, "velocity")
    g = _checked(grad, "grad")
    _expect_shape(g, "grad", tuple(p.shape), "same as param")
    _expect_shape(v, "velocity", tuple(p.shape), "same as param")
    if p.size == 0:
        return None
    _launch("sgd", "sgd_update", (_blocks(p.size),), 256,
            (p, g, v, _i64(p.size), _f32(lr), _f32(momentum), _f32(weight_decay)))
    return None


# ----------------------------------------------------------------------------
def assemble_batch(patches, indices, flip=None, out=None, mean=127.5, scale=1 / 128.0):
    """patches[indices] (uint8 N x H x W x C on the device) -> float32 B x C x H x W,
    mirrored left-right where flip[b], values (v - mean) * scale in float32:
    bit-identical to the cpu backend's assemble_batch. `indices` and `flip` may
    be numpy or CuPy arrays. Waits for the device when indices is a CuPy array
    (its range is checked there)."""
    if not (isinstance(patches, cupy.ndarray) and patches.dtype == np.uint8
            and patches.ndim == 4):
        raise ValueError("patches must be a cupy uint8 array N x H x W x C (on the device)")
    if not patches.flags.c_contiguous:
        raise ValueError("patches must be C-contiguous (use cupy.ascontiguousarray)")
    n, h, w, c = (int(v) for v in patches.shape)
    if isinstance(indices, cupy.ndarray):
        if indices.size and indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        idx = cupy.ascontiguousarray(indices, dtype=_i64)
    else:
        idx_np = np.asarray(indices)
        if idx_np.size and idx_np.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {idx_np.dtype}")
        idx_np = np.ascontiguousarray(idx_np, dtype=np.int64)
        if idx_np.ndim == 1 and len(idx_np) and (idx_np.min() < 0 or idx_np.max() >= n):
            raise ValueError(f"indices must be in 0..{n - 1}")
        idx = cupy.asarray(idx_np)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
    bsz = int(idx.shape[0])
    if flip is None:
        fl = cupy.zeros(bsz, dtype=np.uint8)
    else:
        fl = cupy.asarray(flip)
        if fl.shape != (bsz,):
            raise ValueError(f"flip must be a bool array of length {bsz}, got shape "
                             f"{tuple(fl.shape)}")
        fl = cupy.ascontiguousarray(fl != 0, dtype=np.uint8)
    shape = (bsz, c, h, w)
    if out is None:
        out = _new(shape)
    elif not (isinstance(out, cupy.ndarray) and out.dtype == np.float32
              and tuple(out.shape) == shape and out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous cupy float32 array of shape {shape}")
    if bsz == 0:
        return out
    flags = cupy.zeros(1, dtype=_i32)
    _launch("assemble", "assemble_batch", (_blocks(out.size),), 256,
            (patches, idx, fl, out, _i32(bsz), _i32(h), _i32(w), _i32(c), _i64(n),
             _f32(mean), _f32(scale), flags))
    if isinstance(indices, cupy.ndarray) and _state["index_checks"] and int(flags.get()[0]):
        raise ValueError(f"indices must be in 0..{n - 1}")
    _check_written("assemble_batch", out=out)
    return out


# ----------------------------------------------------------------------------
def probe():
    """Compile and run the smallest kernel once: raises BackendUnavailable when
    the GPU, the driver, NVRTC or the kernel sources cannot be used."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError: no driver / no device
        raise BackendUnavailable(
            f"the gpu backend found no usable NVIDIA GPU ({type(e).__name__}: {e}); "
            "use backend='cpu'") from None
    if count < 1:
        raise BackendUnavailable("the gpu backend found no NVIDIA GPU; use backend='cpu'")
    try:
        p = cupy.full(4, 1.0, dtype=_f32)
        g = cupy.full(4, 2.0, dtype=_f32)
        v = cupy.zeros(4, dtype=_f32)
        sgd_update(p, g, v, 0.5, 0.0, 0.0)
        got = p.get()
    except FileNotFoundError as e:
        raise BackendUnavailable(str(e)) from None
    except Exception as e:  # noqa: BLE001 - CompileException, CUDA errors, ...
        msg = str(e).strip().splitlines()
        raise BackendUnavailable(
            f"the gpu backend could not compile or run its kernels on this GPU "
            f"({type(e).__name__}: {msg[0] if msg else ''}); use backend='cpu'") from None
    if not np.all(got == 0.0):
        raise BackendUnavailable(f"the gpu backend's self-test gave {got}, expected zeros")
    return True


__all__ = [
    "name", "xp", "JointLoss", "lsconv_forward", "lsconv_backward", "lsconv_pool_forward",
    "lsconv_pool_backward", "maxpool_forward", "maxpool_backward", "dense_forward",
    "dense_backward", "joint_loss", "regression_loss", "sgd_update", "assemble_batch",
    "to_device", "to_host", "keep_freed_memory", "synchronize", "set_deterministic",
    "is_deterministic", "set_debug", "is_debug", "set_index_checks", "max_threads", "probe",
]
