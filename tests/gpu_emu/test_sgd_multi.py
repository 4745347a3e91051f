"""One SGD launch for every parameter (gpu.sgd_update_many, gpu_step.py,
kernels/sgd_multi.cu): the same bits as gpu.sgd_update per tensor, with
per-tensor hyperparameters, sizes that do not fill a block, and the
training's layout (views of one flat gradient buffer); on a GPU ("cuda")
and in the emulator ("emu")."""
import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, bits, host
from tc_support import load_tc

SIZES = [1, 7, 256, 257, 1000, 3001, 0]


@pytest.fixture(params=MODES)
def gpu(request):
    return load_tc(request.param)


def tensors(seed):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(n).astype(np.float32) for n in SIZES] for _ in range(3)]


def test_one_launch_gives_the_per_tensor_bits(gpu):
    p, g, v = tensors(0)
    lr = [0.01 * (i + 1) for i in range(len(SIZES))]
    wd = [5e-4 if i % 2 else 0.0 for i in range(len(SIZES))]
    d = gpu.cp.asarray
    ours = [[d(a) for a in t] for t in (p, g, v)]
    ref = [[d(a) for a in t] for t in (p, g, v)]
    for step in range(3):   # velocities carry over; lr changes between calls
        lrs = [x / (step + 1) for x in lr]
        gpu.be.sgd_update_many(*ours, lrs, 0.9, wd)
        for i in range(len(SIZES)):
            gpu.be.sgd_update(ref[0][i], ref[1][i], ref[2][i], lrs[i], 0.9, wd[i])
        for i in range(len(SIZES)):
            assert bits(ours[0][i]) == bits(ref[0][i]), (step, i)
            assert bits(ours[2][i]) == bits(ref[2][i]), (step, i)
    p1, v1 = O.sgd_update(p[3], g[3], v[3], lr[3], 0.9, wd[3])   # and the oracle, one step
    pd, gd, vd = d(p[3]), d(g[3]), d(v[3])
    gpu.be.sgd_update_many([pd], [gd], [vd], lr[3], 0.9, wd[3])
    np.testing.assert_allclose(host(pd), p1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host(vd), v1, rtol=1e-6, atol=1e-7)


def test_views_of_one_flat_buffer(gpu):
    """Trainer's Gradients: every gradient is a view of one flat buffer."""
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (5,), (2, 3, 2)]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = gpu.cp.asarray(rng.standard_normal(sum(sizes)).astype(np.float32))
    offs = np.concatenate([[0], np.cumsum(sizes)])
    grads = [flat[offs[i]:offs[i + 1]].reshape(s) for i, s in enumerate(shapes)]
    params = [gpu.cp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    vel = [gpu.cp.zeros(s, dtype=np.float32) for s in shapes]
    want = [O.sgd_update(host(p), host(g), 0 * host(p), 0.1, 0.9, 0.0)[0] for p, g in
            zip(params, grads)]
    gpu.be.sgd_update_many(params, grads, vel, 0.1)
    for p, w in zip(params, want):
        np.testing.assert_allclose(host(p), w, rtol=1e-6, atol=1e-7)


def test_arguments_are_checked(gpu):
    d = gpu.cp.asarray
    p, g = d(np.ones(4, np.float32)), d(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="grads\\[0\\]: expected shape \\(4,\\)"):
        gpu.be.sgd_update_many([p], [d(np.ones(3, np.float32))], [d(np.zeros(4, np.float32))],
                               0.1)
    with pytest.raises(ValueError, match="lists of one length"):
        gpu.be.sgd_update_many([p], [g], [], 0.1)
    with pytest.raises(ValueError, match="lr: 2 values for 1 tensors"):
        gpu.be.sgd_update_many([p], [g], [d(np.zeros(4, np.float32))], [0.1, 0.2])
    with pytest.raises(TypeError, match="velocities\\[0\\] must have dtype float32"):
        gpu.be.sgd_update_many([p], [g], [d(np.zeros(4))], 0.1)
