"""Verification and identification metrics against brute-force references
on random scores (with ties), ROC CSV and PNG."""
import csv

import cv2
import numpy as np
import pytest

from deepid2_core.verifier import (auc, best_threshold, eer, kfold_accuracy, open_set_dir,
                                   rank1_accuracy, roc_curve, split_gallery_probe, tar_at_far)
from deepid2_core.verifier.roc_plot import plot_roc, write_roc_csv


def random_scores(seed, n=400, ties=True):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.45
    s = rng.normal(0, 1, n) + 1.3 * same
    return (np.round(s, 1) if ties else s), same


def brute_best_accuracy(s, same):
    cands = np.concatenate([np.unique(s), [np.inf]])
    return max(np.mean((s >= t) == same) for t in cands)


@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_reaches_the_brute_force_optimum(seed):
    s, same = random_scores(seed, ties=seed % 2 == 0)
    t, acc = best_threshold(s, same)
    assert acc == pytest.approx(brute_best_accuracy(s, same), abs=1e-12)
    assert np.mean((s >= t) == same) == pytest.approx(acc, abs=1e-12)


def test_roc_points_auc_eer_tar_against_brute_force():
    s, same = random_scores(5)
    roc = roc_curve(s, same)
    thresholds = np.unique(s)[::-1]
    far = np.array([np.mean(s[~same] >= t) for t in thresholds])
    tar = np.array([np.mean(s[same] >= t) for t in thresholds])
    np.testing.assert_allclose(roc.far[1:], far, atol=1e-12)
    np.testing.assert_allclose(roc.tar[1:], tar, atol=1e-12)
    # AUC = P(matched score > mismatched score) + half the ties (Mann-Whitney)
    pos, neg = s[same][:, None], s[~same][None, :]
    assert auc(roc) == pytest.approx(np.mean(pos > neg) + 0.5 * np.mean(pos == neg), abs=1e-12)
    e = eer(roc)
    frr = 1 - roc.tar
    j = np.flatnonzero((roc.far[:-1] <= e + 1e-12) & (e <= roc.far[1:] + 1e-12)
                       & (frr[1:] <= e + 1e-12) & (e <= frr[:-1] + 1e-12))
    assert len(j) >= 1, "EER is not between two neighbouring ROC points"
    for target in (0.0, 0.01, 0.1):
        ok = far <= target
        ref = tar[ok].max() if ok.any() else 0.0
        assert tar_at_far(roc, target) == pytest.approx(ref, abs=1e-12)


def test_separable_and_hand_made_cases():
    roc = roc_curve([3.0, 2.0, 1.0, 0.0], [True, True, False, False])
    assert auc(roc) == 1.0 and eer(roc) == 0.0 and tar_at_far(roc, 1e-3) == 1.0
    assert best_threshold([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == (1.5, 1.0)
    roc = roc_curve([1.0, 0.0, 1.0, 0.0], [True, True, False, False])
    assert auc(roc) == 0.5 and eer(roc) == pytest.approx(0.5)


def brute_kfold(s, same, folds):
    accs = []
    for f in np.unique(folds):
        tr = folds != f
        cands = np.concatenate([np.unique(s[tr]), [np.inf]])
        train_acc = [np.mean((s[tr] >= t) == same[tr]) for t in cands]
        best = max(train_acc)
        # every threshold that is optimal on the training folds gives the same test
        # accuracy only if they select the same test pairs: take the test accuracies'
        # range and check ours falls within it
        opts = [t for t, a in zip(cands, train_acc) if a == best]
        accs.append([np.mean((s[~tr] >= t) == same[~tr]) for t in opts])
    return accs


def test_kfold_thresholds_come_from_the_other_folds():
    s, same = random_scores(8, n=300, ties=False)
    folds = np.repeat(np.arange(10), 30)
    out = kfold_accuracy(s, same, folds)
    ref = brute_kfold(s, same, folds)
    for acc, opts in zip(out["accuracies"], ref):
        assert min(opts) - 1e-12 <= acc <= max(opts) + 1e-12
    assert out["mean"] == pytest.approx(np.mean(out["accuracies"]))
    assert out["std"] == pytest.approx(np.std(out["accuracies"], ddof=1))
    assert out["stderr"] == pytest.approx(out["std"] / np.sqrt(10))
    # a fold shifted far away keeps the others' threshold: it is misjudged
    s2 = s.copy()
    s2[folds == 0] += 100
    shifted = kfold_accuracy(s2, same, folds)
    assert shifted["accuracies"][0] == pytest.approx(np.mean(same[folds == 0]))


@pytest.mark.parametrize("scores, same, message", [
    ([1.0, np.nan], [True, False], "NaN or inf"),
    ([1.0, 2.0], [True, True], "both matched and mismatched"),
    ([1.0, 2.0, 3.0], [True, False], "3 scores but 2"),
    ([1.0, 2.0], [2, 0], "booleans"),
])
def test_bad_scores_are_refused(scores, same, message):
    with pytest.raises(ValueError, match=message):
        roc_curve(scores, same)


def test_gallery_probe_split_is_deterministic_and_complete():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(40), rng.integers(2, 6, 40)),
                             np.arange(100, 110)])          # 10 single-image people
    a, b = split_gallery_probe(labels, seed=3), split_gallery_probe(labels, seed=3)
    assert np.array_equal(a.gallery, b.gallery) and np.array_equal(a.probes, b.probes)
    c = split_gallery_probe(labels, seed=4)
    assert not np.array_equal(a.gallery, c.gallery)
    assert len(a.gallery) == 20 and len(np.unique(labels[a.gallery])) == 20
    assert np.array_equal(np.sort(np.concatenate([a.gallery, a.probes])), np.arange(len(labels)))
    assert np.array_equal(a.probe_known, np.isin(labels[a.probes], labels[a.gallery]))
    assert not a.probe_known[np.isin(labels[a.probes], np.arange(100, 110))].any()


def test_rank1_and_open_set_dir_against_brute_force():
    rng = np.random.default_rng(1)
    gallery_labels = np.arange(30)
    probe_labels = np.concatenate([rng.integers(0, 30, 300), np.arange(1000, 1200)])
    scores = rng.normal(0, 1, (500, 30))
    known = probe_labels < 30
    scores[np.flatnonzero(known), probe_labels[known]] += 2.5
    top = scores.argmax(1)
    hit = gallery_labels[top] == probe_labels
    assert rank1_accuracy(scores, probe_labels, gallery_labels) == pytest.approx(hit[known].mean())
    best = scores.max(1)
    dir_, t, reached = open_set_dir(scores, probe_labels, gallery_labels, far=0.01)
    imp = best[~known]
    assert reached <= 0.01 and np.mean(imp >= t) == reached
    # t is as low as allowed: any impostor score at or above the next lower one breaks FAR
    lower = imp[imp < t].max()
    assert np.mean(imp >= lower) > 0.01
    assert dir_ == pytest.approx(np.mean(hit[known] & (best[known] >= t)))
    with pytest.raises(ValueError, match="genuine and impostor"):
        open_set_dir(scores[known], probe_labels[known], gallery_labels)


def test_roc_csv_and_png(tmp_path):
    s, same = random_scores(2)
    roc = roc_curve(s, same)
    write_roc_csv(tmp_path / "roc.csv", roc)
    with open(tmp_path / "roc.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["threshold", "far", "tar"] and rows[1][0] == "inf"
    np.testing.assert_array_equal(np.array(rows[1:], float)[:, 1:],
                                  np.stack([roc.far, roc.tar], 1))
    plot_roc(tmp_path / "roc.png", {"jb": roc, "l2": roc_curve(-s, same)})
    img = cv2.imread(str(tmp_path / "roc.png"))
    assert img.shape == (520, 640, 3) and (img < 250).any(axis=2).mean() > 0.01
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc(tmp_path / "x.png", {})
