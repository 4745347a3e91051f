"""Does illumination normalisation help single-patch verification? LFW View 1:
one whole-face network per `--lighting` mode (none, hist, clahe), trained with
the same seed and epochs on the people of pairsDevTrain.txt (all their LFW
images, deep-funneled as LFW ships them) plus celeba-lfwstyle; each is scored
on the pairs of pairsDevTest.txt (people disjoint from DevTrain).

Scoring: the network's features (patch + its mirror image, cut with the
network's own lighting), PCA fitted on the training images, then cosine and
Joint Bayesian (EM capped at --jb-iter iterations); each method's threshold is
the one that maximises accuracy on the 2,200 DevTrain pairs, and is applied
unchanged to the 1,000 DevTest pairs. AUC is on DevTest.

    for m in none hist clahe; do     # in parallel, one thread each (~11 min on 2 cores)
      OMP_NUM_THREADS=1 python experiments/lfw_lighting.py train --modes $m --seed 0 &
    done; wait
    python experiments/lfw_lighting.py eval --seed 0       # ~1.5 min a mode

Everything goes under --runs (default $DEEPID2_RUNS/lighting; DEEPID2_RUNS
defaults to ./runs, relative to the current directory): data/ (symlink
folders), cache/<mode>, <mode>/ (the training run, eval-pcaD.json,
devtest_scores-pcaD.npz; <mode>-seedN/ for --seed N), summary-seedN-pcaD.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from deepid2_core.verifier.pca import RANK_TOL  # noqa: E402
DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data"))
# where the studies write: ./runs of the current directory unless DEEPID2_RUNS is set
RUNS = os.environ.get("DEEPID2_RUNS", "runs")
MODES = ("none", "hist", "clahe")


def train_folder(runs, lfw, celeba, pairs_train):
    """Identity folders of the DevTrain people (+ celeba): symlinks."""
    from deepid2_core.verifier.lfw import people_of_folds, read_pairs
    tag = "devtrain" + ("+celeba" if celeba else "")
    d = os.path.join(runs, "data", tag)
    if os.path.isdir(d):
        return d
    os.makedirs(d + ".tmp", exist_ok=True)
    people = people_of_folds(read_pairs(pairs_train))
    for name in people:
        src = os.path.abspath(os.path.join(lfw, name))
        if os.path.isdir(src):
            os.symlink(src, os.path.join(d + ".tmp", name))
    if celeba:
        for name in sorted(os.listdir(celeba)):
            src = os.path.abspath(os.path.join(celeba, name))
            if os.path.isdir(src):
                os.symlink(src, os.path.join(d + ".tmp", name))
    os.rename(d + ".tmp", d)
    return d


def pair_features(ext, lfw, pairs):
    """Features of both images of every pair: (f1, f2, same)."""
    from deepid2_core.verifier.lfw import flatten
    plist, _ = flatten(pairs)
    rels = sorted({p for pr in plist for p in pr[:2]})
    index = {r: i for i, r in enumerate(rels)}
    feats = ext.extract([os.path.join(lfw, *r.split("/")) for r in rels])
    i1 = np.array([index[p.path1] for p in plist])
    i2 = np.array([index[p.path2] for p in plist])
    return feats[i1], feats[i2], np.array([p.same for p in plist])


def evaluate(run, data, a):
    from deepid2_core import safetensors
    from deepid2_core.backends import get_backend
    from deepid2_core.data import scan_identities
    from deepid2_core.face.inputs import PatchSpec
    from deepid2_core.verifier.baselines import CosineScorer
    from deepid2_core.verifier.commands import extract_paths
    from deepid2_core.verifier.features import FeatureExtractor, PatchInputs, load_patch_network
    from deepid2_core.verifier.joint_bayesian import JointBayesian
    from deepid2_core.verifier.lfw import read_pairs
    from deepid2_core.verifier.metrics import accuracy, auc, best_threshold, eer, roc_curve
    from deepid2_core.verifier.pca import PCA
    net_path = os.path.join(run, "best.safetensors")
    _, meta = safetensors.load(net_path)
    spec = PatchSpec.from_dict(json.loads(meta["input"])) if "input" in meta else PatchSpec()
    ext = FeatureExtractor(PatchInputs.whole(spec), [load_patch_network(net_path)],
                           get_backend("cpu"), cache_dir=os.path.join(run, "features"))
    t0 = time.perf_counter()
    ids = scan_identities(data)
    paths = [p for _, ps in ids for p in ps]
    labels = np.array([k for k, (_, ps) in enumerate(ids) for _ in ps])
    feats, keep, _ = extract_paths(ext, paths)
    labels = labels[keep]
    var = np.linalg.eigvalsh(np.cov(feats, rowvar=False))[::-1]
    rank = int(np.sum(var > RANK_TOL * max(var[0], 0.0)))
    pca = PCA.fit(feats, min(a.pca, rank))       # an early network can have dead features
    tr = pair_features(ext, a.lfw, read_pairs(a.pairs_train))
    te = pair_features(ext, a.lfw, read_pairs(a.pairs_test))
    t1 = time.perf_counter()
    jb = JointBayesian.fit(pca.transform(feats), labels, max_iter=a.jb_iter)
    t_jb = time.perf_counter() - t1
    out = dict(mode=spec.lighting, net=os.path.abspath(net_path), train_images=len(keep),
               train_identities=int(len(np.unique(labels))), pca=pca.dim, feature_rank=rank,
               jb_iterations=jb.iterations, jb_seconds=round(t_jb, 1),
               best_epoch=int(meta["best_epoch"]), best_val=float(meta["best_val"]))
    scores = {}
    for name, scorer in (("cosine", CosineScorer()), ("joint_bayesian", jb)):
        s_tr = scorer.score(pca.transform(tr[0]), pca.transform(tr[1]))
        s_te = scorer.score(pca.transform(te[0]), pca.transform(te[1]))
        t, acc_tr = best_threshold(s_tr, tr[2])
        roc = roc_curve(s_te, te[2])
        scores[name] = s_te
        scores[name + "_correct"] = (s_te >= t) == te[2]
        out[name] = dict(threshold=t, devtrain_accuracy=acc_tr,
                         devtest_accuracy=accuracy(s_te, te[2], t), devtest_auc=auc(roc),
                         devtest_eer=eer(roc),
                         devtest_best_accuracy=best_threshold(s_te, te[2])[1])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    np.savez(os.path.join(run, f"devtest_scores-pca{a.pca}.npz"), same=te[2], **scores)
    with open(os.path.join(run, f"eval-pca{a.pca}.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["train", "eval"])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--lam", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=os.path.join(RUNS, "lighting"))
    p.add_argument("--lfw", default=os.path.join(DATA, "lfw"))
    p.add_argument("--celeba", default=os.path.join(DATA, "celeba-lfwstyle"),
                   help="extra training identities ('' for none)")
    p.add_argument("--pairs-train", default=os.path.join(DATA, "pairsDevTrain.txt"))
    p.add_argument("--pairs-test", default=os.path.join(DATA, "pairsDevTest.txt"))
    p.add_argument("--pca", type=int, default=160,
                   help="PCA dimension (less where the features' rank is lower: eval json 'pca')")
    p.add_argument("--jb-iter", type=int, default=100, help="Joint Bayesian EM iterations")
    a = p.parse_args()
    modes = a.modes.split(",")
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    os.makedirs(a.runs, exist_ok=True)
    data = train_folder(a.runs, a.lfw, a.celeba, a.pairs_train)
    results = {}
    for mode in modes:
        run = os.path.join(a.runs, mode if a.seed == 0 else f"{mode}-seed{a.seed}")
        if a.stage == "train":
            if os.path.exists(os.path.join(run, "checkpoint.safetensors")):
                continue
            subprocess.run([sys.executable, "-m", "deepid2_core.cli", "train", "--data", data,
                            "--out", run, "--cache", os.path.join(a.runs, "cache", mode),
                            "--epochs", str(a.epochs), "--lr", str(a.lr), "--lambda", str(a.lam),
                            "--seed", str(a.seed), "--lighting", mode], check=True)
            continue
        results[mode] = evaluate(run, data, a)
        r = results[mode]
        print(f"{mode}: cosine {r['cosine']['devtest_accuracy']:.4f} (AUC "
              f"{r['cosine']['devtest_auc']:.4f}), JB {r['joint_bayesian']['devtest_accuracy']:.4f}"
              f" (AUC {r['joint_bayesian']['devtest_auc']:.4f})", flush=True)
    if a.stage == "eval":
        with open(os.path.join(a.runs, f"summary-seed{a.seed}-pca{a.pca}.json"), "w") as f:
            json.dump(results, f, indent=1)
        print("| lighting | cosine acc | cosine AUC | JB acc | JB AUC | val acc (ident) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mode, r in results.items():
            print(f"| {mode} | {r['cosine']['devtest_accuracy']:.4f} | "
                  f"{r['cosine']['devtest_auc']:.4f} | "
                  f"{r['joint_bayesian']['devtest_accuracy']:.4f} | "
                  f"{r['joint_bayesian']['devtest_auc']:.4f} | {r['best_val']:.4f} |")


if __name__ == "__main__":
    main()
