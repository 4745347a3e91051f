"""The honest LFW View 2 protocol (../shared/data/README.md): a model trained on
the people of folds 1-5 (+ celeba-lfwstyle) is tested on folds 6-10, and a model
trained on the people of folds 6-10 (+ celeba) on folds 1-5; each fold's
threshold is chosen on the other 4 folds of its half; the 10 fold accuracies
together give the 10-fold figure.

    python experiments/lfw_protocol.py train --variant b --lam 0.05   # both halves
    python experiments/lfw_protocol.py eval  --variant b              # fit verifiers, test
    python experiments/lfw_protocol.py train --variant a --lam 0 --halves half1      # ident alone
    python experiments/lfw_protocol.py train --variant c --lam 1 --ident-weight 0 --halves half1

Everything is written under --runs (default $DEEPID2_RUNS/lfw_protocol;
DEEPID2_RUNS defaults to ./runs, relative to the current directory). --images: raw (LFW's deep-funneled images as they are,
the geometry the patch crop was measured on) or a folder made by `deepid2 align`.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data"))
# where the studies write: ./runs of the current directory unless DEEPID2_RUNS is set
RUNS = os.environ.get("DEEPID2_RUNS", "runs")
HALVES = {"half1": (range(0, 5), range(5, 10)), "half2": (range(5, 10), range(0, 5))}


def train_folder(runs, half, lfw, celeba, folds):
    """Identity folders of the training people: symlinks into lfw and celeba."""
    from deepid2_core.verifier.lfw import people_of_folds
    d = os.path.join(runs, "data", f"{half}-{os.path.basename(os.path.normpath(lfw))}")
    if os.path.isdir(d):
        return d
    os.makedirs(d + ".tmp", exist_ok=True)
    people = people_of_folds([folds[k] for k in HALVES[half][0]])
    for name in people:
        src = os.path.abspath(os.path.join(lfw, name))
        if os.path.isdir(src):                 # a person whose images all lacked a face
            os.symlink(src, os.path.join(d + ".tmp", name))
    for name in sorted(os.listdir(celeba)):
        src = os.path.abspath(os.path.join(celeba, name))
        if os.path.isdir(src):
            os.symlink(src, os.path.join(d + ".tmp", name))
    os.rename(d + ".tmp", d)
    with open(os.path.join(runs, "data", f"{half}-people.json"), "w") as f:
        json.dump({"lfw_people": people, "celeba_identities": len(os.listdir(celeba))}, f)
    return d


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["train", "eval"])
    p.add_argument("--variant", required=True)
    p.add_argument("--lam", type=float, default=0.05)
    p.add_argument("--ident-weight", type=float, default=1.0,
                   help="weight of the identification loss (0: verification alone)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--runs", default=os.path.join(RUNS, "lfw_protocol"))
    p.add_argument("--lfw", default=os.path.join(DATA, "lfw"))
    p.add_argument("--celeba", default=os.path.join(DATA, "celeba-lfwstyle"))
    p.add_argument("--pairs", default=os.path.join(DATA, "pairs.txt"))
    p.add_argument("--pca", type=int, default=180)
    p.add_argument("--em-iters", type=int, help="Joint Bayesian EM iterations at most")
    p.add_argument("--em-tol", type=float, help="Joint Bayesian EM convergence tolerance")
    p.add_argument("--halves", default="half1,half2", help="which halves to run")
    p.add_argument("--data-tag", default="", help="name of the training data variant")
    a = p.parse_args()
    from deepid2_core.verifier.lfw import read_pairs
    folds = read_pairs(a.pairs)
    out = os.path.join(a.runs, a.variant)
    results = {}
    todo = a.halves.split(",")
    for half in todo:
        data = train_folder(a.runs, half, a.lfw, a.celeba, folds)
        run = os.path.join(out, half)
        if a.stage == "train":
            if os.path.exists(os.path.join(run, "checkpoint.safetensors")):
                continue
            subprocess.run([sys.executable, "-m", "deepid2_core.cli", "train", "--data", data,
                            "--out", run, "--cache", os.path.join(a.runs, "cache", os.path.basename(data)),
                            "--epochs", str(a.epochs), "--lr", str(a.lr),
                            "--lambda", str(a.lam)]
                           + (["--ident-weight", str(a.ident_weight)] if a.ident_weight != 1.0
                              else []), check=True)
            continue
        from deepid2_core.verifier.commands import eval_lfw_main, fit_verifier_main
        model = os.path.join(run, "verifier.safetensors")
        if not os.path.exists(model):
            fit_verifier_main([run], data, model, pca=a.pca, em_iters=a.em_iters,
                              em_tol=a.em_tol)
        test = [k + 1 for k in HALVES[half][1]]
        raw = os.path.join(DATA, "lfw")
        results[half] = eval_lfw_main(a.lfw, a.pairs, model, os.path.join(run, "eval"),
                                      folds=test, unaligned=None if a.lfw == raw else raw)
    if a.stage == "eval":
        accs = np.concatenate([results[h]["accuracies"] for h in results])
        summary = {"variant": a.variant, "lambda": a.lam, "ident_weight": a.ident_weight,
                   "fold_accuracies": [float(x) for x in accs],
                   "mean": float(accs.mean()), "std": float(accs.std(ddof=1)),
                   "stderr": float(accs.std(ddof=1) / np.sqrt(len(accs))),
                   "halves": {h: {k: results[h][k] for k in ("mean", "stderr", "auc", "eer",
                                                              "tar_at_far_1e-3")}
                              for h in results}}
        summary["lfw"], summary["celeba"] = os.path.abspath(a.lfw), os.path.abspath(a.celeba)
        with open(os.path.join(out, f"summary-{a.halves.replace(',', '+')}.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps(summary["halves"], indent=1))
        print(f"{len(accs)}-fold accuracy ({a.variant}): {summary['mean']:.4f} +- {summary['stderr']:.4f}")


if __name__ == "__main__":
    main()
