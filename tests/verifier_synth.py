"""Synthetic data from the Joint Bayesian generative model, for the verifier tests."""
import numpy as np


def random_covariance(rng, d, scale):
    """A random SPD matrix with eigenvalues in [0.2, 1] x scale."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * (scale * rng.uniform(0.2, 1.0, d))) @ q.T


def draw_identities(rng, s_mu, s_eps, n_identities, min_images=2, max_images=7, mean=None):
    """x = mean + mu_id + eps; returns (features N x d, labels, mu, eps)."""
    d = len(s_mu)
    mu = rng.multivariate_normal(np.zeros(d), s_mu, n_identities)
    sizes = rng.integers(min_images, max_images + 1, n_identities)
    labels = np.repeat(np.arange(n_identities), sizes)
    eps = rng.multivariate_normal(np.zeros(d), s_eps, len(labels))
    x = mu[labels] + eps + (0 if mean is None else mean)
    return x, labels, mu, eps
