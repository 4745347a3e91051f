"""The gpu backend's argument checks: the cpu backend's messages
(bindings/module.cpp), raised before any work is queued.

A wrong dtype is TypeError, a wrong shape / layout / value ValueError, each
naming the argument. The functions that look at arrays take the array module
first (``cp``: CuPy, or the tests' stand-in, tests/gpu_emu/fake_cupy.py), so
this module imports no CuPy and serves both.
"""

from types import SimpleNamespace

import numpy as np

from deepid2_core.backends.gpu_variants import LsShape

_f32, _i32 = np.float32, np.int32
LOSS_VARIANTS = {"l2": 0, "l2_pos": 1, "l1": 2, "cosine": 3}


def shape_str(s):
    s = tuple(int(v) for v in s)
    return "(" + ", ".join(str(v) for v in s) + ("," if len(s) == 1 else "") + ")"


def checked(cp, a, argname, dtype=_f32):
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{argname} must be a cupy.ndarray (the gpu backend takes device "
                        f"arrays), got {type(a).__module__}.{type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{argname} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{argname} must be C-contiguous (use cupy.ascontiguousarray)")
    dev = cp.cuda.Device().id
    if a.device.id != dev:
        raise ValueError(f"{argname} is on GPU {a.device.id}, but the current device is GPU {dev}")
    return a


def expect_ndim(a, argname, ndim, meaning):
    if a.ndim != ndim:
        raise ValueError(f"{argname} must have {ndim} dimensions ({meaning}), got shape "
                         f"{shape_str(a.shape)}")
    if any(d < 1 for d in a.shape):
        raise ValueError(f"{argname}: every dimension of {meaning} must be positive, got shape "
                         f"{shape_str(a.shape)}")


def expect_shape(a, argname, want, meaning):
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{argname}: expected shape {shape_str(want)} ({meaning}), got "
                         f"{shape_str(a.shape)}")


def int_pair(v, argname):
    try:
        a, b = v
        if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a pair of integers, got {v!r}") from None


# ----------------------------------------------------------------------------
# lsconv
def lsconv_shape(x, w, region):
    """The LsShape of one lsconv call, checking x, w and region against each other."""
    expect_ndim(x, "x", 4, "N x C x H x W")
    expect_ndim(w, "w", 6, "RY x RX x K x C x kh x kw")
    n, c, h, wd = (int(v) for v in x.shape)
    k, kh, kw = int(w.shape[2]), int(w.shape[4]), int(w.shape[5])
    rh, rw = int_pair(region, "region")
    if rh < 1 or rw < 1:
        raise ValueError("region must be two positive integers")
    if kh > h or kw > wd:
        raise ValueError(f"w: kernel {kh}x{kw} (axes 4, 5) is larger than x's {h}x{wd} map")
    s = LsShape(n, c, h, wd, k, kh, kw, rh, rw)
    if rh > s.oh or rw > s.ow:
        raise ValueError(f"region {rh}x{rw} is larger than the {s.oh}x{s.ow} output map")
    expect_shape(w, "w", (s.ry, s.rx, k, c, kh, kw),
                 "RY x RX x K x C x kh x kw for this x and region")
    return s


def ls_yshape(s):
    return (s.n, s.k, s.oh, s.ow)


def lsconv_backward_args(cp, x, w, y, dy, region, relu):
    """(x, w, y, dy, shape) of lsconv_backward; y is dy (not read) without relu."""
    x, w, dy = checked(cp, x, "x"), checked(cp, w, "w"), checked(cp, dy, "dy")
    s = lsconv_shape(x, w, region)
    expect_shape(dy, "dy", ls_yshape(s), "N x K x OH x OW")
    if relu:
        y = checked(cp, y, "y")
        expect_shape(y, "y", ls_yshape(s), "N x K x OH x OW")
    else:
        y = dy
    return x, w, y, dy, s


def lsconv_pool_backward_args(cp, x, w, y, argmax, dy, region, relu, s):
    """(x, w, y, dy, shape, s, unpooled (OH, OW)) of lsconv_pool_backward."""
    x, w, dy = checked(cp, x, "x"), checked(cp, w, "w"), checked(cp, dy, "dy")
    ls = lsconv_shape(x, w, region)
    s = int(s)
    if s < 1 or s > ls.oh or s > ls.ow:
        raise ValueError(f"s: the {s}x{s} window does not fit the {ls.oh}x{ls.ow} output map")
    pshape = (ls.n, ls.k, ls.oh // s, ls.ow // s)
    expect_shape(dy, "dy", pshape, "N x K x OH/s x OW/s")
    if relu:
        y = checked(cp, y, "y")
        expect_shape(y, "y", pshape, "N x K x OH/s x OW/s")
    return x, w, y, dy, ls, s


# ----------------------------------------------------------------------------
# maxpool
def maxpool_forward_args(cp, x, s):
    """(x, n, c, h, w, s) of maxpool_forward."""
    x = checked(cp, x, "x")
    expect_ndim(x, "x", 4, "N x C x H x W")
    s = int(s)
    if s < 1:
        raise ValueError(f"s must be a positive integer, got {s}")
    n, c, h, w = (int(v) for v in x.shape)
    if s > h or s > w:
        raise ValueError(f"x: the {s}x{s} window is larger than the {h}x{w} map")
    return x, n, c, h, w, s


def maxpool_backward_args(cp, dy, argmax, in_hw, s):
    """(dy, argmax, n, c, h, w, s, oh, ow) of maxpool_backward."""
    dy = checked(cp, dy, "dy")
    am = checked(cp, argmax, "argmax", _i32)
    expect_ndim(dy, "dy", 4, "N x C x OH x OW")
    h, w = int_pair(in_hw, "in_hw")
    if h < 1 or w < 1:
        raise ValueError("in_hw must be two positive integers")
    n, c, oh, ow = (int(v) for v in dy.shape)
    s = h // oh if s is None else int(s)
    if s < 1:
        raise ValueError(f"dy: its {oh}x{ow} map is larger than in_hw = ({h}, {w})")
    if h // s != oh or w // s != ow:
        raise ValueError(f"dy: shape {shape_str(dy.shape)} is not a {s}x{s} pooling of an "
                         f"input of size in_hw = ({h}, {w})")
    expect_shape(am, "argmax", tuple(dy.shape), "same as dy")
    return dy, am, n, c, h, w, s, oh, ow


# ----------------------------------------------------------------------------
# dense
def dense_inputs(cp, xs):
    """(arrays, their widths d_i, rows N) of a dense layer's inputs."""
    if isinstance(xs, cp.ndarray):
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
        a = checked(cp, a, nm)
        if a.ndim < 2:
            raise ValueError(f"{nm} must be N x ... (at least 2 dimensions), got shape "
                             f"{shape_str(a.shape)}")
        if a.size == 0:
            raise ValueError(f"{nm} must not be empty, got shape {shape_str(a.shape)}")
        if n is None:
            n = int(a.shape[0])
        if a.shape[0] != n:
            raise ValueError(f"{nm} has {a.shape[0]} rows, xs[0] has {n}")
        arrays.append(a)
        dims.append(a.size // n)
    return arrays, dims, n


def dense_weight(cp, w, total):
    """(w, M) for inputs of `total` columns."""
    w = checked(cp, w, "w")
    expect_ndim(w, "w", 2, "sum(d_i) x M")
    m = int(w.shape[1])
    expect_shape(w, "w", (total, m), "sum(d_i) x M")
    return w, m


# ----------------------------------------------------------------------------
# losses
def parse_loss_variant(variant):
    if not isinstance(variant, str) or variant not in LOSS_VARIANTS:
        raise ValueError(f"variant must be one of 'l2', 'l2_pos', 'l1', 'cosine', got '{variant}'")
    return LOSS_VARIANTS[variant]


def joint_loss_args(cp, logits, labels, features, pair_a, pair_b, pair_y, variant, params):
    """The checked arguments of joint_loss as a namespace (v: the verification
    variant's code, params None: the default, to be made on the device)."""
    v = parse_loss_variant(variant)
    logits = checked(cp, logits, "logits")
    labels = checked(cp, labels, "labels", _i32)
    f = checked(cp, features, "features")
    pa, pb = checked(cp, pair_a, "pair_a", _i32), checked(cp, pair_b, "pair_b", _i32)
    pyy = checked(cp, pair_y, "pair_y", _i32)
    expect_ndim(logits, "logits", 2, "N x n_classes")
    n, nc = (int(d) for d in logits.shape)
    expect_shape(labels, "labels", (n,), "N")
    expect_ndim(f, "features", 2, "N x D")
    d = int(f.shape[1])
    expect_shape(f, "features", (n, d), "N x D")
    if pa.ndim != 1:
        raise ValueError(f"pair_a must have 1 dimension (P), got shape {shape_str(pa.shape)}")
    p = int(pa.shape[0])
    expect_shape(pb, "pair_b", (p,), "P, same as pair_a")
    expect_shape(pyy, "pair_y", (p,), "P, same as pair_a")
    npar = 2 if v == 3 else 1
    if params is not None:
        params = checked(cp, params, "params")
        expect_shape(params, "params", (npar,), "[w, b] for cosine" if npar == 2 else "[m]")
    return SimpleNamespace(v=v, logits=logits, labels=labels, f=f, pa=pa, pb=pb, pyy=pyy,
                           n=n, nc=nc, d=d, p=p, npar=npar, params=params)


def joint_index_error(flags, labels, pa, pb, pyy, n, nc):
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


def regression_args(cp, pred, target):
    pred, target = checked(cp, pred, "pred"), checked(cp, target, "target")
    expect_ndim(pred, "pred", 2, "N x D")
    expect_shape(target, "target", tuple(pred.shape), "same as pred")
    return pred, target


def sgd_args(cp, param, grad, velocity):
    p, v = checked(cp, param, "param"), checked(cp, velocity, "velocity")
    g = checked(cp, grad, "grad")
    expect_shape(g, "grad", tuple(p.shape), "same as param")
    expect_shape(v, "velocity", tuple(p.shape), "same as param")
    return p, g, v


def assemble_args(cp, patches, indices, flip, out):
    """(patches, indices as int64 on the device, flip as uint8 on the device,
    out or None, (N, H, W, C)) of assemble_batch; device indices are checked
    by the kernel."""
    if not (isinstance(patches, cp.ndarray) and patches.dtype == np.uint8
            and patches.ndim == 4):
        raise ValueError("patches must be a cupy uint8 array N x H x W x C (on the device)")
    if not patches.flags.c_contiguous:
        raise ValueError("patches must be C-contiguous (use cupy.ascontiguousarray)")
    n, h, w, c = (int(v) for v in patches.shape)
    if isinstance(indices, cp.ndarray):
        if indices.size and indices.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        idx = cp.ascontiguousarray(indices, dtype=np.int64)
    else:
        idx_np = np.asarray(indices)
        if idx_np.size and idx_np.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {idx_np.dtype}")
        idx_np = np.ascontiguousarray(idx_np, dtype=np.int64)
        if idx_np.ndim == 1 and len(idx_np) and (idx_np.min() < 0 or idx_np.max() >= n):
            raise ValueError(f"indices must be in 0..{n - 1}")
        idx = cp.asarray(idx_np)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
    bsz = int(idx.shape[0])
    if flip is None:
        fl = cp.zeros(bsz, dtype=np.uint8)
    else:
        fl = cp.asarray(flip)
        if fl.shape != (bsz,):
            raise ValueError(f"flip must be a bool array of length {bsz}, got shape "
                             f"{tuple(fl.shape)}")
        fl = cp.ascontiguousarray(fl != 0, dtype=np.uint8)
    shape = (bsz, c, h, w)
    if out is not None and not (isinstance(out, cp.ndarray) and out.dtype == np.float32
                                and tuple(out.shape) == shape and out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous cupy float32 array of shape {shape}")
    return patches, idx, fl, out, (n, h, w, c)
