"""The refinement ConvNet of the landmark cascade (nets.refine): its shapes,
finite differences in float64, and the cpu backend against the oracle."""

from types import SimpleNamespace

import numpy as np
import pytest

import oracle
import oracle_backend
from oracle import assert_close, check_param_gradients
from deepid2_core.nets import refine as NR

ORACLE = SimpleNamespace(**{k: getattr(oracle_backend, k) for k in dir(oracle_backend)
                            if not k.startswith("_")}, regression_loss=oracle.regression_loss)
TINY_LEVEL = NR.RefineLevelConfig(patches=(1.2,), size=11, conv1=4, conv2=5, hidden=6)


def refine_loss_and_grads(be, params, x, target, cfg=TINY_LEVEL):
    net = NR.RefineNet(cfg, be)
    acts = net.forward(params, x)
    loss, dout = be.regression_loss(acts["out"], target)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, dout, grads)
    return float(loss), grads, acts


def refine_inputs(seed, dtype, cfg=TINY_LEVEL, n=3):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in NR.init_refine_params(cfg, rng).items()}
    for k in params:
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((n, 1, cfg.size, cfg.size)).astype(dtype)
    return params, x, rng.random((n, 2)).astype(dtype)


def test_refine_net_shapes_are_those_of_the_paper():
    cfg = NR.RefineLevelConfig()
    assert cfg.size == 15 and NR.refine_shapes(cfg) == (12, 6, 4, 2)
    s = NR.refine_param_shapes(cfg)
    assert s["conv1.w"] == (1, 1, 20, 1, 4, 4) and s["conv2.w"] == (1, 1, 40, 20, 3, 3)
    assert s["fc.w"] == (160, 60) and s["out.w"] == (60, 2)
    assert NR.refine_shapes(TINY_LEVEL) == (8, 4, 2, 1)
    for bad in (dict(size=9), dict(patches=()), dict(patches=(1.0, -1.0)), dict(hidden=0)):
        with pytest.raises(ValueError):
            NR.RefineLevelConfig(**bad)
    assert NR.RefineLevelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("size", [11, 14])  # odd and even pool inputs
def test_refine_net_finite_differences_in_float64(size):
    cfg = NR.RefineLevelConfig(patches=(1.0,), size=size, conv1=4, conv2=5, hidden=6)
    params, x, target = refine_inputs(5, np.float64, cfg)
    _, grads, acts = refine_loss_and_grads(ORACLE, params, x, target, cfg)
    assert all((acts[k] > 0).any() for k in ("conv1", "conv2", "fc"))
    check_param_gradients(lambda: refine_loss_and_grads(ORACLE, params, x, target, cfg)[0],
                          params, grads)


def test_refine_net_cpu_matches_the_oracle(be):
    params, x, target = refine_inputs(6, np.float32, NR.RefineLevelConfig(), n=5)
    loss, grads, acts = refine_loss_and_grads(be, params, x, target, NR.RefineLevelConfig())
    rloss, rgrads, racts = refine_loss_and_grads(ORACLE, params, x, target,
                                                 NR.RefineLevelConfig())
    assert abs(loss - rloss) <= 1e-5 * abs(rloss) + 1e-6
    assert_close(acts["out"], racts["out"], rtol=1e-4, atol=1e-5, name="out")
    for k in sorted(grads):
        scale = np.abs(rgrads[k]).max()
        assert_close(grads[k], rgrads[k], rtol=1e-3, atol=1e-4 * scale + 1e-8, name=k)
