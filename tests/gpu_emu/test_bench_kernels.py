"""bench/kernels/ in the kernel emulator: every script runs every variant of
its op family at small DeepID2 shapes and finds each in agreement with the
float64 oracle; a variant broken on purpose fails the check with one clear
line (a fused lsconv_pool forward also where it is merely not bit-identical
to the composition); the sweep writes picks the backend then uses. (Speed is not measured
here: on a GPU the same scripts time the variants.)"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from package_home import PACKAGE_HOME

from deepid2_core.backends import gpu_launchers
from deepid2_core.backends import gpu_tiling as tiling
from deepid2_core.backends.gpu_variants import WGRAD_TILES, LsPoolShape

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels"
SCRIPTS = ("lsconv_fwd", "lsconv_dw", "lsconv_dx", "lsconv_pool", "maxpool", "dense", "loss",
           "sgd")
pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not in this tree")


def _env(tmp_path):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_HOME,
                                                         os.environ.get("PYTHONPATH", "")]),
                DEEPID2_GPU_TUNING=str(tmp_path / "user_tuning.json"), OMP_NUM_THREADS="1")


def _rows(out):
    """{case: number of variant rows} of a script's table."""
    rows, case = {}, None
    for line in out.splitlines():
        if line.startswith("-- "):
            case = line.split(" (")[0][3:]
            rows[case] = 0
        elif case and line.startswith("  ") and not line.startswith("  case"):
            rows[case] += 1
        elif not line.strip():
            case = None
    return rows


@pytest.mark.parametrize("script,precision", [(s, "fp32") for s in SCRIPTS]
                         + [("lsconv_pool", "tf32")])
def test_script_checks_every_variant_in_the_emulator(script, precision, tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--emu", "--batches", "2",
                        "--precision", precision],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "every variant run agrees with the float64 oracle" in out
    assert "FAIL" not in out and "picks not written" in out
    assert "variant" in out and "GFLOP/s" in out and "%peak" in out and "regs" in out
    rows = _rows(out)
    assert rows, out
    sys.path.insert(0, str(BENCH))
    import layers   # the cases the script ran: each shows every enumerated variant
    args = type("A", (), dict(batches=[2], emu=True, layers=None, shape=[]))()
    want = {}
    if script == "lsconv_pool":   # conv1..conv3, composed and fused, forward and backward
        want = {f"{op} {lab}": len(tiling.variants(op, LsPoolShape(*s, 2), precision))
                for lab, s in layers.convs(args, pooled=True)
                for op in ("lsconv_pool_fwd", "lsconv_pool_bwd")}
        assert len(want) == 6 and set(want.values()) == {2}, want
    elif script.startswith("lsconv"):
        want = {f"{script} {lab}": len(tiling.variants(script, s, precision))
                for lab, s in layers.convs(args)}
    for case, n in want.items():
        assert rows.get(case) == n, (case, rows.get(case), n)
    if script == "sgd":   # the one-launch update of every tensor against one launch each
        many = [line.split() for line in out.splitlines()
                if line.startswith(("  per tensor", "  one launch"))]
        assert [r[-2:] for r in many] == [["12", "equal"], ["1", "equal"]], many
        assert "sgd_update_many: bit-identical to sgd_update per tensor, agrees with the " \
               "float64 oracle" in out
    assert not (tmp_path / "user_tuning.json").exists()   # the emulator writes no picks


def _run_in_process(argv, family="lsconv_dw"):
    sys.path.insert(0, str(BENCH))
    import importlib
    import harness
    args = harness.parse("test", argv)
    return harness.run(args, family, importlib.import_module(family).cases)


def test_a_broken_variant_fails_the_check(monkeypatch, capsys):
    """One variant (every tile at 2 column chunks) perturbs one element of dw by
    1e-3 of its size: those variants, and only those, fail with one line each."""
    real = gpu_launchers.LAUNCHERS["lsconv_dw"]["tiled"]

    def broken(kit, s, v, x, grad, dw, db):
        real(kit, s, v, x, grad, dw, db)
        if v["s"] == 2:
            dw[0, 0, 0, 0, 0, 0] += 1e-3 * (1.0 + abs(float(dw[0, 0, 0, 0, 0, 0])))
    monkeypatch.setitem(gpu_launchers.LAUNCHERS, "lsconv_dw",
                        dict(gpu_launchers.LAUNCHERS["lsconv_dw"], tiled=broken))
    status, picks = _run_in_process(["--emu", "--batches", "2", "--layers", "conv1",
                                     "--no-write"])
    out = capsys.readouterr().out
    assert status == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert fails and all(".s2 " in line for line in fails), fails
    assert len(fails) == len(WGRAD_TILES)     # each tile's 2-chunk variant
    assert all("dw[0, 0, 0, 0, 0, 0]: got" in line and "> " in line for line in fails), fails
    assert "FAILED: 6 variant(s) failed their check" in out
    assert all(p["best"] and ".s2" not in p["best"] for p in picks)   # never picked
    assert all(len(p["failed"]) == 6 for p in picks)


def test_sweep_writes_picks_the_backend_uses(tmp_path, monkeypatch):
    tuning = tmp_path / "tuning.json"
    p = subprocess.run([sys.executable, str(BENCH / "sweep.py"), "--emu", "--batches", "2",
                        "--families", "lsconv_dw", "sgd", "--layers", "conv3", "conv1.w",
                        "--tuning", str(tuning), "--json", str(tmp_path / "picks.json")],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    import json
    picks = json.loads((tmp_path / "picks.json").read_text())["picks"]
    assert [q["op"] for q in picks] == ["lsconv_dw", "sgd"]
    assert "sgd_update_many: 1 tensor(s) (960 elements)" in p.stdout   # sgd.after(), from the sweep
    monkeypatch.setenv("DEEPID2_GPU_TUNING", str(tuning))
    sys.path.insert(0, str(BENCH))
    import layers
    args = type("A", (), dict(batches=[2], emu=True, layers=["conv3"], shape=[]))()
    (_, s), = layers.convs(args)
    card = "deepid2 kernel emulator"
    c = tiling.choose("lsconv_dw", s, card)
    assert c.source == "tuned" and c.variant.name == picks[0]["best"]
    assert tiling.choose("lsconv_dw", s, "another card").source == "heuristic"


def test_budget_stops_the_sweep_and_keeps_what_it_has(tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / "sweep.py"), "--emu", "--batches", "2",
                        "--budget", "0.001", "--tuning", str(tmp_path / "t.json")],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "budget of 0.001 s spent" in p.stdout
    assert "sweep: 0 cases" in p.stdout


def test_bad_shape_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / "lsconv_fwd.py"), "--emu", "--shape", "1,2,3"],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == \
        "--shape '1,2,3': expected 9 positive integers, N,C,H,W,K,kh,kw,rh,rw"


def test_peak_table_knows_the_lent_cards():
    sys.path.insert(0, str(BENCH))
    import harness
    assert harness.peaks("NVIDIA H200").gbs == 4800
    assert harness.peaks("NVIDIA H100 80GB HBM3").label == "H100 SXM"
    assert harness.peaks("NVIDIA H100 PCIe").fp32 == 51.2
    assert harness.peaks("NVIDIA A100-SXM4-80GB").tf32 == 156.0
    assert harness.peaks("deepid2 kernel emulator") is None
    assert np.isfinite(harness.peaks("NVIDIA H100 NVL").tf32)



def _nudge_y(s, y, am):   # one ulp up on one pooled output: within the oracle's bound
    y[0, 0, 0, 0] = float(np.nextafter(np.float32(float(y[0, 0, 0, 0])), np.float32(np.inf)))
    return f"y: 1 of {y.size} elements not bit-identical to composed's"


def _move_argmax(s, y, am):   # one argmax into the window below its own
    am[0, 0, 0, 0] = int(am[0, 0, 0, 0]) + 2 * s.ow
    return f"argmax[0, 0, 0, 0]: {int(am[0, 0, 0, 0])} is outside its 2x2 window"


@pytest.mark.parametrize("breakage", [_nudge_y, _move_argmax])
def test_a_broken_fused_pool_fails_and_is_never_picked(breakage, monkeypatch, capsys):
    """The fused forward, broken after its kernel ran: an output one ulp off the
    composition's bits (the oracle's bound cannot see it) or an argmax out of
    its window; each pooled layer's fused row fails with one line, the
    composition is picked, and the backward's rows are untouched."""
    from deepid2_core.backends import gpu_tc
    real = gpu_tc.LAUNCHERS["lsconv_pool_fwd"]["fused"]
    wanted = []

    def broken(kit, s, v, x, w, b, relu):
        y, am = real(kit, s, v, x, w, b, relu)
        wanted.append(breakage(s, y, am))
        return y, am
    monkeypatch.setitem(gpu_launchers.LAUNCHERS, "lsconv_pool_fwd",
                        dict(gpu_launchers.LAUNCHERS.get("lsconv_pool_fwd", {}), fused=broken))
    status, picks = _run_in_process(["--emu", "--batches", "2", "--no-write"], "lsconv_pool")
    out = capsys.readouterr().out
    assert status == 1
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL ")]
    assert len(fails) == 3 and len(wanted) == 3, (fails, wanted)   # conv1..conv3's fused fwd
    for fail, text, conv in zip(fails, wanted, ("conv1", "conv2", "conv3")):
        assert fail == f"FAIL lsconv_pool_fwd fused ({conv} N=2): {text}", (fail, text)
    assert "lsconv_pool: FAILED: 3 variant(s) failed their check" in out
    fwd = [p for p in picks if p["op"] == "lsconv_pool_fwd"]
    assert len(fwd) == 3 and all(p["best"] == "composed" and p["failed"] == ["fused"]
                                 for p in fwd), fwd
    assert all(p["best"] and not p["failed"] for p in picks if p["op"] == "lsconv_pool_bwd")
