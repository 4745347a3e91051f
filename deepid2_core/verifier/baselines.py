"""Baseline pair scorers with the Joint Bayesian interface: `score(z1, z2)`
gives one score per row pair, higher = more similar, `score_matrix(probes,
gallery)` every probe against every gallery item. `fit` learns nothing and
returns the scorer, so that all verifiers can be trained the same way."""
import numpy as np

from .pca import as_feature_matrix


def _pair(z1, z2):
    a = as_feature_matrix(np.atleast_2d(z1), "first features")
    b = as_feature_matrix(np.atleast_2d(z2), "second features")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ValueError(f"{len(a)} first and {len(b)} second features: give as many of "
                         "each (or one of either)")
    return a, b


def _matrices(probes, gallery):
    p = as_feature_matrix(probes, "probe features")
    g = as_feature_matrix(gallery, "gallery features")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"feature dimensions differ: {p.shape[1]} and {g.shape[1]}")
    return p, g


def _unit(z, what):
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"{what} include an all-zero vector: its cosine is undefined")
    return z / norm


class L2Scorer:
    """Minus the Euclidean distance."""
    name = "l2"

    def fit(self, features=None, labels=None):
        return self

    def score(self, z1, z2):
        a, b = _pair(z1, z2)
        return -np.linalg.norm(a - b, axis=1)

    def score_matrix(self, probes, gallery):
        p, g = _matrices(probes, gallery)
        sq = (p ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None, :] - 2 * p @ g.T
        return -np.sqrt(np.maximum(sq, 0))


class CosineScorer:
    """The cosine of the angle between the two vectors."""
    name = "cosine"

    def fit(self, features=None, labels=None):
        return self

    def score(self, z1, z2):
        a, b = _pair(z1, z2)
        return np.sum(_unit(a, "first features") * _unit(b, "second features"), axis=1)

    def score_matrix(self, probes, gallery):
        p, g = _matrices(probes, gallery)
        return _unit(p, "probe features") @ _unit(g, "gallery features").T
