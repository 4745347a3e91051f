"""Issue 24, lever 2: the paper's ensemble of Joint Bayesian models over
groups of the selected patches, fused by a combiner fitted on validation
people (DeepID2 used an SVM; here logistic regression on the group scores).

    python experiments/jb_ensemble.py ensemble --name z --augment --epochs 60 \\
        --candidates ... [--patches P,Q,...]
    python experiments/jb_ensemble.py singles --name z --augment --epochs 60 --candidates ...

Takes `select`'s chosen patches (or --patches) of half 1 and the features that
`lfw_multipatch.py` cached. The split is `select`'s: every group's PCA + Joint
Bayesian is fitted on 80% of half 1's training people, the combiner on
3,000 + 3,000 pairs of the other 20%. Each grouping is scored on those
validation pairs by 5-fold cross-validation of the combiner; the best one is
then measured on the test pairs of folds 6-10 (thresholds chosen on the
other folds), next to one Joint Bayesian model over all the patches fitted on
all the training people (the shipped model's way). The same is done for one
model with other PCA sizes. Every grouping's test figure is printed, but the
choice is the validation score's.
"""
import json
import os

import numpy as np

from lfw_multipatch import (HALVES, arguments, chosen_patches, features_of, pca_dim, spanned,
                            stack, test_pairs, validation_split)


def logistic_fit(s, y, ridge=1e-3, iters=50):
    """Weights (bias last) of an L2-regularised logistic regression on the
    columns of s (standardised inside), by Newton's method."""
    mu, sd = s.mean(0), s.std(0) + 1e-12
    x = np.hstack([(s - mu) / sd, np.ones((len(s), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-x @ w))
        g = x.T @ (p - y) + ridge * w
        h = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return mu, sd, w


def logistic_score(model, s):
    mu, sd, w = model
    return ((s - mu) / sd) @ w[:-1] + w[-1]


def groupings(order):
    """Candidate groupings of the patches, `order` being the order in which
    selection added them: one group; each patch alone; each alone plus all;
    g interleaved groups (the paper's seven groups of 25). Each group's
    PCA keeps --pca dimensions; "one, PCA d" tries other sizes for one group."""
    out = {"one": [order], "each": [[p] for p in order],
           "each+all": [[p] for p in order] + [order]}
    for g in (2, 3, 4):
        if g < len(order):
            out[f"{g} groups"] = [order[k::g] for k in range(g)]
    return out


def selection_order(a, subset):
    """The chosen patches in the order forward selection added them."""
    path = os.path.join(a.runs, a.name, "selection.json")
    if not os.path.exists(path):
        return list(subset)
    with open(path) as f:
        curve = json.load(f)["curve"]
    order = []
    for c in curve:
        order += [p for p in c["subset"] if p not in order and p in subset]
    return order + [p for p in subset if p not in order]


def fit_groups(feats, groups, rows, labels, a, pca=None):
    from deepid2_core.verifier.model import Verifier
    models = []
    for g in groups:
        x = stack(feats, g, "train")[rows]
        models.append(Verifier.fit(x, labels[rows], d=pca_dim(x, pca or a.pca),
                                   max_iter=a.em_iters, impostor_pairs=0))
    return models


def group_scores(models, groups, feats, key, i1, i2):
    cols = []
    for m, g in zip(models, groups):
        x = stack(feats, g, key)
        cols.append(m.score(x[i1], x[i2]))
    return np.stack(cols, 1)


def cross_validated(s, y, k=5):
    """Accuracy of the combiner by k-fold cross-validation over the pairs."""
    from deepid2_core.verifier.metrics import best_threshold
    fold = np.random.default_rng(0).permutation(len(y)) % k
    right = 0
    for f in range(k):
        tr, te = fold != f, fold == f
        model = logistic_fit(s[tr], y[tr])
        t, _ = best_threshold(logistic_score(model, s[tr]), y[tr])
        right += np.sum((logistic_score(model, s[te]) >= t) == y[te])
    return right / len(y)


def singles(a):
    """Each candidate alone: validation (as `select` scores it) against test.
    The validation people were in the networks' training set, so a patch
    that memorises its training people looks better there than on new ones."""
    from deepid2_core.verifier.metrics import best_threshold, kfold_accuracy
    half = "half1"
    raw = {p: features_of(a, half, p) for p in a.candidates}
    labels = raw[a.candidates[0]]["labels"]
    is_val, (va, vb, vsame) = validation_split(labels)
    val = np.flatnonzero(is_val)
    i1, i2, same, fold = test_pairs(a, half, raw[a.candidates[0]]["lfw_rels"])
    fit, full = spanned(raw, ~is_val), spanned(raw, slice(None))
    rows = []
    for p in a.candidates:
        m = fit_groups(fit, [[p]], ~is_val, labels, a)[0]
        v = best_threshold(m.score(fit[p]["train"][val[va]], fit[p]["train"][val[vb]]), vsame)[1]
        m = fit_groups(full, [[p]], slice(None), labels, a)[0]
        t = kfold_accuracy(m.score(full[p]["lfw"][i1], full[p]["lfw"][i2]), same, fold)["mean"]
        rows.append((p, v, t))
        print(f"p{p}: validation {v:.4f}  test {t:.4f}", flush=True)
    if len(rows) < 3:
        return
    v, t = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    rank = lambda x: np.argsort(np.argsort(x))   # noqa: E731
    print(f"validation - test: mean {np.mean(v - t):+.4f}, from {np.min(v - t):+.4f} to "
          f"{np.max(v - t):+.4f}; rank correlation {np.corrcoef(rank(v), rank(t))[0, 1]:.2f}")


def main():
    a = arguments(stages=("ensemble", "singles"), doc=__doc__)
    if a.stage == "singles":
        return singles(a)
    from deepid2_core.verifier.metrics import kfold_accuracy
    half = "half1"
    subset = chosen_patches(a)
    order = selection_order(a, subset)
    raw = {p: features_of(a, half, p) for p in order}
    labels = raw[order[0]]["labels"]
    is_val, (va, vb, vsame) = validation_split(labels)
    feats = spanned(raw, ~is_val)
    val = np.flatnonzero(is_val)
    va, vb = val[va], val[vb]
    i1, i2, same, fold = test_pairs(a, half, raw[order[0]]["lfw_rels"])
    print(f"patches in selection order: {order}; {np.sum(~is_val)} fitting images, "
          f"{len(vsame)} validation pairs", flush=True)
    rows = []
    tries = [(name, groups, a.pca) for name, groups in groupings(order).items()]
    tries += [(f"one, PCA {d}", [order], d) for d in (120, 250, 320) if d != a.pca]
    for name, groups, pca in tries:
        models = fit_groups(feats, groups, ~is_val, labels, a, pca)
        sv = group_scores(models, groups, feats, "train", va, vb)
        cv = cross_validated(sv, vsame)
        combiner = logistic_fit(sv, vsame)
        st = logistic_score(combiner, group_scores(models, groups, feats, "lfw", i1, i2))
        test = kfold_accuracy(st, same, fold)
        rows.append(dict(grouping=name, groups=groups, validation=float(cv),
                         test_mean=test["mean"], test_stderr=test["stderr"]))
        print(f"{name:12s} ({len(groups)} models): validation {cv:.4f}", flush=True)
    best = max(rows, key=lambda r: r["validation"])
    print(f"chosen on validation: {best['grouping']}; folds "
          f"{HALVES[half][1][0] + 1}-{HALVES[half][1][-1] + 1}: {best['test_mean']:.4f} +- "
          f"{best['test_stderr']:.4f}")
    # the shipped model's way: one model on all the training people, no combiner
    full = spanned(raw, slice(None))
    one = fit_groups(full, [order], slice(None), labels, a)[0]
    x = stack(full, order, "lfw")
    shipped = kfold_accuracy(one.score(x[i1], x[i2]), same, fold)
    print(f"one model fitted on all training people: {shipped['mean']:.4f} +- "
          f"{shipped['stderr']:.4f}")
    for r in rows:
        print(f"  {r['grouping']:12s} validation {r['validation']:.4f}  test {r['test_mean']:.4f} "
              f"+- {r['test_stderr']:.4f}")
    out = os.path.join(a.runs, a.name, f"ensemble-{'-'.join(map(str, sorted(order)))}.json")
    with open(out, "w") as f:
        json.dump(dict(order=order, groupings=rows, chosen=best["grouping"],
                       one_model_all_people=dict(mean=shipped["mean"], stderr=shipped["stderr"])),
                  f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
