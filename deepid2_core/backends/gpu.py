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

Modes (module-wide; docs/ops.md):
- ``set_deterministic(True)`` (the default; $DEEPID2_GPU_DETERMINISTIC=0
  starts in fast mode): every result is bit-identical from run to run on the
  same GPU and CuPy (lsconv's weight gradients summed per column chunk, the
  chunks added in a fixed order; fast mode: atomics, the last bits vary).
- ``set_debug(True)`` ($DEEPID2_GPU_DEBUG=1): outputs poisoned (NaN,
  INT32_MIN) before their kernels, a sync after every launch, and the
  outputs checked for left-over poison (RuntimeError naming op and output).
- ``set_index_checks(False)``: maxpool_backward and assemble_batch stop
  waiting for the device to report bad indices (see the function).
- ``set_precision("tf32")`` ($DEEPID2_GPU_PRECISION): lsconv on the TF32
  tensor cores (gpu_tc.py), within docs/ops.md's TF32 tolerance; "fp32",
  the default, keeps every result as before. Dense layers use cuBLAS in
  float32 either way (leave $CUPY_TF32 unset).
- CuPy compiles with -ftz=true: float32 denormals are flushed to zero.
- Kernel variants: gpu_tiling.py chooses one per op and shape (forced in
  code or by $DEEPID2_GPU_TILING, else the tuning file of bench/kernels/,
  else the heuristics); gpu_launchers.py and gpu_tc.py launch them. With no
  tuning file the choice depends on the shapes and precision only.
- Argument checks: gpu_checks.py. The kernel sources come from the source
  tree (a wheel installs them as deepid2_core/kernels) or $DEEPID2_KERNELS_DIR.
"""

import os
from collections import namedtuple

import numpy as np

from deepid2_core.backends import BackendUnavailable
from deepid2_core.backends import gpu_checks as chk
from deepid2_core.backends import gpu_step, gpu_tc
from deepid2_core.backends import gpu_tiling as tiling
from deepid2_core.backends.gpu_kit import Kit
from deepid2_core.backends.gpu_launchers import LAUNCHERS, Grad
from deepid2_core.backends.gpu_variants import DenseShape, GridShape, LossShape, LsPoolShape

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

_state = {
    "deterministic": os.environ.get("DEEPID2_GPU_DETERMINISTIC", "1") != "0",
    "debug": os.environ.get("DEEPID2_GPU_DEBUG", "0") not in ("", "0"),
    "index_checks": True,
    "precision": os.environ.get("DEEPID2_GPU_PRECISION", "fp32").strip().lower() or "fp32",
}
if _state["precision"] not in tiling.PRECISIONS:
    raise ValueError(f"DEEPID2_GPU_PRECISION={_state['precision']!r}: one of "
                     f"{', '.join(tiling.PRECISIONS)}")


def set_precision(precision):
    """"fp32" (the default; $DEEPID2_GPU_PRECISION) or "tf32": whether the
    TF32 tensor-core variants may run, and are the default choice (lsconv's
    forward and gradients; docs/ops.md, "TF32"). Returns the old one."""
    if precision not in tiling.PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
    old, _state["precision"] = _state["precision"], precision
    return old


def get_precision():
    return _state["precision"]


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
    KIT.sync("queued work")


# ----------------------------------------------------------------------------
# the toolbox (gpu_kit.py: kernels, launches, outputs) that the variants'
# launchers (gpu_launchers.py, gpu_tc.py) get; the variant choice: gpu_tiling.py
KIT = Kit(cupy, _state)
_checked, _new, _out_or_new, _blocks = KIT.checked, KIT.new, KIT.out_or_new, KIT.blocks


def card_name():
    """The current GPU's name, as the tuning file keys its picks ("" if unknown)."""
    return KIT.card_name()


def _choose(op, shape):
    return tiling.choose(op, shape, card_name(), _state["precision"]).variant


def _run(op, shape, *args):
    """Run the chosen variant of `op` for `shape` (gpu_tiling.choose)."""
    v = _choose(op, shape)
    fn = LAUNCHERS.get(op, {}).get(v.family) or gpu_tc.LAUNCHERS.get(op, {}).get(v.family)
    if fn is None:
        raise RuntimeError(f"gpu backend: {op} variant {v.name} has no launcher here "
                           "(register_variant)")
    return fn(KIT, shape, v, *args)


def register_variant(op, family, launcher, keys=(), candidates=None, valid=None,
                     precision="fp32"):
    """Add a kernel variant: LAUNCHERS[op][family] = launcher, and the family
    in gpu_tiling (its parameters: keys, candidates, valid; see there)."""
    tiling.register(op, family, keys, candidates, valid, precision)
    LAUNCHERS.setdefault(op, {})[family] = launcher


# ----------------------------------------------------------------------------
# lsconv
def lsconv_forward(x, w, b, region, relu=True):
    """y = act(b + lsconv(x, w)); see docs/ops.md."""
    x, w, b = _checked(x, "x"), _checked(w, "w"), _checked(b, "b")
    s = chk.lsconv_shape(x, w, region)
    chk.expect_shape(b, "b", (s.ry, s.rx, s.k), "RY x RX x K")
    y = _new(chk.ls_yshape(s))
    _run("lsconv_fwd", s, x, w, b, y, relu)
    KIT.check_written("lsconv_forward", y=y)
    return y


def lsconv_backward(x, w, y, dy, region, relu=True, need_dx=True, dw=None, db=None):
    """(dx or None, dw, db) with dw += and db += ; see docs/ops.md."""
    x, w, y, dy, s = chk.lsconv_backward_args(cupy, x, w, y, dy, region, relu)
    return _backward("lsconv_backward", s, x, w, Grad((y, dy), _i32(bool(relu)), ""), need_dx,
                     dw, db)


def _backward(op, s, x, w, grad, need_dx, dw, db):
    """dx (or None), dw +=, db += of lsconv from grad (gpu_launchers.Grad)."""
    dw = _out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = _out_or_new(db, "db", (s.ry, s.rx, s.k), "RY x RX x K")
    dx = None
    if need_dx:
        dx = _new(tuple(x.shape))
        _run("lsconv_dx", s, w, grad, dx)
    _run("lsconv_dw", s, x, grad, dw, db)
    KIT.check_written(op, dx=dx, dw=dw, db=db)
    return dx, dw, db


def lsconv_input_grad(x, w, y, dy, region, relu=True):
    """dx of lsconv_backward alone (for the benchmarks of bench/kernels/)."""
    x, w, y, dy, s = chk.lsconv_backward_args(cupy, x, w, y, dy, region, relu)
    dx = _new(tuple(x.shape))
    _run("lsconv_dx", s, w, Grad((y, dy), _i32(bool(relu)), ""), dx)
    KIT.check_written("lsconv_input_grad", dx=dx)
    return dx


# ----------------------------------------------------------------------------
# maxpool
def maxpool_forward(x, s=2):
    """(y, argmax int32); see docs/ops.md."""
    x, n, c, h, w, s = chk.maxpool_forward_args(cupy, x, s)
    oh, ow = h // s, w // s
    y, am = _new((n, c, oh, ow)), _new((n, c, oh, ow), _i32)
    _run("maxpool_fwd", GridShape(y.size), x, y, am, n * c, h, w, s)
    KIT.check_written("maxpool_forward", y=y, argmax=am)
    return y, am


def maxpool_backward(dy, argmax, in_hw, s=None):
    """dx: dy scattered to the argmax positions, 0 elsewhere; see docs/ops.md."""
    dy, am, n, c, h, w, s, oh, ow = chk.maxpool_backward_args(cupy, dy, argmax, in_hw, s)
    dx = _new((n, c, h, w))
    flags = cupy.zeros(1, dtype=_i32)
    _run("maxpool_bwd", GridShape(dx.size), dy, am, dx, flags, n * c, h, w, s, oh, ow)
    if _state["index_checks"] and int(flags.get()[0]):
        raise ValueError("argmax holds an index outside its window (maxpool_backward)")
    KIT.check_written("maxpool_backward", dx=dx)
    return dx


# ----------------------------------------------------------------------------
# lsconv + maxpool: the two ops composed, or fused (gpu_tc.py; the same bits)
def lsconv_pool_forward(x, w, b, region, relu=True, s=2):
    """(y, argmax) of maxpool_forward(lsconv_forward(x, w, b, region, relu), s)."""
    x, w, b = _checked(x, "x"), _checked(w, "w"), _checked(b, "b")
    ls = chk.lsconv_shape(x, w, region)
    chk.expect_shape(b, "b", (ls.ry, ls.rx, ls.k), "RY x RX x K")
    ps = LsPoolShape(*ls, s if isinstance(s, (int, np.integer)) else 0)   # 0: composed
    if _choose("lsconv_pool_fwd", ps).family == "composed":
        return maxpool_forward(lsconv_forward(x, w, b, region, relu), s)
    y, am = _run("lsconv_pool_fwd", ps, x, w, b, relu)
    KIT.check_written("lsconv_pool_forward", y=y, argmax=am)
    return y, am


def lsconv_pool_backward(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None, db=None,
                         s=2):
    """The backward of lsconv_pool_forward from the pooled gradient dy; see docs/ops.md."""
    x, w, y, dy, ls, s = chk.lsconv_pool_backward_args(cupy, x, w, y, argmax, dy, region, relu,
                                                       s)
    if _choose("lsconv_pool_bwd", LsPoolShape(*ls, s)).family == "composed":
        if relu:  # the unpooled output's ReLU mask, where the scatter puts anything
            dy = cupy.where(y > 0, dy, _f32(0))
        dconv = maxpool_backward(dy, argmax, (ls.oh, ls.ow), s)
        return lsconv_backward(x, w, None, dconv, region, relu=False, need_dx=need_dx, dw=dw,
                               db=db)
    # fused: the lsconv_dx / lsconv_dw variants read dy through the argmax
    am = _checked(argmax, "argmax", _i32)
    chk.expect_shape(am, "argmax", tuple(dy.shape), "same as dy")
    if _state["index_checks"] and not gpu_tc.argmax_in_windows(KIT, ls, am):
        raise ValueError("argmax holds an index outside its window (maxpool_backward)")
    return _backward("lsconv_pool_backward", ls, x, w, Grad((y, dy, am), _i32(bool(relu)),
                                                            "_pooled"), need_dx, dw, db)


# ----------------------------------------------------------------------------
# dense: cuBLAS through cupy.matmul, small kernels around it
def dense_forward(xs, w, b, relu=True):
    """y = act(concat(xs) @ w + b); see docs/ops.md."""
    arrays, dims, n = chk.dense_inputs(cupy, xs)
    w, m = chk.dense_weight(cupy, w, sum(dims))
    b = _checked(b, "b")
    chk.expect_shape(b, "b", (m,), "M")
    if len(arrays) == 1:
        X = arrays[0].reshape(n, dims[0])
    else:
        X = cupy.concatenate([a.reshape(n, d) for a, d in zip(arrays, dims)], axis=1)
    y = _new((n, m))
    _run("dense_fwd", DenseShape(n, m), X, w, b, y, relu)
    KIT.check_written("dense_forward", y=y)
    return y


def dense_backward(xs, w, y, dy, relu=True, need_dx=True, dw=None, db=None):
    """(list of dx or None, dw, db) with dw += and db += ; see docs/ops.md."""
    arrays, dims, n = chk.dense_inputs(cupy, xs)
    w, m = chk.dense_weight(cupy, w, sum(dims))
    dy = _checked(dy, "dy")
    chk.expect_shape(dy, "dy", (n, m), "N x M")
    if relu:
        y = _checked(y, "y")
        chk.expect_shape(y, "y", (n, m), "N x M")
    dw = _out_or_new(dw, "dw", tuple(w.shape), "same as w")
    db = _out_or_new(db, "db", (m,), "M")
    dxs = _run("dense_bwd", DenseShape(n, m), arrays, dims, w, y, dy, need_dx, dw, db, relu)
    if _state["debug"]:
        KIT.sync("dense_backward")
        KIT.check_written("dense_backward", dw=dw, db=db,
                       **{f"dxs[{i}]": a for i, a in enumerate(dxs or [])})
    return dxs, dw, db


# ----------------------------------------------------------------------------
# losses
def joint_loss(logits, labels, features, pair_a, pair_b, pair_y, variant="l2", lam=0.05,
               params=None):
    """ident + lam * verif and its gradients (JointLoss); see docs/ops.md.

    Waits for the device (the losses come back as Python floats)."""
    a = chk.joint_loss_args(cupy, logits, labels, features, pair_a, pair_b, pair_y, variant,
                            params)
    params = a.params
    if params is None:
        params = cupy.asarray(np.array([1.0, 0.0][:a.npar], dtype=_f32))
    lam = _f32(lam)
    dlogits = _new((a.n, a.nc))
    dfeat = _new((a.n, a.d)) if a.p > 0 else cupy.zeros((a.n, a.d), dtype=_f32)
    dparams = _new((a.npar,))
    out = cupy.empty(5, dtype=_f64)
    _run("joint_loss", LossShape(a.n, a.nc, a.d, a.p), a, params, lam, dlogits, dfeat, dparams,
         out)
    total, ident, verif, correct, bad = (float(t) for t in out.get())
    if bad:
        chk.joint_index_error(int(bad), a.labels, a.pa, a.pb, a.pyy, a.n, a.nc)
    KIT.check_written("joint_loss", dlogits=dlogits, dfeatures=dfeat, dparams=dparams)
    return JointLoss(total, ident, verif, int(correct), dlogits, dfeat, dparams)


def regression_loss(pred, target):
    """(loss, dpred): mean over rows of 1/2 ||pred - target||^2; waits for the device."""
    pred, target = chk.regression_args(cupy, pred, target)
    n, d = (int(v) for v in pred.shape)
    dpred = _new((n, d))
    row = cupy.empty(n, dtype=_f64)
    KIT.launch("loss", "regression_rows", (n,), 128, (pred, target, dpred, row, _i32(n), _i32(d)))
    out = cupy.empty(1, dtype=_f64)
    KIT.launch("loss", "sum_double", (1,), 256, (row, _i32(n), out))
    loss = 0.5 * float(out.get()[0]) / n
    KIT.check_written("regression_loss", dpred=dpred)
    return loss, dpred


# ----------------------------------------------------------------------------
def sgd_update(param, grad, velocity, lr, momentum=0.9, weight_decay=0.0):
    """In place: v = momentum * v - lr * (g + weight_decay * p); p += v."""
    p, g, v = chk.sgd_args(cupy, param, grad, velocity)
    if p.size == 0:
        return None
    _run("sgd", GridShape(p.size), p, g, v, lr, momentum, weight_decay)
    return None


def sgd_update_many(params, grads, velocities, lr, momentum=0.9, weight_decay=0.0):
    """sgd_update on every (param, grad, velocity) of the lists, in one launch,
    bit-identical; lr, momentum, weight_decay: numbers or one per tensor."""
    return gpu_step.sgd_update_many(KIT, params, grads, velocities, lr, momentum, weight_decay)


def capture_graph(fn, warmup=1):
    """fn's device work as a CUDA graph: a CapturedStep, whose replay() (or
    call) redoes it on the same memory; see gpu_step.capture and docs/ops.md."""
    return gpu_step.capture(KIT, fn, warmup)


# ----------------------------------------------------------------------------
def assemble_batch(patches, indices, flip=None, out=None, mean=127.5, scale=1 / 128.0):
    """patches[indices] (uint8 N x H x W x C on the device) -> float32 B x C x H x W,
    mirrored left-right where flip[b], values (v - mean) * scale in float32:
    bit-identical to the cpu backend's assemble_batch. `indices` and `flip` may
    be numpy or CuPy arrays. Waits for the device when indices is a CuPy array
    (its range is checked there)."""
    patches, idx, fl, out, (n, h, w, c) = chk.assemble_args(cupy, patches, indices, flip, out)
    bsz = int(idx.shape[0])
    if out is None:
        out = _new((bsz, c, h, w))
    if bsz == 0:
        return out
    flags = cupy.zeros(1, dtype=_i32)
    KIT.launch("assemble", "assemble_batch", (_blocks(out.size),), 256,
            (patches, idx, fl, out, _i32(bsz), _i32(h), _i32(w), _i32(c), _i64(n),
             _f32(mean), _f32(scale), flags))
    if isinstance(indices, cupy.ndarray) and _state["index_checks"] and int(flags.get()[0]):
        raise ValueError(f"indices must be in 0..{n - 1}")
    KIT.check_written("assemble_batch", out=out)
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
    "dense_backward", "joint_loss", "regression_loss", "sgd_update", "sgd_update_many",
    "assemble_batch", "to_device", "to_host", "keep_freed_memory", "synchronize",
    "set_deterministic", "is_deterministic", "set_debug", "is_debug", "set_index_checks",
    "max_threads", "probe", "set_precision", "get_precision", "capture_graph",
]
