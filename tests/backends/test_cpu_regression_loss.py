import numpy as np
import pytest

import oracle as O
from oracle import assert_close


@pytest.mark.parametrize("n,d", [(1, 1), (3, 10), (128, 10), (700, 37)])
def test_regression_loss_matches_the_oracle(be, n, d):
    rng = np.random.default_rng(n * 100 + d)
    pred = rng.standard_normal((n, d)).astype(np.float32)
    target = rng.standard_normal((n, d)).astype(np.float32)
    loss, dpred = be.regression_loss(pred, target)
    rloss, rd = O.regression_loss(pred, target)
    assert abs(loss - rloss) <= 1e-6 * abs(rloss)
    assert_close(dpred, rd, rtol=1e-6, atol=1e-8, name="dpred")


def test_regression_loss_oracle_by_finite_differences():
    rng = np.random.default_rng(4)
    p, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    _, g = O.regression_loss(p, t)
    eps = 1e-6
    for idx in [(0, 0), (2, 3), (4, 1)]:
        q = p.copy(); q[idx] += eps
        r = p.copy(); r[idx] -= eps
        fd = (O.regression_loss(q, t)[0] - O.regression_loss(r, t)[0]) / (2 * eps)
        assert abs(fd - g[idx]) <= 1e-7


def test_regression_loss_errors(be):
    good = np.ones((4, 10), np.float32)
    with pytest.raises(TypeError, match="pred"):
        be.regression_loss(good.astype(np.float64), good)
    with pytest.raises(ValueError, match="target"):
        be.regression_loss(good, np.ones((4, 9), np.float32))
    with pytest.raises(ValueError, match="pred"):
        be.regression_loss(np.ones((4, 10, 1), np.float32), good)
