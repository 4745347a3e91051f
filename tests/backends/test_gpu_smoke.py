"""Every gpu kernel once, on small shapes, in debug mode (poisoned outputs,
a synchronisation and an error check after every launch).

Short on purpose: bench/gpu_check.sh runs this file under
``compute-sanitizer --tool memcheck`` and ``--tool racecheck``. With
DEEPID2_GPU_NO_POOL=1 CuPy's memory pool is switched off for the run, so
every array is its own cudaMalloc and memcheck sees an overrun past its end
(inside the pool it would land in a neighbouring array, unseen).
"""
import os

import numpy as np
import pytest

import oracle as O
from gpu_support import MODES, dev, gpu_fixture, host, restore, tol
from oracle import assert_close


@pytest.fixture(params=MODES)
def gpu(request):
    g, saved = gpu_fixture(request)
    if g.mode == "cuda" and os.environ.get("DEEPID2_GPU_NO_POOL") == "1":
        g.cp.cuda.set_allocator(None)
    yield g
    restore(g, saved)


def r32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("det", [True, False], ids=["det", "fast"])
def test_every_kernel_once(gpu, det):
    be = gpu.be
    be.set_debug(True)
    be.set_deterministic(det)
    rng = np.random.default_rng(0)
    # lsconv: ragged 2x2 grid of regions, 2 map tiles, bias tap, shared-memory dx
    n, c, h, w, k, kh, kw, region = 3, 5, 9, 8, 36, 3, 2, (4, 4)   # OH 7, OW 7
    x, wt, b = r32(rng, n, c, h, w), r32(rng, 2, 2, k, c, kh, kw), r32(rng, 2, 2, k)
    y = be.lsconv_forward(*dev(gpu, [x, wt, b]), region)
    assert_close(host(y), O.lsconv_forward(x, wt, b, region), name="y", **tol(c * kh * kw))
    dy = r32(rng, *y.shape)
    dx, dwt, db = be.lsconv_backward(dev(gpu, x), dev(gpu, wt), y, dev(gpu, dy), region)
    rdx, rdw, rdb = O.lsconv_backward(x, wt, host(y), dy, region)
    assert_close(host(dx), rdx, name="dx", **tol(k * kh * kw))
    assert_close(host(dwt), rdw, name="dw", **tol(n * 16))
    # the kernel too large for shared memory: the simple input gradient
    xb, wb = r32(rng, 1, 1, 100, 100), r32(rng, 1, 1, 2, 1, 100, 99)
    yb = be.lsconv_forward(dev(gpu, xb), dev(gpu, wb), dev(gpu, r32(rng, 1, 1, 2)), (1, 2))
    be.lsconv_backward(dev(gpu, xb), dev(gpu, wb), yb, dev(gpu, r32(rng, *yb.shape)), (1, 2))
    # maxpool, odd sizes
    p, arg = be.maxpool_forward(y, 2)
    dp = be.maxpool_backward(dev(gpu, r32(rng, *p.shape)), arg, (7, 7))
    assert dp.shape == y.shape
    # dense over two inputs
    xs = [r32(rng, 4, 3, 2), r32(rng, 4, 5)]
    wd, bd = r32(rng, 11, 7), r32(rng, 7)
    yd = be.dense_forward(dev(gpu, xs), dev(gpu, wd), dev(gpu, bd))
    be.dense_backward(dev(gpu, xs), dev(gpu, wd), yd, dev(gpu, r32(rng, 4, 7)))
    # losses
    logits, feats = r32(rng, 6, 300), r32(rng, 6, 9)
    labels = rng.integers(0, 300, 6).astype(np.int32)
    pa, pb = np.int32([0, 1, 2, 5]), np.int32([1, 2, 3, 0])
    py = np.int32([1, -1, 1, -1])
    for variant, params in [("l2", [3.0]), ("l2_pos", [3.0]), ("l1", [9.0]),
                            ("cosine", [2.0, 0.1])]:
        r = be.joint_loss(*dev(gpu, [logits, labels, feats, pa, pb, py]), variant=variant,
                          lam=0.1, params=dev(gpu, np.float32(params)))
        assert np.isfinite(r.total)
    loss, _ = be.regression_loss(dev(gpu, r32(rng, 5, 10)), dev(gpu, r32(rng, 5, 10)))
    assert np.isfinite(loss)
    # sgd, assembly
    pv, gv, vv = dev(gpu, [r32(rng, 1000), r32(rng, 1000), r32(rng, 1000)])
    be.sgd_update(pv, gv, vv, 0.01, 0.9, 5e-4)
    patches = dev(gpu, rng.integers(0, 256, (5, 7, 6, 3), dtype=np.uint8))
    out = be.assemble_batch(patches, np.array([4, 0, 2]), np.array([True, False, True]))
    assert out.shape == (3, 3, 7, 6)
