"""Which kernel variant the gpu backend runs for each op and shape, as data.

No CuPy here: the benchmarks (bench/kernels/) enumerate the variants on any
machine, and the tests check the choice without a GPU.

The order of the choice (``choose``):
1. ``force=`` of choose(), or a block ``with forced(lsconv_dx="simple"):``;
2. $DEEPID2_GPU_TILING, e.g. ``lsconv_dx=simple,lsconv_dw=tiled.s4``;
3. the tuning file (written by bench/kernels/): $DEEPID2_GPU_TUNING, else
   $XDG_CACHE_HOME/deepid2/gpu_tuning.json (~/.cache/deepid2/...);
   DEEPID2_GPU_TUNING=off ignores it. Its picks are keyed by the card's
   name, the precision, the op and the shape; a shape it lacks falls back to
4. the heuristic: the backend's original choice, from the shape (and, at
   precision tf32, the TF32 family)
   (_dx_tile_for, _wgrad_tile, _wgrad_splits in gpu_variants.py, which also
   holds each family's candidates and validity).
A variant that cannot run the shape, or a name that does not parse, is one
ValueError line naming the op and its valid variants.

Results: every variant computes the same op; with the default choice (no
tuning file, nothing forced) they are those of the heuristic, bit for bit.
Another variant may round differently (another order of the sums), so in
deterministic mode the results are reproducible for a given tuning file and
card, not across them.

A variant is a family and its parameters, written ``family.<letter><value>...``
(``tiled.t20x64.s8``). A forced name may give only the family (``staged``)
or some parameters (``tiled.s4``); the others come from the heuristic's pick
where it is of that family, else from the family's first candidate.

  op           family   parameters                        kernels (kernels/*.cu)
  lsconv_fwd   tiled    -                                 lsconv_fwd (32 maps x 64 columns)
               tc       m: tile rows (TF32)               lsconv_tc_fwd_m<M> (gpu_tc.py)
  lsconv_dw    tiled    t: maps x taps tile, s: column    lsconv_bwd_w_<BM>_<BN>
                        chunks (splits)                   (+ lsconv_bwd_w_reduce)
               tc       m, s (TF32)                       lsconv_tc_bwd_w_m<M> (+ reduce)
  lsconv_dx    fwdconv  - (one region only)               lsconv_pad_grad + lsconv_fwd
               simple   b: threads per block              lsconv_bwd_data_simple
               staged   t: TH x TW tile, n: images per    lsconv_wt_transpose +
                        block, k: maps staged at a time   lsconv_bwd_data
               px2      as staged (one region only)       ... + lsconv_bwd_data_px2
               tc       m (TF32)                          lsconv_tc_fwd / _dcol + col2im
  lsconv_pool_ composed -                                 the ops above, then maxpool's
   fwd, _bwd   fused    - (2 x 2 windows; the default)    lsconv_pool_fwd / the _pooled
                                                          twins of the dx, dw variants
  maxpool_fwd  grid     b: threads per block              maxpool_fwd
  maxpool_bwd  grid     b                                 maxpool_bwd
  dense_fwd    cublas   b (of bias_act)                   cupy.matmul + bias_act
  dense_bwd    cublas   b (of relu_mask, colsum_add)      cupy.matmul + relu_mask, colsum_add
  joint_loss   rows     -                                 xent_rows, verif_*, joint_finalize
  sgd          grid     b                                 sgd_update

Adding a variant, e.g. a TF32 kernel of another module, is one line:
    gpu.register_variant("lsconv_fwd", "tf32", launcher, precision="tf32")
which puts the launcher in LAUNCHERS (op -> {family: launcher},
gpu_launchers.py) and the family here (``register``; give ``keys``,
``candidates`` and ``valid`` for a family with parameters). A launcher is
called as launcher(kit, shape, variant, *arrays), with the arrays that
gpu_launchers.py's docstring lists for its op; kit is the backend's CuPy and
helpers, so it imports no CuPy. Families of precision "tf32" run only when
the backend's precision (gpu.KIT.state["precision"]) is "tf32".
"""

import contextlib
import json
import os
import time
from collections import namedtuple
from pathlib import Path

from deepid2_core.backends.gpu_variants import (FAMILIES, HEURISTICS, OPS, PAIR_KEYS, PARAM_DOC,
                                                TF32_HEURISTICS, Family)


def register(op, family, keys=(), candidates=None, valid=None, precision="fp32"):
    """Add a variant family to `op` (new ops are not added here: their shape
    and heuristic belong in this file). candidates(shape) -> [params dict]
    (default: the one variant without parameters); valid(shape, params) ->
    None or the reason it cannot run that shape (default: any)."""
    if op not in FAMILIES:
        raise ValueError(f"gpu tiling: unknown op {op!r}; ops: {', '.join(OPS)}")
    if not family.isidentifier() or "." in family:
        raise ValueError(f"gpu tiling: family name {family!r} must be an identifier")
    if precision not in PRECISIONS:
        raise ValueError(f"gpu tiling: precision {precision!r}: one of {', '.join(PRECISIONS)}")
    FAMILIES[op][family] = Family(tuple(keys), candidates, valid, precision)
    _clear()


def families(op):
    """{family: Family} of `op`."""
    _check_op(op)
    return dict(FAMILIES[op])


# --------------------------------------------------------------------------
# variants and their names
PRECISIONS = ("fp32", "tf32")


class Variant(namedtuple("Variant", "op family params")):
    """params: a tuple of (key, value) in the family's key order."""
    __slots__ = ()

    @property
    def name(self):
        return self.family + "".join(f".{k}{_fmt(v)}" for k, v in self.params)

    def __getitem__(self, k):
        if isinstance(k, str):
            return dict(self.params)[k]
        return super().__getitem__(k)


def _fmt(v):
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


def _variant(op, family, params):
    keys = FAMILIES[op][family].keys
    return Variant(op, family, tuple((k, params[k]) for k in keys))


def _allowed(fam, precision):
    return fam.precision == "fp32" or fam.precision == precision


def _check_op(op):
    if op not in FAMILIES:
        raise ValueError(f"gpu tiling: unknown op {op!r}; ops: {', '.join(OPS)}")


def _heuristic(op, shape, precision):
    if precision == "tf32" and op in TF32_HEURISTICS:
        return TF32_HEURISTICS[op](shape)
    return HEURISTICS[op](shape)


def heuristic(op, shape, precision="fp32"):
    """The backend's own choice for this shape at this precision (a Variant)."""
    _check_op(op)
    return _variant(op, *_heuristic(op, shape, precision))


def variants(op, shape, precision="fp32"):
    """Every variant of `op` that can run `shape` at `precision` (the
    heuristic's pick first), for the benchmarks."""
    _check_op(op)
    out = [heuristic(op, shape, precision)]
    for family, fam in FAMILIES[op].items():
        if not _allowed(fam, precision):
            continue
        for p in (fam.candidates(shape) if fam.candidates else [{}]):
            v = _variant(op, family, p)
            if v not in out and (fam.valid is None or fam.valid(shape, p) is None):
                out.append(v)
    return out


def syntax(op):
    """The valid names of `op`'s families, with their parameters."""
    return ", ".join(f + "".join(f".{k}{PARAM_DOC.get(k, '<v>')}" for k in fam.keys)
                     for f, fam in FAMILIES[op].items())


def parse(op, text):
    """(family, {given params}) of a variant name; ValueError (one line) if it
    does not parse."""
    _check_op(op)
    bad = f"{op}: unknown variant {text!r}; valid: {syntax(op)}"
    parts = str(text).strip().split(".")
    family = parts[0]
    if family not in FAMILIES[op]:
        raise ValueError(bad)
    keys, given = FAMILIES[op][family].keys, {}
    for tok in parts[1:]:
        k, v = tok[:1], tok[1:]
        if k not in keys or k in given:
            raise ValueError(bad)
        try:
            if k in PAIR_KEYS:
                a, b = v.split("x")
                given[k] = (int(a), int(b))
            else:
                given[k] = int(v)
        except ValueError:
            raise ValueError(bad) from None
    return family, given


def resolve(op, text, shape, precision="fp32", what="forced"):
    """The Variant that `text` (a full or partial name) means for `shape`;
    ValueError naming the op, the reason and the valid variants when it
    cannot run there."""
    family, given = parse(op, text)
    fam = FAMILIES[op][family]
    if not _allowed(fam, precision):
        raise ValueError(f"{what} {op} variant {text!r} is {fam.precision}; the backend runs "
                         f"at precision {precision} (set_precision)")
    pool = []
    h_family, h_params = _heuristic(op, shape, precision)
    if h_family == family:
        pool.append({**h_params, **given})
    cands = fam.candidates(shape) if fam.candidates else [{}]
    pool += [p for p in cands if all(p.get(k) == v for k, v in given.items())]
    pool += [{**p, **given} for p in cands[:1]]
    if not cands and not fam.keys:
        pool.append({})
    reason = "no candidate for this shape"
    for p in pool:
        if any(k not in p for k in fam.keys):
            continue
        reason = fam.valid(shape, p) if fam.valid else None
        if reason is None:
            return _variant(op, family, p)
    here = ", ".join(v.name for v in variants(op, shape, precision)[:12])
    raise ValueError(f"{what} {op} variant {text!r} cannot run {type(shape).__name__} "
                     f"{shape.key()}: {reason}; valid here: {here}"
                     + (" ..." if len(variants(op, shape, precision)) > 12 else ""))


# --------------------------------------------------------------------------
# forcing: in code, and by the environment
_forced_stack = []


@contextlib.contextmanager
def forced(mapping=None, **ops):
    """Within the block, run these variants: ``forced(lsconv_dx="simple")``
    or ``forced({"lsconv_dw": "tiled.t20x64.s4"})``. Names are checked when
    the op runs (their validity depends on the shape); unknown ops now."""
    m = dict(mapping or {}, **ops)
    for op, text in m.items():
        parse(op, text)
    _forced_stack.append(m)
    _clear()
    try:
        yield
    finally:
        _forced_stack.remove(m)
        _clear()


def parse_env(text):
    """{op: variant text} of a $DEEPID2_GPU_TILING value ("op=variant,...")."""
    out = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        op, eq, v = item.partition("=")
        op = op.strip()
        if not eq or op not in FAMILIES:
            raise ValueError(f"DEEPID2_GPU_TILING: {item!r} is not op=variant with op one of "
                             f"{', '.join(OPS)}")
        try:
            parse(op, v.strip())
        except ValueError as e:
            raise ValueError(f"DEEPID2_GPU_TILING: {e}") from None
        out[op] = v.strip()
    return out


# --------------------------------------------------------------------------
# the tuning file
FORMAT = "deepid2-gpu-tuning/1"


def tuning_path():
    """The tuning file's path, or None when DEEPID2_GPU_TUNING=off."""
    env = os.environ.get("DEEPID2_GPU_TUNING")
    if env is not None and env.strip().lower() in ("", "off", "none", "0"):
        return None
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "deepid2" / "gpu_tuning.json"


_tuning_cache = {}


def load_tuning(path):
    """The tuning file's picks, {card: {precision: {op: {shape key: entry}}}}
    ({} if there is no file); ValueError (one line) if it is not one."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return {}
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _tuning_cache:
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT \
                    or not isinstance(doc.get("cards"), dict):
                raise ValueError(f"not a {FORMAT} file")
        except (OSError, ValueError) as e:
            raise ValueError(f"gpu tuning file {path}: {e} (rewrite it with bench/kernels/, "
                             "delete it, or set DEEPID2_GPU_TUNING=off)") from None
        _tuning_cache.clear()
        _tuning_cache[key] = doc["cards"]
    return _tuning_cache[key]


def tuned(path, card, precision, op, shape):
    """The tuning file's pick for this card, precision, op and shape: its
    variant name, or None."""
    if path is None or not card:
        return None
    entry = load_tuning(path).get(card, {}).get(precision, {}).get(op, {}).get(shape.key())
    return entry.get("variant") if isinstance(entry, dict) else None


def record(path, card, precision, op, shape, variant, **info):
    """Write one pick into the tuning file (created if needed; the rest of the
    file kept); info (ms, the heuristic's ms, ...) is stored beside it."""
    path = Path(path)
    doc = {"format": FORMAT, "cards": {}}
    if path.exists():
        doc["cards"] = load_tuning(path)
    entry = {"variant": variant.name if isinstance(variant, Variant) else str(variant),
             "written": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    doc["cards"].setdefault(card, {}).setdefault(precision, {}).setdefault(op, {})[
        shape.key()] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    _clear()


# --------------------------------------------------------------------------
# the choice
Choice = namedtuple("Choice", "variant source")  # source: force, forced, env, tuned, heuristic
_choices = {}


def _clear():
    _choices.clear()


# The choice is made once per op, shape and setting, and looked up on every
# call: the settings are read raw (a dict lookup; os.environ.get costs
# microseconds per op call, when a missing key raises inside it).
_ENV_RAW = getattr(os.environ, "_data", None)
_ENV_KEYS = tuple(os.environ.encodekey(k) if hasattr(os.environ, "encodekey") else k
                  for k in ("DEEPID2_GPU_TILING", "DEEPID2_GPU_TUNING"))


def _settings():
    if _ENV_RAW is not None:
        return _ENV_RAW.get(_ENV_KEYS[0]), _ENV_RAW.get(_ENV_KEYS[1])
    return os.environ.get("DEEPID2_GPU_TILING"), os.environ.get("DEEPID2_GPU_TUNING")


def choose(op, shape, card=None, precision="fp32", force=None):
    """The variant to run (a Choice: the Variant and where it came from).
    $DEEPID2_GPU_TILING and $DEEPID2_GPU_TUNING are read on every call; the
    default tuning file's place ($XDG_CACHE_HOME, ~) when an op first meets
    a shape."""
    key = (op, shape, card, precision, force, _settings())
    got = _choices.get(key)
    if got is not None:
        return got
    _check_op(op)
    env = os.environ.get("DEEPID2_GPU_TILING", "")
    tpath = tuning_path()
    got = None
    if force is not None:
        got = Choice(resolve(op, force, shape, precision, "force="), "force")
    for m in reversed(_forced_stack):
        if got is None and op in m:
            got = Choice(resolve(op, m[op], shape, precision, "forced()"), "forced")
    if got is None and env:
        text = parse_env(env).get(op)
        if text is not None:
            got = Choice(resolve(op, text, shape, precision, "DEEPID2_GPU_TILING"), "env")
    if got is None:
        text = tuned(tpath, card, precision, op, shape)
        if text is not None:
            got = Choice(resolve(op, text, shape, precision,
                                 f"tuning file {tpath} ({card}, {precision})"), "tuned")
    if got is None:
        got = Choice(heuristic(op, shape, precision), "heuristic")
    if len(_choices) > 4096:
        _choices.clear()
    _choices[key] = got
    return got
