"""DeepID2's real shapes for the bench/kernels/ scripts, read from the network
(deepid2_core/nets/deepid2.py) at each batch; or the shapes given with
--shape (comma-separated, per family, see each function)."""
import zlib

import numpy as np

import harness as H
from deepid2_core.backends.gpu_variants import LsShape
from deepid2_core.nets.deepid2 import NetConfig, param_shapes


def _given(args, count, what):
    out = []
    for text in args.shape:
        try:
            v = tuple(int(t) for t in text.split(","))
        except ValueError:
            v = ()
        if len(v) != count or min(v) < 1:
            raise SystemExit(f"--shape {text!r}: expected {count} positive integers, {what}")
        out.append(v)
    return out


def convs(args, pooled=False):
    """[(label, LsShape)]: conv1..conv4 (pooled: conv1..conv3, those a 2x2
    max-pool follows) at each batch; --shape N,C,H,W,K,kh,kw,rh,rw."""
    given = _given(args, 9, "N,C,H,W,K,kh,kw,rh,rw")
    if given:
        return [(f"N={v[0]} given", LsShape(*v)) for v in given]
    out = []
    for n in H.batches(args):
        for cs in H.net_convs(args)[:3 if pooled else 4]:
            if H.wanted(args, cs.name):
                out.append((f"{cs.name} N={n}", LsShape(n, cs.c, cs.h, cs.w, cs.k, cs.kernel,
                                                        cs.kernel, *cs.region)))
    return out


def pools(args):
    """[(label, (N, C, H, W))]: pool1..pool3 (2x2, on conv1..conv3's outputs);
    --shape N,C,H,W."""
    given = _given(args, 4, "N,C,H,W")
    if given:
        return [(f"N={v[0]} given", v) for v in given]
    out = []
    for n in H.batches(args):
        for i, cs in enumerate(H.net_convs(args)[:3]):
            if H.wanted(args, f"pool{i + 1}"):
                out.append((f"pool{i + 1} N={n}", (n, cs.k, *cs.out_hw)))
    return out


def dense(args):
    """[(label, N, input shapes (without N), M, relu)]: the deepid layer (pool3
    and conv4 -> 160, ReLU) and the ident layer (160 -> classes); --shape N,D,M."""
    given = _given(args, 3, "N,D,M")
    if given:
        return [(f"N={v[0]} given", v[0], [(v[1],)], v[2], True) for v in given]
    c3, c4 = H.net_convs(args)[2:]
    pool3 = (c4.c, c4.h, c4.w)
    conv4 = (c4.k, *c4.out_hw)
    classes = H.EMU_CLASSES if args.emu else H.CLASSES
    out = []
    for n in H.batches(args):
        if H.wanted(args, "deepid"):
            out.append((f"deepid N={n}", n, [pool3, conv4], 160, True))
        if H.wanted(args, "ident"):
            out.append((f"ident N={n}", n, [(160,)], classes, False))
    return out


def loss(args):
    """[(label, N, classes, D, pairs)]: the joint loss of a batch of N/2 pairs;
    --shape N,classes,D."""
    given = _given(args, 3, "N,classes,D")
    if given:
        return [(f"N={v[0]} given", v[0], v[1], v[2], v[0] // 2) for v in given]
    classes = H.EMU_CLASSES if args.emu else H.CLASSES
    return [(f"loss N={n}", n, classes, 160, n // 2) for n in H.batches(args)]


def params(args):
    """[(label, shape)]: every parameter tensor of the network (SGD updates
    each); --shape SIZE."""
    given = _given(args, 1, "SIZE")
    if given:
        return [(f"{v[0]} given", v) for v in given]
    cfg = NetConfig(H.EMU_CLASSES, **H.EMU_NET) if args.emu else NetConfig(H.CLASSES)
    shapes = param_shapes(cfg)
    return [(f"{k} {int(np.prod(s))}", s) for k, s in sorted(shapes.items())
            if H.wanted(args, k)]


# ----------------------------------------------------------------------------
# lsconv inputs and the oracle over image blocks (tests/oracle.py, float64)
def rng_for(*key):
    """A generator seeded by the case (the same inputs for the same shape, so
    that one oracle serves the dw and dx scripts of a sweep)."""
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def ls_inputs(s, backward):
    """Unit normal x, w, and b (forward) or the saved y and dy (backward)."""
    rng = rng_for(s, backward)
    x = H.rand(rng, s.n, s.c, s.h, s.w)
    w = H.rand(rng, s.ry, s.rx, s.k, s.c, s.kh, s.kw)
    if not backward:
        return dict(x=x, w=w, b=H.rand(rng, s.ry, s.rx, s.k))
    return dict(x=x, w=w, y=H.rand(rng, s.n, s.k, s.oh, s.ow),
                dy=H.rand(rng, s.n, s.k, s.oh, s.ow))


def ls_forward_oracle(args, i, s):
    import oracle as O
    return H.chunked(args, O.lsconv_forward, s.n,
                     lambda a, b: (i["x"][a:b], i["w"], i["b"], (s.rh, s.rw)),
                     lambda parts: np.concatenate(parts))


_backward_refs = {}


def ls_backward_oracle(args, i, s):
    """{dx, dw, db} in float64: dx per image block, dw and db summed over them
    (kept per shape: the dw and dx scripts of one sweep share it)."""
    import oracle as O
    if s in _backward_refs:
        return _backward_refs[s]
    _backward_refs[s] = H.chunked(args, O.lsconv_backward, s.n,
                     lambda a, b: (i["x"][a:b], i["w"], i["y"][a:b], i["dy"][a:b], (s.rh, s.rw)),
                     _joined)
    return _backward_refs[s]


def _joined(parts):
    """{dx, dw, db} of (dx, dw, db) over image blocks."""
    return dict(dx=np.concatenate([p[0] for p in parts]), dw=sum(p[1] for p in parts),
                db=sum(p[2] for p in parts))


def ls_pool_inputs(s):
    """x, w, and the pooled y, argmax (one position of each 2x2 window, at
    random) and dy of lsconv_pool_backward: unit normal, y about half <= 0."""
    rng = rng_for(s, "pool")
    ph, pw = s.oh // 2, s.ow // 2
    pick = rng.integers(0, 2, (2, s.n, s.k, ph, pw))
    am = (2 * np.arange(ph)[:, None] + pick[0]) * s.ow + 2 * np.arange(pw) + pick[1]
    return dict(x=H.rand(rng, s.n, s.c, s.h, s.w), w=H.rand(rng, s.ry, s.rx, s.k, s.c, s.kh, s.kw),
                y=H.rand(rng, s.n, s.k, ph, pw), argmax=am.astype(np.int32),
                dy=H.rand(rng, s.n, s.k, ph, pw))


def _pool_backward_block(x, w, y, am, dy, region, out_hw):
    import oracle as O
    dconv = O.maxpool_backward(np.where(y > 0, dy, 0.0), am, out_hw)   # ReLU mask at argmax
    return O.lsconv_backward(x, w, dconv, dconv, region, relu=False)


def ls_pool_backward_oracle(args, i, s):
    """{dx, dw, db} of lsconv_pool_backward in float64 (as tests/oracle_backend.py)."""
    return H.chunked(args, _pool_backward_block, s.n,
                     lambda a, b: (i["x"][a:b], i["w"], i["y"][a:b], i["argmax"][a:b],
                                   i["dy"][a:b], (s.rh, s.rw), (s.oh, s.ow)),
                     _joined)


_on_device = {}


def to_device(be, inputs, fresh=()):
    """{name: device array} of a case's inputs: copied to the device once a
    case (the inputs are read only), those named in `fresh` (updated in
    place by the op) copied anew from the host each time."""
    key = (id(inputs), id(be))
    if key not in _on_device:
        _on_device.clear()
        _on_device[key] = (inputs, {k: be.to_device(a) for k, a in inputs.items()})
    out = dict(_on_device[key][1])
    out.update({k: be.to_device(inputs[k]) for k in fresh})
    return out


def nbytes(*shapes):
    """4 bytes a float32 (or int32) element of arrays of these shapes."""
    return 4 * sum(int(np.prod(s)) for s in shapes)


def ls_shapes(s):
    """{x, w, b, y}: the shapes of an lsconv call's arrays."""
    return dict(x=(s.n, s.c, s.h, s.w), w=(s.ry, s.rx, s.k, s.c, s.kh, s.kw), b=(s.ry, s.rx, s.k),
                y=(s.n, s.k, s.oh, s.ow))
