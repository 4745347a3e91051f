"""The whole network: finite differences in float64 through the oracle
backend, and the cpu backend against that oracle, on a tiny DeepID2."""

import numpy as np
import pytest

import oracle_backend
from oracle import assert_close, check_param_gradients
from deepid2_core.nets.deepid2 import DeepID2, NetConfig, conv_shapes, init_params, param_shapes

TINY = NetConfig(n_classes=5, height=33, width=31, channels=2)


def loss_and_grads(be, params, x, labels, pairs, variant, lam, vparams):
    net = DeepID2(TINY, be)
    acts = net.forward(params, x)
    jl = be.joint_loss(acts["logits"], labels, acts["deepid"], *pairs, variant=variant, lam=lam,
                       params=vparams)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, jl.dlogits, jl.dfeatures, grads)
    return jl, grads, acts


def make_inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in init_params(TINY, seed).items()}
    for k in params:  # non-zero biases, so they matter
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((4, 2, 33, 31)).astype(dtype)
    labels = np.int32([0, 3, 3, 1])
    pairs = (np.int32([0, 1]), np.int32([2, 3]), np.int32([-1, 1]))
    return params, x, labels, pairs


def test_shapes_follow_the_input():
    s = conv_shapes(NetConfig(n_classes=10))
    assert [c.out_hw for c in s] == [(52, 44), (24, 20), (10, 8), (4, 3)]
    assert s[2].region == (5, 4) and s[2].grid == (2, 2) and s[3].region == (1, 1)
    sq = param_shapes(NetConfig(n_classes=10, height=47, width=47, channels=1))
    assert sq["conv3.w"] == (2, 2, 60, 40, 3, 3) and sq["deepid.w"] == (60 * 16 + 80 * 9, 160)
    with pytest.raises(ValueError, match="too small"):
        conv_shapes(NetConfig(n_classes=3, height=20, width=20))


@pytest.mark.parametrize("variant,vparams", [("l2", [3.0]), ("cosine", [2.0, -0.5])])
def test_whole_network_finite_differences(variant, vparams):
    params, x, labels, pairs = make_inputs(1, np.float64)
    vp = np.array(vparams)
    jl, grads, _ = loss_and_grads(oracle_backend, params, x, labels, pairs, variant, 0.5, vp)
    check_param_gradients(
        lambda: loss_and_grads(oracle_backend, params, x, labels, pairs, variant, 0.5, vp)[0].total,
        params, grads, atol=1e-6)


def test_cpu_backend_matches_the_oracle_on_the_whole_network(be):
    params, x, labels, pairs = make_inputs(2, np.float32)
    vp = np.float32([3.0])
    jl, grads, acts = loss_and_grads(be, params, x, labels, pairs, "l2", 0.5, vp)
    rjl, rgrads, racts = loss_and_grads(oracle_backend, params, x, labels, pairs, "l2", 0.5, vp)
    assert abs(jl.total - rjl.total) <= 1e-5 * abs(rjl.total) + 1e-6
    assert_close(acts["deepid"], racts["deepid"], rtol=1e-4, atol=1e-5, name="deepid")
    for k in sorted(grads):
        scale = np.abs(rgrads[k]).max()
        assert_close(grads[k], rgrads[k], rtol=1e-3, atol=1e-4 * scale + 1e-7, name=k)
