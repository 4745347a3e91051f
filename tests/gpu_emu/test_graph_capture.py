"""A whole training step captured as a CUDA graph (gpu.capture_graph, gpu_step.py): a
small DeepID2 network's forward, a squared-error gradient, its backward
through the fused pools, and one SGD launch for every parameter. Replaying
the graph gives the bytes that running the step directly gives, step after
step; the capture itself runs nothing; what a graph cannot hold (a host
read such as joint_loss's, debug mode's syncs) is refused in one line.
On a GPU ("cuda") and in the emulator ("emu"), where the capture records
every device operation in order and the replay runs the record."""
import numpy as np
import pytest

from gpu_support import MODES, bits
from tc_support import variant_modes
from deepid2_core.nets.deepid2 import DeepID2, NetConfig, init_params

CFG = NetConfig(n_classes=5, height=32, width=32, channels=1, feature_dim=16)
BATCH = 2


@pytest.fixture(params=MODES)
def gpu(request):
    with variant_modes(request.param, debug=False) as g:   # debug mode syncs: no capture
        yield g


def training_step(gpu, seed=0):
    """(step function, params, velocities): the step updates the parameters in place."""
    rng = np.random.default_rng(seed)
    host = init_params(CFG, 3)
    for k in host:   # random biases and velocities too: never zeros
        if k.endswith(".b"):
            host[k] = 0.1 * rng.standard_normal(host[k].shape).astype(np.float32)
    d = gpu.cp.asarray
    names = sorted(host)
    p = {k: d(host[k]) for k in names}
    vel = {k: d(0.01 * rng.standard_normal(host[k].shape).astype(np.float32)) for k in names}
    sizes = [host[k].size for k in names]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    flat = gpu.cp.zeros(int(offs[-1]), dtype=np.float32)
    grads = {k: flat[offs[i]:offs[i + 1]].reshape(host[k].shape) for i, k in enumerate(names)}
    net = DeepID2(CFG, gpu.be)   # the pools: the fused variants, the default
    x = d(rng.standard_normal((BATCH, 1, 32, 32)).astype(np.float32))
    target = d(rng.standard_normal((BATCH, CFG.n_classes)).astype(np.float32))
    dfeat = d(0.01 * rng.standard_normal((BATCH, CFG.feature_dim)).astype(np.float32))
    wd = [5e-4 if k.endswith(".w") else 0.0 for k in names]

    def step():
        flat.fill(0)
        acts = net.forward(p, x)
        dlogits = (acts["logits"] - target) * np.float32(1.0 / BATCH)
        net.backward(p, acts, dlogits, dfeat, grads)
        gpu.be.sgd_update_many([p[k] for k in names], [grads[k] for k in names],
                               [vel[k] for k in names], 0.05, 0.9, wd)
        return acts["logits"]
    return step, p, vel


def state(p, vel, logits):
    return [bits(a) for a in (*p.values(), *vel.values(), logits)]


def test_replay_gives_the_bytes_of_direct_steps(gpu):
    step, p, vel = training_step(gpu)
    direct = [state(p, vel, step()) for _ in range(3)]
    assert direct[0] != direct[1]              # the steps do change the parameters

    step, p, vel = training_step(gpu)
    cap = gpu.be.capture_graph(step, warmup=1)     # the warm-up is step 1, for real
    assert state(p, vel, cap.outputs)[:-1] == direct[0][:-1]   # the capture ran nothing
    for want in direct[1:]:
        logits = cap.replay()
        assert logits is cap.outputs
        assert state(p, vel, logits) == want


def test_what_a_graph_cannot_hold_is_refused(gpu):
    d = gpu.cp.asarray
    logits = d(np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32))
    labels = d(np.array([0, 1, 2, 0], np.int32))
    feats = d(np.ones((4, 2), np.float32))
    pairs = d(np.array([0], np.int32))

    def loss():
        return gpu.be.joint_loss(logits, labels, feats, pairs, pairs + 1, pairs + 1)
    with pytest.raises(RuntimeError, match="capture: fn did what a CUDA graph cannot hold"):
        gpu.be.capture_graph(loss)
    gpu.be.set_debug(True)
    with pytest.raises(RuntimeError, match="set_debug\\(False\\) first"):
        gpu.be.capture_graph(lambda: None)
