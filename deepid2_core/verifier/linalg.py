"""Symmetric-matrix helpers in float64, eigen-based so that nearly singular
covariances give a clear error or a bounded inverse, never garbage."""
import numpy as np

# eigenvalues below this fraction of the largest are raised to it before inverting
INVERSE_FLOOR = 1e-12


def symmetric(m):
    return (m + m.T) / 2


def sym_eigh(m, what):
    """Eigenvalues (ascending) and vectors of a symmetric matrix that must be
    positive definite; ValueError naming `what` otherwise."""
    w, v = np.linalg.eigh(symmetric(np.asarray(m, np.float64)))
    if not np.all(np.isfinite(w)) or w[-1] <= 0:
        raise ValueError(f"{what} is not positive definite (largest eigenvalue {w[-1]:.3g})")
    return np.maximum(w, INVERSE_FLOOR * w[-1]), v


def sym_inv(m, what="matrix"):
    w, v = sym_eigh(m, what)
    return symmetric((v / w) @ v.T)

