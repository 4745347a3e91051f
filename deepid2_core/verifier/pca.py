"""Principal component analysis in float64: the verifier's first step.

`PCA.fit(features, d)` keeps the training mean and the d leading principal
directions; `transform` gives z = (x - mean) @ components (N x d). The
directions come from the eigen-decomposition of the D x D covariance when
there are at least as many samples as dimensions, else from the SVD of the
centred N x D data (the cheaper of the two). Each direction's sign is fixed
(its largest-magnitude entry positive) so that a fit is reproducible.
"""
import numpy as np

DEFAULT_DIM = 180
# a direction whose variance is below this fraction of the largest one is
# numerical noise: it does not count towards the rank
RANK_TOL = 1e-10


def as_feature_matrix(x, what="features"):
    """x -> float64 N x D; ValueError for a wrong shape, no rows, or NaN/inf."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty N x D array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(1))
        raise ValueError(f"{what} hold NaN or inf in {len(rows)} rows (first: row {rows[0]})")
    return x


class PCA:
    """mean (D,), components (D, d) with orthonormal columns, variances (d,)
    (the training variance along each component, descending), all float64."""

    def __init__(self, mean, components, variances=None):
        self.mean = np.asarray(mean, np.float64)
        self.components = np.asarray(components, np.float64)
        if self.mean.ndim != 1 or self.components.ndim != 2 \
                or self.components.shape[0] != self.mean.shape[0]:
            raise ValueError(f"PCA needs mean (D,) and components (D, d), got "
                             f"{self.mean.shape} and {self.components.shape}")
        self.variances = None if variances is None else np.asarray(variances, np.float64)

    @property
    def input_dim(self):
        return self.components.shape[0]

    @property
    def dim(self):
        return self.components.shape[1]

    @classmethod
    def fit(cls, features, d=DEFAULT_DIM):
        """d=None: min(DEFAULT_DIM, the rank of the features), a default that
        follows the data (a small training set has fewer than 180 directions)."""
        x = as_feature_matrix(features, "PCA training features")
        n, dim_in = x.shape
        d = None if d is None else int(d)
        if d is not None and d < 1:
            raise ValueError(f"PCA dimension d must be at least 1, got {d}")
        if n < 2:
            raise ValueError(f"PCA needs at least 2 training samples, got {n}")
        mean = x.mean(0)
        xc = x - mean
        if n >= dim_in:
            var, vec = np.linalg.eigh(xc.T @ xc / (n - 1))
            var, vec = var[::-1], vec[:, ::-1]
        else:
            _, s, vt = np.linalg.svd(xc, full_matrices=False)
            var, vec = s ** 2 / (n - 1), vt.T
        rank = int(np.sum(var > RANK_TOL * max(var[0], 0.0))) if var[0] > 0 else 0
        if d is None:
            d = min(DEFAULT_DIM, rank)
            if d < 1:
                raise ValueError(f"the PCA training features ({n} samples of dimension "
                                 f"{dim_in}) have rank 0: all samples are the same")
        if d > rank:
            raise ValueError(
                f"PCA dimension d={d} exceeds the rank {rank} of the training features "
                f"({n} samples of dimension {dim_in}; rank <= min(N - 1, D)): choose d <= {rank} "
                f"or give more samples")
        vec = vec[:, :d]
        sign = np.sign(vec[np.argmax(np.abs(vec), 0), np.arange(d)])
        return cls(mean, vec * sign, var[:d])

    def transform(self, features):
        x = as_feature_matrix(features)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"features have dimension {x.shape[1]}, this PCA was fitted on "
                             f"{self.input_dim}")
        return (x - self.mean) @ self.components
