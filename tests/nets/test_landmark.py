"""The 5-point landmark ConvNet (nets.landmark): its shapes, gradients of the whole
network in float64 through the oracle, and the cpu backend against the oracle."""

from types import SimpleNamespace

import numpy as np
import pytest

import oracle
import oracle_backend
from oracle import assert_close, check_param_gradients
from deepid2_core.nets import landmark as NL

ORACLE = SimpleNamespace(**{k: getattr(oracle_backend, k) for k in dir(oracle_backend)
                            if not k.startswith("_")}, regression_loss=oracle.regression_loss)
TINY = NL.LandmarkNetConfig(size=31, hidden=12)  # 28 -> 14 -> 12 -> 6 -> 4 -> 2 -> 1x1 conv4


def loss_and_grads(be, params, x, target):
    net = NL.LandmarkNet(TINY, be)
    acts = net.forward(params, x)
    loss, dout = be.regression_loss(acts["out"], target)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, dout, grads)
    return float(loss), grads, acts


def tiny_inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in NL.init_params(TINY, seed).items()}
    for k in params:  # non-zero biases, so they matter
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((3, 1, 31, 31)).astype(dtype)
    target = rng.random((3, 10)).astype(dtype)
    return params, x, target


def test_shapes_are_those_of_f1():
    s = NL.conv_shapes(NL.LandmarkNetConfig())
    assert [c.out_hw for c in s] == [(36, 36), (16, 16), (6, 6), (2, 2)]
    assert [c.region for c in s] == [(36, 36), (16, 16), (3, 3), (1, 1)]
    shapes = NL.param_shapes(NL.LandmarkNetConfig())
    assert shapes["conv3.w"] == (2, 2, 60, 40, 3, 3) and shapes["conv4.w"] == (2, 2, 80, 60, 2, 2)
    assert shapes["fc.w"] == (320, 120) and shapes["out.w"] == (120, 10)
    with pytest.raises(ValueError, match="too small"):
        NL.LandmarkNetConfig(size=12)


def test_whole_network_finite_differences_in_float64():
    params, x, target = tiny_inputs(1, np.float64)
    _, grads, acts = loss_and_grads(ORACLE, params, x, target)
    assert all((acts[k] > 0).any() for k in ("conv1", "conv2", "conv3", "conv4", "fc"))
    check_param_gradients(lambda: loss_and_grads(ORACLE, params, x, target)[0], params, grads)


def test_cpu_backend_matches_the_oracle_on_the_whole_network(be):
    params, x, target = tiny_inputs(2, np.float32)
    loss, grads, acts = loss_and_grads(be, params, x, target)
    rloss, rgrads, racts = loss_and_grads(ORACLE, params, x, target)
    assert abs(loss - rloss) <= 1e-5 * abs(rloss) + 1e-6
    assert_close(acts["out"], racts["out"], rtol=1e-4, atol=1e-5, name="out")
    for k in sorted(grads):
        scale = np.abs(rgrads[k]).max()
        assert_close(grads[k], rgrads[k], rtol=1e-3, atol=1e-4 * scale + 1e-8, name=k)
