"""PCA: components against a float64 eigen-decomposition of np.cov, both
solver paths (N >= D and N < D), rank errors."""
import numpy as np
import pytest

from deepid2_core.verifier import PCA


def close(x, ref, atol, rtol):
    bad = np.abs(np.asarray(x) - ref) > atol + rtol * np.abs(ref)
    assert not bad.any(), f"max |x-ref| {np.abs(np.asarray(x) - ref).max():.3g}"


def low_rank_data(rng, n, dim, rank):
    scales = np.linspace(3, 1, rank)                   # distinct variances
    return (rng.standard_normal((n, rank)) * scales) @ rng.standard_normal((rank, dim)) \
        + rng.normal(0, 5, dim)


@pytest.mark.parametrize("n, dim", [(200, 12), (9, 30)])
def test_components_are_the_leading_eigenvectors_of_the_covariance(n, dim):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, dim)) * np.linspace(4, 0.5, dim)
         + rng.normal(0, 3, dim)).astype(np.float32)
    d = 5
    pca = PCA.fit(x, d)
    cov = np.cov(x.astype(np.float64).T)
    w, v = np.linalg.eigh(cov)
    close(pca.variances, w[::-1][:d], 1e-9, 1e-8)
    close(np.abs(pca.components.T @ v[:, ::-1][:, :d]), np.eye(d), 1e-7, 0)
    close(pca.components.T @ pca.components, np.eye(d), 1e-12, 0)
    z = pca.transform(x)
    close(z.mean(0), np.zeros(d), 1e-9, 0)
    close(np.cov(z.T), np.diag(pca.variances), 1e-8, 1e-8)


def test_fit_is_reproducible_in_sign():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6))
    a, b = PCA.fit(x, 3), PCA.fit(x[::-1], 3)
    close(a.components, b.components, 1e-10, 0)


def test_d_above_rank_and_too_few_samples_are_errors():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=r"d=5 exceeds the rank 3"):
        PCA.fit(low_rank_data(rng, 40, 10, 3), 5)
    with pytest.raises(ValueError, match=r"exceeds the rank 5 .*6 samples"):
        PCA.fit(rng.standard_normal((6, 10)), 6)
    with pytest.raises(ValueError, match="at least 2 training samples"):
        PCA.fit(rng.standard_normal((1, 10)), 1)
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        PCA.fit(np.vstack([rng.random((7, 4)), [np.nan, 1, 2, 3]]), 2)
    pca = PCA.fit(rng.standard_normal((20, 4)), 2)
    with pytest.raises(ValueError, match="dimension 3, this PCA was fitted on 4"):
        pca.transform(np.ones((2, 3)))
