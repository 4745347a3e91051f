"""Joint Bayesian face verification (Chen, Cao, Wang, Wen, Sun, ECCV 2012).

Model: a face's feature is x = mu + eps, mu ~ N(0, S_mu) the identity,
eps ~ N(0, S_eps) the within-identity variation, independent. The m images
of one identity are then jointly Gaussian with covariance I (x) S_eps +
11' (x) S_mu, whose inverse is I (x) F + 11' (x) G_m with F = S_eps^-1 and
G_m = -(m S_mu + S_eps)^-1 S_mu S_eps^-1 (the paper's closed form).

Learning (EM, float64), images grouped by identity: start from the
between-class covariance of the class means (S_mu) and the within-class
scatter (S_eps); then, with T_m = (m S_mu + S_eps)^-1 shared by all classes
of m images,
  E-step: E[mu | class] = S_mu T_m sum_i x_i      (= S_mu (F + m G_m) sum_i x_i)
          Cov[mu | class] = S_mu - m S_mu T_m S_mu, E[eps_i] = x_i - E[mu]
  M-step: S_mu = mean over classes of E[mu]E[mu]' + Cov[mu | class],
          S_eps = mean over images of E[eps_i]E[eps_i]' + Cov[mu | class]
(eps_i = x_i - mu, so Cov[eps_i | class] = Cov[mu | class]). This is exact
EM: the marginal likelihood never decreases and the estimates converge to
the maximum-likelihood covariances. m_step="paper" drops the Cov terms (the
simplified update "S_mu = cov(mu), S_eps = cov(eps)" of the paper), which
shrinks both covariances. A ridge (a small multiple of the mean eigenvalue)
is added to both after every M-step so that they stay well conditioned.

Score (the log-likelihood ratio of "same" over "different", times 2, up to
a constant): r(x1, x2) = x1'A x1 + x2'A x2 - 2 x1'G x2 with
A = (S_mu + S_eps)^-1 - (F + G), and F + G, G the blocks of the inverse of
[[S_mu + S_eps, S_mu], [S_mu, S_mu + S_eps]]. Higher r = more likely the same.

Features are centred by the training mean (`mean`) before all of this.
"""
import numpy as np

from .linalg import sym_eigh, sym_inv, symmetric
from .pca import as_feature_matrix

_LOG_2PI = np.log(2 * np.pi)


def group_by_identity(labels, n):
    """labels (N,) of any hashable type -> (class index per image, class sizes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must be a 1-D array of {n} identities (one per feature row), "
                         f"got shape {labels.shape}")
    _, index, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return index.reshape(-1), sizes


def check_trainable(sizes):
    multi = int(np.sum(sizes >= 2))
    if multi < 2:
        raise ValueError(
            f"Joint Bayesian needs at least 2 identities with 2 or more images each (the "
            f"within-identity variation is learnt from them); got {len(sizes)} identities, "
            f"{multi} of them with >= 2 images")


class JointBayesian:
    """Fitted model: mean (d,), S_mu, S_eps, A, G (d, d), all float64;
    `history` holds the log-likelihood per image after each EM iteration."""

    def __init__(self, mean, s_mu, s_eps, history=(), iterations=0, m_step="exact"):
        self.mean = np.asarray(mean, np.float64)
        self.s_mu, self.s_eps = symmetric(np.asarray(s_mu, np.float64)), \
            symmetric(np.asarray(s_eps, np.float64))
        self.history, self.iterations, self.m_step = list(history), iterations, m_step
        self.A, self.G = score_matrices(self.s_mu, self.s_eps)

    @classmethod
    def from_score_matrices(cls, a, g, mean=None):
        """A scorer from exported A and G alone (no covariances, no EM history)."""
        self = cls.__new__(cls)
        self.A, self.G = np.asarray(a, np.float64), np.asarray(g, np.float64)
        if self.A.ndim != 2 or self.A.shape[0] != self.A.shape[1] or self.G.shape != self.A.shape:
            raise ValueError(f"A and G must be square and of one shape, got {self.A.shape} and "
                             f"{self.G.shape}")
        self.mean = np.zeros(len(self.A)) if mean is None else np.asarray(mean, np.float64)
        self.s_mu = self.s_eps = None
        self.history, self.iterations, self.m_step = [], 0, None
        return self

    @property
    def dim(self):
        return self.mean.shape[0]

    @classmethod
    def fit(cls, features, labels, max_iter=100, tol=1e-6, ridge=1e-6, m_step="exact"):
        """EM on features (N x d) with identity labels (N,). Stops when both
        covariances change by less than tol (relative Frobenius norm)."""
        if m_step not in ("exact", "paper"):
            raise ValueError(f"m_step must be 'exact' or 'paper', got {m_step!r}")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        x = as_feature_matrix(features, "Joint Bayesian training features")
        index, sizes = group_by_identity(labels, len(x))
        check_trainable(sizes)
        mean = x.mean(0)
        x = x - mean
        sums = np.zeros((len(sizes), x.shape[1]))
        np.add.at(sums, index, x)
        s_mu, s_eps = initial_covariances(x, index, sums, sizes)
        floor = ridge * np.trace(s_mu + s_eps) / x.shape[1]
        s_mu, s_eps = _add_ridge(s_mu, floor), _add_ridge(s_eps, floor)
        within = _within_scatter(x, index, sums, sizes)
        history, it = [], 0
        for it in range(1, max_iter + 1):
            new_mu, new_eps, loglik = _em_step(x, index, sums, sizes, s_mu, s_eps, within,
                                               exact=m_step == "exact")
            history.append(loglik / len(x))
            new_mu, new_eps = _add_ridge(new_mu, floor), _add_ridge(new_eps, floor)
            change = max(_rel_change(new_mu, s_mu), _rel_change(new_eps, s_eps))
            s_mu, s_eps = new_mu, new_eps
            if change < tol:
                break
        return cls(mean, s_mu, s_eps, history, it, m_step)

    def centred(self, z, what="features"):
        z = as_feature_matrix(np.atleast_2d(z), what)
        if z.shape[1] != self.dim:
            raise ValueError(f"{what} have dimension {z.shape[1]}, the model has {self.dim}")
        return z - self.mean

    def score(self, z1, z2):
        """r for each row pair of z1, z2 (both N x d, or one of them 1 x d)."""
        a, b = self.centred(z1, "first features"), self.centred(z2, "second features")
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise ValueError(f"{len(a)} first and {len(b)} second features: give as many of "
                             "each (or one of either)")
        a, b = np.broadcast_arrays(a, b)
        return (np.einsum("ij,jk,ik->i", a, self.A, a) + np.einsum("ij,jk,ik->i", b, self.A, b)
                - 2 * np.einsum("ij,jk,ik->i", a, self.G, b))

    def score_matrix(self, probes, gallery):
        """r of every probe (rows) against every gallery item (columns)."""
        p, g = self.centred(probes, "probe features"), self.centred(gallery, "gallery features")
        qp = np.einsum("ij,jk,ik->i", p, self.A, p)
        qg = np.einsum("ij,jk,ik->i", g, self.A, g)
        return qp[:, None] + qg[None, :] - 2 * (p @ self.G) @ g.T

    def log_likelihood(self, features, labels):
        """Marginal log-likelihood of the data (centred by `mean`) under the model."""
        x = self.centred(features)
        index, sizes = group_by_identity(labels, len(x))
        sums = np.zeros((len(sizes), x.shape[1]))
        np.add.at(sums, index, x)
        within = _within_scatter(x, index, sums, sizes)
        return _em_step(x, index, sums, sizes, self.s_mu, self.s_eps, within, True)[2]


def initial_covariances(x, index, sums, sizes):
    """Between-class covariance of the class means, within-class scatter per
    degree of freedom (N - number of classes)."""
    means = sums / sizes[:, None]
    s_mu = means.T @ means / len(sizes)
    s_eps = _within_scatter(x, index, sums, sizes) / max(len(x) - len(sizes), 1)
    return symmetric(s_mu), symmetric(s_eps)


def _within_scatter(x, index, sums, sizes):
    r = x - (sums / sizes[:, None])[index]
    return r.T @ r


def _em_step(x, index, sums, sizes, s_mu, s_eps, within, exact):
    """One EM iteration; also the log-likelihood of the data under (s_mu, s_eps).

    Both covariances are diagonalised at once: with S_eps = Q L Q' and the
    whitened S_mu, L^-1/2 Q' S_mu Q L^-1/2 = U D U', W = Q L^-1/2 U and
    V = Q L^1/2 U give W' S_eps W = I, W' S_mu W = D, S_mu = V D V',
    S_eps = V V'. Then for a class of m images
      T_m = (m S_mu + S_eps)^-1 = W (m D + I)^-1 W',
      S_mu T_m = V D (m D + I)^-1 W',  Cov[mu | class] = V D (m D + I)^-1 V',
      log det (m S_mu + S_eps) = log det S_eps + sum log(m D + 1),
    so no class size needs an inverse of its own: two eigendecompositions an
    iteration, whatever the number of distinct class sizes (41 on LFW)."""
    n, d = x.shape
    lam_eps, q = sym_eigh(s_eps, "S_eps")
    logdet_eps = float(np.sum(np.log(lam_eps)))
    half = q / np.sqrt(lam_eps)                       # Q L^-1/2
    dvals, u = np.linalg.eigh(symmetric(half.T @ s_mu @ half))
    dvals = np.maximum(dvals, 0.0)                    # S_mu is positive semi-definite
    w = half @ u                                      # W
    v = (q * np.sqrt(lam_eps)) @ u                    # V
    m = sizes.astype(np.float64)[:, None]
    shrink = dvals / (m * dvals + 1.0)                # per class: D (m D + I)^-1, diagonal
    p = sums @ w                                      # W' s per class
    e_mu = (p * shrink) @ v.T
    f = symmetric(w @ w.T)                            # S_eps^-1
    loglik = -0.5 * (n * d * _LOG_2PI + np.sum(f * within)
                     + (n - len(sizes)) * logdet_eps)
    # class terms: s' T_m s / m and log det (m S_mu + S_eps)
    loglik -= 0.5 * (np.sum(p * p / (m * dvals + 1.0) / m)
                     + len(sizes) * logdet_eps + np.sum(np.log(m * dvals + 1.0)))
    r = x - e_mu[index]
    new_mu = e_mu.T @ e_mu
    new_eps = r.T @ r
    if exact:
        new_mu += (v * shrink.sum(0)) @ v.T           # sum over classes of Cov[mu | class]
        new_eps += (v * (m * shrink).sum(0)) @ v.T    # sum over images of the same
    return symmetric(new_mu / len(sizes)), symmetric(new_eps / n), float(loglik)


def _add_ridge(s, amount):
    return s + amount * np.eye(len(s))


def _rel_change(new, old):
    return np.linalg.norm(new - old) / max(np.linalg.norm(old), 1e-300)


def score_matrices(s_mu, s_eps):
    """(A, G) of the paper from the two covariances."""
    d = len(s_mu)
    s = s_mu + s_eps
    pair = np.block([[s, s_mu], [s_mu, s]])
    inv_pair = sym_inv(pair, "the covariance of a same-identity pair")
    f_plus_g, g = inv_pair[:d, :d], inv_pair[:d, d:]
    a = sym_inv(s, "S_mu + S_eps") - f_plus_g
    return symmetric(a), symmetric(g)
