"""The trained verifier: PCA to d dimensions, then Joint Bayesian, with the
"same" threshold chosen on training pairs; L2 and cosine thresholds on the
same PCA output come along as baselines. `export_tensors` gives the pca/*,
jb/*, l2/* and cosine/* tensors of the verifier file (float32)."""
import numpy as np

from .baselines import CosineScorer, L2Scorer
from .joint_bayesian import JointBayesian
from .metrics import best_threshold
from .pca import DEFAULT_DIM, PCA


def sample_pairs(labels, n_pairs, seed=0):
    """Up to n_pairs matched and n_pairs mismatched index pairs (i < j never
    repeated within a kind), deterministic in seed: (first, second, same)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    _, index = np.unique(labels, return_inverse=True)
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], np.arange(index.max() + 1))
    counts = np.bincount(index)
    multi = np.flatnonzero(counts >= 2)
    if len(multi) == 0 or len(counts) < 2:
        raise ValueError("pairs need at least 2 identities and one with >= 2 images")
    # matched: a random identity with >= 2 images (weighted by its pair count), two of its images
    w = counts[multi] * (counts[multi] - 1.0)
    ids = rng.choice(multi, size=4 * n_pairs, p=w / w.sum())
    a = rng.integers(0, counts[ids])
    b = (a + rng.integers(1, counts[ids])) % counts[ids]
    same_pairs = np.unique(np.sort(np.stack([order[starts[ids] + a], order[starts[ids] + b]], 1),
                                   1), axis=0)
    same_pairs = same_pairs[rng.permutation(len(same_pairs))[:n_pairs]]
    i, j = rng.integers(0, len(labels), (2, 4 * n_pairs))
    keep = index[i] != index[j]
    diff_pairs = np.unique(np.sort(np.stack([i[keep], j[keep]], 1), 1), axis=0)
    diff_pairs = diff_pairs[rng.permutation(len(diff_pairs))[:n_pairs]]
    first = np.concatenate([same_pairs[:, 0], diff_pairs[:, 0]])
    second = np.concatenate([same_pairs[:, 1], diff_pairs[:, 1]])
    same = np.concatenate([np.ones(len(same_pairs), bool), np.zeros(len(diff_pairs), bool)])
    return first, second, same


class Verifier:
    def __init__(self, pca, jb, threshold, baseline_thresholds=None):
        self.pca, self.jb, self.threshold = pca, jb, float(threshold)
        self.baseline_thresholds = dict(baseline_thresholds or {})
        self.scorers = {"joint_bayesian": jb, "l2": L2Scorer(), "cosine": CosineScorer()}

    @classmethod
    def fit(cls, features, labels, d=DEFAULT_DIM, n_pairs=3000, seed=0, **jb_options):
        """PCA and Joint Bayesian on raw training features (N x D) with identity
        labels; thresholds maximise accuracy on n_pairs matched + n_pairs
        mismatched training pairs (`sample_pairs`)."""
        pca = PCA.fit(features, d)
        z = pca.transform(features)
        jb = JointBayesian.fit(z, labels, **jb_options)
        first, second, same = sample_pairs(labels, n_pairs, seed)
        self = cls(pca, jb, 0.0)
        thresholds = {name: best_threshold(s.score(z[first], z[second]), same)[0]
                      for name, s in self.scorers.items()}
        self.threshold = thresholds.pop("joint_bayesian")
        self.baseline_thresholds = thresholds
        return self

    def project(self, features):
        return self.pca.transform(features)

    def score(self, x1, x2, method="joint_bayesian"):
        """Scores of raw feature pairs (rows of x1 with rows of x2)."""
        return self.scorers[method].score(self.project(x1), self.project(x2))

    def same(self, x1, x2):
        return self.score(x1, x2) >= self.threshold

    def export_tensors(self):
        """The verifier file's pca/*, jb/* and baseline tensors, float32. The
        Joint Bayesian mean is folded into pca/mean (the components are
        orthonormal, so (x - mean - C m) @ C = (x - mean) @ C - m)."""
        c = self.pca.components
        out = {"pca/mean": (self.pca.mean + c @ self.jb.mean).astype(np.float32),
               "pca/components": c.astype(np.float32),
               "jb/A": self.jb.A.astype(np.float32), "jb/G": self.jb.G.astype(np.float32),
               "jb/threshold": np.array([self.threshold], np.float32)}
        for name, t in self.baseline_thresholds.items():
            out[f"{name}/threshold"] = np.array([t], np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors):
        """A verifier from exported tensors (scores as the C++ reader computes them)."""
        need = ("pca/mean", "pca/components", "jb/A", "jb/G", "jb/threshold")
        missing = [k for k in need if k not in tensors]
        if missing:
            raise ValueError(f"verifier tensors missing: {', '.join(missing)}")
        pca = PCA(tensors["pca/mean"], tensors["pca/components"])
        jb = JointBayesian.from_score_matrices(tensors["jb/A"], tensors["jb/G"])
        if jb.dim != pca.dim:
            raise ValueError(f"jb/A is {jb.dim} x {jb.dim} but pca/components has {pca.dim} "
                             "columns")
        base = {k.split("/")[0]: float(v[0]) for k, v in tensors.items()
                if k in ("l2/threshold", "cosine/threshold")}
        return cls(pca, jb, float(tensors["jb/threshold"][0]), base)
