"""Verification metrics on pair scores (higher score = more likely the same
person; a pair is called "same" iff score >= threshold).

`same` is a boolean array, True for matched pairs. ROC points are taken at
every distinct score: far[j] (false accept rate, over mismatched pairs) and
tar[j] (true accept rate, over matched pairs) of threshold thresholds[j],
preceded by (0, 0) at threshold +inf; both rise along the curve.
"""
from dataclasses import dataclass

import numpy as np


def check_scores(scores, same, what="scores"):
    """-> float64 scores, bool same; ValueError for NaN, unequal lengths or
    a set without both matched and mismatched pairs."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(same)
    if y.shape != s.shape:
        raise ValueError(f"{what}: {s.size} scores but {y.size} same/different labels")
    if y.dtype != np.bool_:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError(f"{what}: same must be booleans (or 0/1)")
        y = y.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what}: {int(np.sum(~np.isfinite(s)))} scores are NaN or inf")
    if y.all() or not y.any():
        raise ValueError(f"{what}: need both matched and mismatched pairs, got "
                         f"{int(y.sum())} matched of {y.size}")
    return s, y


def accuracy(scores, same, threshold):
    s, y = check_scores(scores, same)
    return float(np.mean((s >= threshold) == y))


def best_threshold(scores, same):
    """(threshold, accuracy) maximising accuracy on these pairs. Thresholds
    are midway between neighbouring distinct scores (or just above the top
    one, or the lowest one); ties go to the highest threshold."""
    s, y = check_scores(scores, same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    n, n_neg = len(s), int(np.sum(~y))
    # calling the top k "same": correct = matched among them + mismatched below
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    correct = tp + (n_neg - fp)
    valid = np.ones(n + 1, bool)
    valid[1:n] = s[:-1] > s[1:]               # a cut never splits equal scores
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        t = float(np.nextafter(s[0], np.inf))
    elif k == n:
        t = float(s[-1])
    else:
        t = (s[k - 1] + s[k]) / 2
        if not s[k] < t <= s[k - 1]:           # neighbours too close to split in float
            t = s[k - 1]
        t = float(t)
    return t, float(correct[k] / n)


@dataclass
class Roc:
    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    n_matched: int
    n_mismatched: int


def roc_curve(scores, same):
    s, y = check_scores(scores, same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.concatenate([s[:-1] > s[1:], [True]]))   # end of each tie group
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return Roc(np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos]),
               np.concatenate([[np.inf], s[last]]), n_pos, n_neg)


def auc(roc):
    """Area under the ROC curve (trapezoids; ties count half)."""
    return float(np.sum(np.diff(roc.far) * (roc.tar[1:] + roc.tar[:-1]) / 2))


def eer(roc):
    """Equal error rate: where FAR = 1 - TAR, linearly interpolated on the curve."""
    gap = roc.far - (1 - roc.tar)                 # rises from -1 to +1
    j = int(np.argmax(gap >= 0))
    g0, g1 = gap[j - 1], gap[j]
    t = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return float(roc.far[j - 1] + t * (roc.far[j] - roc.far[j - 1]))


def tar_at_far(roc, far=1e-3):
    """The highest TAR of a threshold whose FAR is at most `far` (no
    interpolation). With fewer than 1/far mismatched pairs this is the TAR
    at FAR = 0."""
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    return float(roc.tar[np.flatnonzero(roc.far <= far)[-1]])


def kfold_accuracy(scores, same, folds):
    """Accuracy of each fold with the threshold chosen (`best_threshold`) on
    all other folds. folds: the fold of each pair (any labels, >= 2 folds).
    Returns dict: mean, std (ddof 1), stderr (std / sqrt(k), LFW's "standard
    error"), accuracies and thresholds per fold, folds (sorted fold labels)."""
    s, y = check_scores(scores, same)
    folds = np.asarray(folds).reshape(-1)
    if folds.shape != s.shape:
        raise ValueError(f"{s.size} scores but {folds.size} fold labels")
    names = np.unique(folds)
    if len(names) < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {len(names)}")
    accs, thresholds = [], []
    for f in names:
        test = folds == f
        t, _ = best_threshold(s[~test], y[~test])
        thresholds.append(t)
        accs.append(float(np.mean((s[test] >= t) == y[test])))
    accs = np.array(accs)
    std = float(np.std(accs, ddof=1))
    return dict(mean=float(accs.mean()), std=std, stderr=std / np.sqrt(len(accs)),
                accuracies=accs, thresholds=np.array(thresholds), folds=names)
