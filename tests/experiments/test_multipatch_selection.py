"""experiments/lfw_multipatch.py's faster subset scoring and
experiments/jb_ensemble.py's combiner: the selection's numbers must not
change because a subset is scored in fewer dimensions."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments"))
import jb_ensemble  # noqa: E402
import lfw_multipatch  # noqa: E402
from deepid2_core.verifier.model import Verifier  # noqa: E402


def _patch_features(rng, labels, n_ids, dead):
    """ReLU-like features with `dead` share of always-zero units, per identity."""
    ident = rng.normal(size=(n_ids, 40))
    x = np.maximum(ident[labels] + 0.8 * rng.normal(size=(len(labels), 40)), 0)
    x = x @ rng.normal(size=(40, 90))
    x[:, rng.random(90) < dead] = 0
    return x.astype(np.float32)


def test_spanned_features_give_the_same_validation_scores():
    rng = np.random.default_rng(17)
    n_ids = int(rng.integers(90, 140))
    labels = rng.integers(0, n_ids, int(rng.integers(900, 1300)))
    feats = {p: {"train": _patch_features(rng, labels, n_ids, 0.4),
                 "lfw": rng.normal(size=(5, 90)).astype(np.float32)} for p in (3, 8, 11)}
    is_val, (va, vb, _) = lfw_multipatch.validation_split(labels)
    spanned = lfw_multipatch.spanned(feats, ~is_val)
    assert all(spanned[p]["train"].shape[1] < 90 for p in feats)
    scores = []
    for f in (feats, spanned):
        x = lfw_multipatch.stack(f, (3, 8, 11), "train")
        ver = Verifier.fit(x[~is_val], labels[~is_val], d=lfw_multipatch.pca_dim(x[~is_val], 40),
                           max_iter=20, impostor_pairs=0)
        xv = x[is_val]
        scores.append(ver.score(xv[va], xv[vb]))
    ref = scores[0]
    assert np.all(np.abs(scores[1] - ref) <= 1e-3 + 1e-3 * np.abs(ref))


def test_logistic_combiner_finds_the_informative_score():
    rng = np.random.default_rng(5)
    n = int(rng.integers(3000, 4000))
    y = rng.random(n) < 0.5
    s = np.stack([rng.normal(size=n) + 2.0 * y, rng.normal(size=n) * 3.0 + 7.0], 1)
    model = jb_ensemble.logistic_fit(s, y)
    w = model[2]
    assert abs(w[0]) > 5 * abs(w[1])                    # standardised weights
    acc = np.mean((jb_ensemble.logistic_score(model, s) >= 0) == y)
    assert acc > 0.8
    assert 0.8 < jb_ensemble.cross_validated(s, y) <= 1.0


def test_groupings_cover_every_patch_in_each_grouping():
    order = [int(p) for p in np.random.default_rng(2).permutation(50)[:7]]
    for name, groups in jb_ensemble.groupings(order).items():
        covered = sorted(p for g in groups for p in g)
        assert set(covered) == set(order), name
