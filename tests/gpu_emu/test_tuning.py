"""The gpu backend's variant choice (deepid2_core/backends/gpu_tiling.py):
a forced variant is the one launched (in code, by the environment), a tuning
file's pick is used for its card and shape and nothing else, a bad name is
refused in one line, and every launched variant still agrees with the float64
oracle. Runs on the GPU and in the kernel emulator (tests/gpu_support.py);
the launches are seen by a spy on the backend's KIT.launch.
"""
import json

import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, dev, gpu_fixture, host, restore, tol
from oracle import assert_close

from deepid2_core.backends import gpu_tiling as tiling
from deepid2_core.backends.gpu_variants import GridShape, LsShape, dx_staging


@pytest.fixture(autouse=True)
def no_user_tuning(tmp_path, monkeypatch):
    """A tuning file of this test's own (none yet), nothing forced by the environment."""
    monkeypatch.setenv("DEEPID2_GPU_TUNING", str(tmp_path / "tuning.json"))
    monkeypatch.delenv("DEEPID2_GPU_TILING", raising=False)


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    yield g
    restore(g, saved)


@pytest.fixture
def launches(gpu, monkeypatch):
    """[(kernel, grid, block, shared bytes)] of every launch through KIT."""
    log, real = [], gpu.be.KIT.launch

    def spy(file, kname, grid, block, args, shared_mem=0):
        log.append((kname, tuple(grid), int(block), int(shared_mem)))
        return real(file, kname, grid, block, args, shared_mem)
    monkeypatch.setattr(gpu.be.KIT, "launch", spy)
    return log


# conv-like (one region), region grid, locally connected: N C H W K kh kw region
LAYERS = {
    "conv": (3, 4, 9, 8, 6, 3, 2, (7, 7)),
    "grid": (2, 5, 9, 8, 7, 3, 3, (4, 3)),
    "local": (2, 3, 5, 4, 5, 2, 2, (1, 1)),
}


def make(layer, seed=0):
    n, c, h, w, k, kh, kw, region = LAYERS[layer]
    rng = np.random.default_rng(seed)
    _, _, ry, rx = O.lsconv_grid(h, w, kh, kw, region)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((ry, rx, k, c, kh, kw)).astype(np.float32)
    y = rng.standard_normal((n, k, h - kh + 1, w - kw + 1)).astype(np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    return x, wt, y, dy, region, LsShape(n, c, h, w, k, kh, kw, *region)


def backward_checked(gpu, layer, need_dx=True):
    """lsconv_backward on the backend, compared with the oracle."""
    x, w, y, dy, region, s = make(layer)
    dx, dw, db = gpu.be.lsconv_backward(*dev(gpu, [x, w, y, dy]), region, need_dx=need_dx)
    rdx, rdw, rdb = O.lsconv_backward(x, w, y, dy, region)
    if need_dx:
        assert_close(host(dx), rdx, name="dx", **tol(s.k * s.kh * s.kw))
    assert_close(host(dw), rdw, name="dw", **tol(s.n * s.pmax))
    assert_close(host(db), rdb, name="db", **tol(s.n * s.pmax))
    return s


def kernels(log):
    return [k for k, *_ in log]


# ----------------------------------------------------------------------------
# forcing in code
@pytest.mark.parametrize("layer, variant, kernel", [
    ("conv", "simple.b64", "lsconv_bwd_data_simple"),
    ("conv", "staged", "lsconv_bwd_data"),
    ("conv", "px2", "lsconv_bwd_data_px2"),
    ("conv", "fwdconv", "lsconv_pad_grad"),
    ("grid", "simple.b128", "lsconv_bwd_data_simple"),
    ("grid", "staged.t2x16.n1.k4", "lsconv_bwd_data"),
    ("local", "staged.t5x4.n4.k5", "lsconv_bwd_data"),
])
def test_forced_dx_variant_is_launched(gpu, launches, layer, variant, kernel):
    with tiling.forced(lsconv_dx=variant):
        s = backward_checked(gpu, layer)
    assert kernel in kernels(launches), (variant, kernels(launches))
    picked = tiling.choose("lsconv_dx", s, force=variant).variant
    run = [e for e in launches if e[0] == kernel][0]
    if picked.family == "simple":
        assert run[2] == picked["b"]
    if picked.family in ("staged", "px2"):  # its tile: threads and shared memory
        threads, smem = dx_staging(s, picked, 2 if picked.family == "px2" else 1)
        assert run[2:] == (threads, smem)
    others = {"lsconv_bwd_data_simple", "lsconv_bwd_data", "lsconv_bwd_data_px2",
              "lsconv_pad_grad"} - {kernel}
    assert not others & set(kernels(launches))


@pytest.mark.parametrize("det", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("variant", ["tiled.t60x128.s3", "tiled.t20x64.s1", "tiled.s5"])
def test_forced_dw_variant_is_launched(gpu, launches, variant, det):
    gpu.be.set_deterministic(det)
    with tiling.forced({"lsconv_dw": variant}):
        s = backward_checked(gpu, "grid", need_dx=False)
    want = tiling.resolve("lsconv_dw", variant, s)
    (bm, bn), splits = want["t"], want["s"]
    run = [e for e in launches if e[0].startswith("lsconv_bwd_w_") and e[0] != "lsconv_bwd_w_reduce"]
    assert [e[0] for e in run] == [f"lsconv_bwd_w_{bm}_{bn}"]
    assert run[0][1][2] == splits                   # grid.z: the column chunks
    assert ("lsconv_bwd_w_reduce" in kernels(launches)) == det


def test_partial_name_takes_the_rest_from_the_heuristic():
    s = LsShape(64, 20, 26, 22, 40, 3, 3, 24, 20)      # conv2 at batch 64
    heur = tiling.heuristic("lsconv_dw", s)
    v = tiling.resolve("lsconv_dw", "tiled.s7", s)
    assert v["t"] == heur["t"] and v["s"] == 7 and v.name == f"tiled.t{heur['t'][0]}x" \
        f"{heur['t'][1]}.s7"


def test_forced_block_size_of_the_small_ops(gpu, launches):
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 5)).astype(np.float32)
    with tiling.forced(maxpool_fwd="grid.b64", sgd="grid.b128"):
        y, am = gpu.be.maxpool_forward(dev(gpu, x), 2)
        p = dev(gpu, x.copy())
        gpu.be.sgd_update(p, dev(gpu, x), dev(gpu, np.zeros_like(x)), 0.5, 0.0)
    ry, _ = O.maxpool_forward(x, 2)
    np.testing.assert_array_equal(host(y), ry.astype(np.float32))
    np.testing.assert_array_equal(host(p), x - np.float32(0.5) * x)
    blocks = {k: b for k, _, b, _ in launches}
    assert blocks == {"maxpool_fwd": 64, "sgd_update": 128}


def test_the_innermost_force_wins_and_choose_force_beats_all(monkeypatch):
    s = LsShape(2, 5, 9, 8, 7, 3, 3, 4, 3)
    monkeypatch.setenv("DEEPID2_GPU_TILING", "lsconv_dx=simple.b64")
    assert tiling.choose("lsconv_dx", s) == (tiling.resolve("lsconv_dx", "simple.b64", s), "env")
    with tiling.forced(lsconv_dx="simple.b128"):
        with tiling.forced(lsconv_dx="simple.b256"):
            assert tiling.choose("lsconv_dx", s).variant.name == "simple.b256"
        c = tiling.choose("lsconv_dx", s)
        assert (c.variant.name, c.source) == ("simple.b128", "forced")
        assert tiling.choose("lsconv_dx", s, force="staged").variant.family == "staged"
    assert tiling.choose("lsconv_dx", s).variant.name == "simple.b64"


# ----------------------------------------------------------------------------
# forcing by the environment
def test_environment_forces_a_variant(gpu, launches, monkeypatch):
    monkeypatch.setenv("DEEPID2_GPU_TILING", "lsconv_dx=simple.b64, lsconv_dw=tiled.t40x64.s2")
    backward_checked(gpu, "conv")
    assert ("lsconv_bwd_data_simple", 64) in [(k, b) for k, _, b, _ in launches]
    assert "lsconv_bwd_w_40_64" in kernels(launches)
    assert "lsconv_pad_grad" not in kernels(launches)   # the heuristic's dx for this layer


# ----------------------------------------------------------------------------
# the tuning file
def test_tuning_file_pick_is_used(gpu, launches, tmp_path):
    x, w, y, dy, region, s = make("grid")
    path = tmp_path / "tuning.json"
    tiling.record(path, gpu.be.card_name(), "fp32", "lsconv_dx", s, "simple.b128", ms=0.5)
    tiling.record(path, gpu.be.card_name(), "fp32", "lsconv_dw", s,
                  tiling.resolve("lsconv_dw", "tiled.t40x128.s2", s))
    assert tiling.choose("lsconv_dx", s, gpu.be.card_name()).source == "tuned"
    backward_checked(gpu, "grid")
    assert ("lsconv_bwd_data_simple", 128) in [(k, b) for k, _, b, _ in launches]
    assert [e[1][2] for e in launches if e[0] == "lsconv_bwd_w_40_128"] == [2]
    doc = json.loads(path.read_text())
    entry = doc["cards"][gpu.be.card_name()]["fp32"]["lsconv_dx"][s.key()]
    assert entry["variant"] == "simple.b128" and entry["ms"] == 0.5


def test_heuristic_when_the_file_has_no_entry_for_this_card_or_shape(gpu, launches, tmp_path):
    x, w, y, dy, region, s = make("grid")
    other = s._replace(n=s.n + 1)
    path = tmp_path / "tuning.json"
    tiling.record(path, "some other card", "fp32", "lsconv_dx", s, "simple.b64")
    tiling.record(path, gpu.be.card_name(), "fp32", "lsconv_dx", other, "simple.b64")
    tiling.record(path, gpu.be.card_name(), "tf32", "lsconv_dx", s, "simple.b64")
    c = tiling.choose("lsconv_dx", s, gpu.be.card_name())
    assert c == (tiling.heuristic("lsconv_dx", s), "heuristic")
    backward_checked(gpu, "grid")
    assert "lsconv_bwd_data_simple" not in kernels(launches)
    assert "lsconv_bwd_data" in kernels(launches)       # the heuristic's staged gather


def test_tuning_off_and_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPID2_GPU_TUNING", "off")
    assert tiling.tuning_path() is None
    monkeypatch.delenv("DEEPID2_GPU_TUNING")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tiling.tuning_path() == tmp_path / "deepid2" / "gpu_tuning.json"


# ----------------------------------------------------------------------------
# bad names: one line, naming the op and what is valid
def _one_line(e, *words):
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


S_GRID = LsShape(2, 5, 9, 8, 7, 3, 3, 4, 3)


@pytest.mark.parametrize("name, words", [
    ("tiles", ["lsconv_dx", "unknown variant 'tiles'", "simple.b<threads>", "fwdconv"]),
    ("simple.bx", ["lsconv_dx", "simple.b<threads>"]),
    ("simple.q4", ["lsconv_dx", "staged.t<A>x<B>.n<images>.k<maps>"]),
    ("px2", ["lsconv_dx", "px2", "one region", "valid here:", "staged.t"]),
    ("fwdconv", ["lsconv_dx", "one region", "valid here:"]),
    ("simple.b1000", ["b = 1000 threads", "valid here:"]),
    ("staged.t9x8.n8.k7", ["more than 256", "valid here:"]),
])
def test_bad_forced_name_is_refused_in_one_line(name, words):
    with pytest.raises(ValueError) as e:
        tiling.choose("lsconv_dx", S_GRID, force=name)
    _one_line(e, *words)


@pytest.mark.parametrize("env, words", [
    ("lsconv_dx", ["DEEPID2_GPU_TILING", "op=variant", "lsconv_fwd"]),
    ("conv=simple", ["DEEPID2_GPU_TILING", "'conv=simple'", "lsconv_dw"]),
    ("lsconv_dw=tiled.s", ["DEEPID2_GPU_TILING", "lsconv_dw", "tiled.t<A>x<B>.s<splits>"]),
    ("lsconv_dw=tiled.t21x64", ["DEEPID2_GPU_TILING", "lsconv_dw", "tile 21x64", "valid here:"]),
])
def test_bad_environment_is_refused_in_one_line(monkeypatch, env, words):
    monkeypatch.setenv("DEEPID2_GPU_TILING", env)
    with pytest.raises(ValueError) as e:
        tiling.choose("lsconv_dw", S_GRID)
    _one_line(e, *words)


def test_forced_refuses_an_unknown_op_at_once():
    with pytest.raises(ValueError) as e:
        with tiling.forced(conv_dx="simple"):
            pass
    _one_line(e, "unknown op 'conv_dx'", "lsconv_dx")


def test_stale_or_broken_tuning_file_is_one_line(tmp_path):
    path = tmp_path / "tuning.json"
    tiling.record(path, "card", "fp32", "lsconv_dx", S_GRID, "px2")   # cannot run S_GRID
    with pytest.raises(ValueError) as e:
        tiling.choose("lsconv_dx", S_GRID, card="card")
    _one_line(e, "tuning file", str(path), "one region", "valid here:")
    path.write_text("{not json")
    with pytest.raises(ValueError) as e:
        tiling.choose("lsconv_dx", S_GRID._replace(n=5), card="card")
    _one_line(e, str(path), "DEEPID2_GPU_TUNING=off")


# ----------------------------------------------------------------------------
# the enumerator and the registry
@pytest.mark.parametrize("layer", LAYERS)
def test_every_enumerated_variant_is_valid_and_named_uniquely(layer):
    s = make(layer)[5]
    for op in ("lsconv_fwd", "lsconv_dw", "lsconv_dx"):
        vs = tiling.variants(op, s)
        assert vs[0] == tiling.heuristic(op, s)
        names = [v.name for v in vs]
        assert len(set(names)) == len(names)
        for v in vs:   # each name means itself
            assert tiling.resolve(op, v.name, s) == v
    fams = {v.family for v in tiling.variants("lsconv_dx", s)}
    assert fams == ({"fwdconv", "simple", "staged", "px2"} if s.r == 1 else {"simple", "staged"})


def test_registered_family_is_enumerated_forced_and_launched(gpu, monkeypatch):
    from deepid2_core.backends import gpu_variants
    monkeypatch.setitem(gpu_variants.FAMILIES, "maxpool_fwd",
                        dict(gpu_variants.FAMILIES["maxpool_fwd"]))
    monkeypatch.setitem(gpu.be.LAUNCHERS, "maxpool_fwd", dict(gpu.be.LAUNCHERS["maxpool_fwd"]))
    seen = []

    def twice_the_blocks(kit, g, v, *args):
        seen.append(g.total)
        return gpu.be.LAUNCHERS["maxpool_fwd"]["grid"](kit, g, v._replace(
            family="grid", params=(("b", 32),)), *args)
    gpu.be.register_variant("maxpool_fwd", "mine", twice_the_blocks)
    g = GridShape(2 * 3 * 3 * 2)
    assert "mine" in [v.name for v in tiling.variants("maxpool_fwd", g)]
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5)).astype(np.float32)
    with tiling.forced(maxpool_fwd="mine"):
        y, _ = gpu.be.maxpool_forward(dev(gpu, x), 2)
    assert seen == [g.total]
    np.testing.assert_array_equal(host(y), O.maxpool_forward(x, 2)[0].astype(np.float32))
    with pytest.raises(ValueError) as e:
        tiling.register("maxpool_fwd", "tc", precision="tf16")
    _one_line(e, "precision 'tf16'")
