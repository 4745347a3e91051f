"""The kernel variants of the gpu backend's ops, per op: the shape the choice
depends on, the heuristic (the backend's original choice), and each variant
family's candidate parameters and validity for a shape. No CuPy.

gpu_tiling.py makes the choice from these (forced, tuned or heuristic); the
table of ops and families is in its docstring. A family is
Family(keys, candidates, valid, precision): keys, the letters of its
parameters in name order; candidates(shape) -> [params dict] (None: one
variant without parameters); valid(shape, params) -> None, or why it cannot
run that shape (None: any); precision, "fp32" or "tf32".
"""

from collections import namedtuple
from functools import lru_cache

# --------------------------------------------------------------------------
# shapes (the part of an op's arguments that the choice depends on)
class _LsGeometry:
    """Geometry of one lsconv call (cpp/include/deepid2/ops.h, LsconvShape)."""
    __slots__ = ()

    @property
    def oh(self):
        return self.h - self.kh + 1

    @property
    def ow(self):
        return self.w - self.kw + 1

    @property
    def ry(self):
        return -(-self.oh // self.rh)

    @property
    def rx(self):
        return -(-self.ow // self.rw)

    @property
    def r(self):
        return self.ry * self.rx

    @property
    def q(self):
        return self.c * self.kh * self.kw

    @property
    def pmax(self):  # columns of the largest (first) region
        return min(self.rh, self.oh) * min(self.rw, self.ow)

    def key(self):
        return (f"n{self.n}.c{self.c}.h{self.h}.w{self.w}.k{self.k}.f{self.kh}x{self.kw}"
                f".r{self.rh}x{self.rw}")


class LsShape(_LsGeometry, namedtuple("LsShape", "n c h w k kh kw rh rw")):
    __slots__ = ()


class LsPoolShape(_LsGeometry, namedtuple("LsPoolShape", "n c h w k kh kw rh rw win")):
    """lsconv + max-pool: the lsconv's geometry and the pooling window."""
    __slots__ = ()

    def key(self):
        return super().key() + f".p{self.win}"

    def conv(self):
        return LsShape(*self[:9])


class GridShape(namedtuple("GridShape", "total")):
    """An elementwise kernel: the number of items of its grid-stride loop."""
    __slots__ = ()

    def key(self):
        return f"e{self.total}"


class DenseShape(namedtuple("DenseShape", "n m")):
    """A dense layer's output, N x M."""
    __slots__ = ()

    def key(self):
        return f"n{self.n}.m{self.m}"


class LossShape(namedtuple("LossShape", "n classes d pairs")):
    __slots__ = ()

    def key(self):
        return f"n{self.n}.c{self.classes}.d{self.d}.p{self.pairs}"


# --------------------------------------------------------------------------
# the heuristics (the backend's choice before the tuning bench; unchanged)
# Weight-gradient split: about this many blocks in all, each chunk at least
# _MIN_CHUNK columns. Depends on the shapes only, so results do not depend
# on the GPU model in deterministic mode.
_TARGET_BLOCKS = 1024
_MIN_CHUNK = 256
SMEM_LIMIT = 40 * 1024
WGRAD_TILES = tuple((bm, bn) for bm in (20, 40, 60) for bn in (64, 128))
MAX_THREADS = 256   # every kernel's LAUNCH_BOUNDS


@lru_cache(maxsize=256)
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
    while kc > 1 and nb * kc * stage > SMEM_LIMIT:
        kc //= 2
    while nb > 1 and nb * kc * stage > SMEM_LIMIT:
        nb //= 2
    return th, tw, nb, (kc if nb * kc * stage <= SMEM_LIMIT else 0)


def _wgrad_tile(k, q1):
    """(maps, taps) of the weight-gradient tile (kernels lsconv_bwd_w_<BM>_<BN>)
    that wastes the least of the K x (Q + 1) gradient; ties go to the larger tile."""
    def waste(t):
        bm, bn = t
        return (-(-k // bm) * bm) * (-(-q1 // bn) * bn) - k * q1, -bm * bn
    return min(WGRAD_TILES, key=waste)


def _wgrad_splits(s, q_tiles, k_tiles):
    tiles = s.r * q_tiles * k_tiles
    return max(1, min(-(-_TARGET_BLOCKS // tiles), (s.n * s.pmax) // _MIN_CHUNK, 65535))


def wgrad_grid(s, tile):
    """(q_tiles, k_tiles) of the weight-gradient kernel with this tile."""
    bm, bn = tile
    return -(-(s.q + 1) // bn), -(-s.k // bm)


def dx_staging(s, params, px):
    """(threads per block, dynamic shared bytes) of lsconv_bwd_data[_px2]."""
    (th, tw), nb, kc = params["t"], params["n"], params["k"]
    threads = -(-nb * th * tw // px // 32) * 32
    return threads, nb * kc * (th + s.kh - 1) * (tw + s.kw - 1 + px - 1) * 4


def _heur_dw(s):
    tile = _wgrad_tile(s.k, s.q + 1)
    return "tiled", {"t": tile, "s": _wgrad_splits(s, *wgrad_grid(s, tile))}


def _heur_dx(s):
    padded = (s.oh + 2 * (s.kh - 1)) * (s.ow + 2 * (s.kw - 1))
    if s.r == 1 and padded <= 2 * s.h * s.w:   # (padding a big kernel would cost more)
        return "fwdconv", {}
    px = 2 if s.r == 1 else 1
    th, tw, nb, kc = _dx_tile_for(s.h, s.w, s.kh, s.kw, s.k, px)
    if not kc:
        return "simple", {"b": 256}
    return ("px2" if px == 2 else "staged"), {"t": (th, tw), "n": nb, "k": kc}


# --------------------------------------------------------------------------
# candidates and validity of each family
_BLOCKS = (64, 128, 256)


def _valid_block(s, p):
    b = p["b"]
    return None if 32 <= b <= MAX_THREADS and b % 32 == 0 else \
        f"b = {b} threads: a multiple of 32 up to {MAX_THREADS}"


def _dw_candidates(s):
    smax = min(1024, max(1, s.n * s.pmax // 64))
    out = []
    for tile in WGRAD_TILES:
        splits = {1 << i for i in range(11) if 1 << i <= smax}
        splits.add(_wgrad_splits(s, *wgrad_grid(s, tile)))
        out += [{"t": tile, "s": v} for v in sorted(splits)]
    return out


def _dw_valid(s, p):
    if p["t"] not in WGRAD_TILES:
        return f"tile {p['t'][0]}x{p['t'][1]} is not one of " + \
            ", ".join(f"{a}x{b}" for a, b in WGRAD_TILES)
    if not 1 <= p["s"] <= 65535:
        return f"s = {p['s']} splits: 1..65535"
    return None


def _dx_tiles(s, px):
    """Candidate (TH, TW, NB, KC) of the staged kernels: the heuristic's, the
    whole map, and rectangles of 32..256 threads, with 1 or as many images as
    fit, 16 or 4 maps staged (those that do not fit are dropped by validity)."""
    h, wp = s.h, -(-s.w // px) * px
    shapes = {(h, wp)} if h * wp // px <= MAX_THREADS else set()
    for a in (1, 2, 4, 8, 16, 32):
        for b in (8, 16, 32, 64):
            if a <= h and b <= wp and b % px == 0 and 32 <= a * b // px <= MAX_THREADS:
                shapes.add((a, b))
    out = []
    heur = _dx_tile_for(s.h, s.w, s.kh, s.kw, s.k, px)
    if heur[3]:
        out.append({"t": heur[:2], "n": heur[2], "k": heur[3]})
    for th, tw in sorted(shapes):
        per = th * tw // px
        for nb in sorted({1, max(1, MAX_THREADS // per)}):
            for kc in sorted({min(s.k, 16), min(s.k, 4)}, reverse=True):
                p = {"t": (th, tw), "n": nb, "k": kc}
                if p not in out:
                    out.append(p)
    return out


def _staged_valid(s, p, px):
    (th, tw), nb, kc = p["t"], p["n"], p["k"]
    if px == 2 and s.r != 1:
        return "px2 needs a layer of one region"
    if min(th, tw, nb, kc) < 1 or tw % px:
        return f"tile {th}x{tw}, {nb} images, {kc} maps: all positive" + \
            (", TW even" if px == 2 else "")
    if kc > s.k:
        return f"k = {kc} maps staged, the layer has {s.k}"
    threads, smem = dx_staging(s, p, px)
    if threads > MAX_THREADS:
        return f"{threads} threads per block, more than {MAX_THREADS}"
    if smem > SMEM_LIMIT:
        return f"{smem} bytes of shared memory, more than {SMEM_LIMIT}"
    return None


def _one_region(s, p):
    return None if s.r == 1 else "needs a layer of one region"


# --------------------------------------------------------------------------
# TF32 tensor cores (kernels/lsconv_tc.cu; gpu_tc.py): block tiles of M rows
# x 64 columns; M: the maps of y and dw, the channels (one region) or taps
# (several) of dx
TC_ROWS = (32, 48, 64, 80)


def tc_rows(m):
    """The tile rows that waste the fewest of m rows; ties: the larger."""
    return min(TC_ROWS, key=lambda bm: (-(-m // bm) * bm - m, -bm))


def dx_pads(s):
    """Whether dx runs as a forward conv of the padded gradient (one region
    where padding costs little), as _heur_dx and the TF32 dx decide."""
    return s.r == 1 and (s.oh + 2 * (s.kh - 1)) * (s.ow + 2 * (s.kw - 1)) <= 2 * s.h * s.w


def tc_dw_grid(s, bm):
    return -(-(s.q + 1) // 64), -(-s.k // bm)


def _tc_dw_candidates(s):
    smax = min(1024, max(1, s.n * s.pmax // 64))
    return [{"m": m, "s": v} for m in TC_ROWS
            for v in sorted({1 << i for i in range(11) if 1 << i <= smax}
                            | {_wgrad_splits(s, *tc_dw_grid(s, m))})]


def _tc_valid(s, p):
    if p["m"] not in TC_ROWS:
        return f"m = {p['m']} rows: one of {', '.join(map(str, TC_ROWS))}"
    return None if 1 <= p.get("s", 1) <= 65535 else f"s = {p['s']} splits: 1..65535"


TF32_HEURISTICS = {
    "lsconv_fwd": lambda s: ("tc", {"m": tc_rows(s.k)}),
    "lsconv_dx": lambda s: ("tc", {"m": tc_rows(s.c if dx_pads(s) else s.q)}),
    "lsconv_dw": lambda s: ("tc", {"m": tc_rows(s.k),
                                   "s": _wgrad_splits(s, *tc_dw_grid(s, tc_rows(s.k)))}),
    # the fused forward is fp32: TF32's forward and maxpool_fwd
    "lsconv_pool_fwd": lambda s: ("composed", {}),
}


def _fusable(s, p=None):
    """lsconv_pool_fwd/bwd's fused kernels: 2 x 2 windows on a map that holds one."""
    return None if s.win == 2 and s.oh >= 2 and s.ow >= 2 else \
        f"fused needs 2x2 windows on a map of at least 2x2 (s = {s.win}, {s.oh}x{s.ow})"


Family = namedtuple("Family", "keys candidates valid precision")
PARAM_DOC = {"t": "<A>x<B>", "s": "<splits>", "b": "<threads>", "n": "<images>",
             "k": "<maps>", "m": "<rows>"}
_TC = Family(("m",), lambda s: [{"m": m} for m in TC_ROWS], _tc_valid, "tf32")
PAIR_KEYS = {"t"}

FAMILIES = {
    "lsconv_fwd": {"tiled": Family((), None, None, "fp32"), "tc": _TC},
    "lsconv_dw": {"tiled": Family(("t", "s"), _dw_candidates, _dw_valid, "fp32"),
                  "tc": Family(("m", "s"), _tc_dw_candidates, _tc_valid, "tf32")},
    "lsconv_dx": {
        "fwdconv": Family((), None, _one_region, "fp32"),
        "simple": Family(("b",), lambda s: [{"b": b} for b in _BLOCKS], _valid_block, "fp32"),
        "staged": Family(("t", "n", "k"), lambda s: _dx_tiles(s, 1),
                         lambda s, p: _staged_valid(s, p, 1), "fp32"),
        "px2": Family(("t", "n", "k"), lambda s: _dx_tiles(s, 2),
                      lambda s, p: _staged_valid(s, p, 2), "fp32"),
        "tc": _TC,
    },
    # lsconv + max-pool: the two ops' variants one after the other, or in one
    # (the forward) and through the argmax (the backward), bit-identical
    "lsconv_pool_fwd": {"composed": Family((), None, None, "fp32"),
                        "fused": Family((), None, _fusable, "fp32")},
    "lsconv_pool_bwd": {"composed": Family((), None, None, "fp32"),
                        "fused": Family((), None, _fusable, "fp32")},
    "joint_loss": {"rows": Family((), None, None, "fp32")},
}
for _op in ("maxpool_fwd", "maxpool_bwd", "sgd"):
    FAMILIES[_op] = {"grid": Family(("b",), lambda s: [{"b": b} for b in _BLOCKS],
                                     _valid_block, "fp32")}
for _op in ("dense_fwd", "dense_bwd"):
    FAMILIES[_op] = {"cublas": Family(("b",), lambda s: [{"b": b} for b in _BLOCKS],
                                       _valid_block, "fp32")}
HEURISTICS = {
    "lsconv_fwd": lambda s: ("tiled", {}),
    "lsconv_dw": _heur_dw,
    "lsconv_dx": _heur_dx,
    "lsconv_pool_fwd": lambda s: ("composed" if _fusable(s) else "fused", {}),
    "lsconv_pool_bwd": lambda s: ("composed" if _fusable(s) else "fused", {}),
    "maxpool_fwd": lambda s: ("grid", {"b": 256}),
    "maxpool_bwd": lambda s: ("grid", {"b": 256}),
    "dense_fwd": lambda s: ("cublas", {"b": 256}),
    "dense_bwd": lambda s: ("cublas", {"b": 256}),
    "joint_loss": lambda s: ("rows", {}),
    "sgd": lambda s: ("grid", {"b": 256}),
}
OPS = tuple(FAMILIES)
