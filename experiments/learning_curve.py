"""What limits accuracy here: one patch network (eyes@1.2/rgb, the recipe of the
shipped model: --augment --epochs 60) trained on a share of half 1's training people,
or on a share of each person's images, and tested on LFW View 2 folds 6-10.

    python experiments/learning_curve.py [--shares 25,50] [--patch 56]

For each share s: `people-s` keeps s% of the people of half 1's training folder (a
seeded draw; all their images), `images-s` keeps every person and s% of each one's
images (at least one; a seeded draw per person). Each subset is a folder of symbolic
links under RUNS/learning_curve; then `deepid2 train`, `deepid2 fit-verifier` on the
same people, `deepid2 eval-lfw --folds 6-10`. The 100% point is the
`lfw_multipatch.py --augment --epochs 60` run of the same patch. Prints a JSON line per
run; finished runs are kept.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lfw_protocol import DATA, RUNS  # noqa: E402


def subset_folder(src, dst, share, by, seed=0):
    """dst: symlinks to share % of src's people (by "people") or of each person's
    images (by "images")."""
    if os.path.isdir(dst):
        return dst
    rng = np.random.default_rng(seed)
    people = sorted(p for p in os.listdir(src) if os.path.isdir(os.path.join(src, p)))
    if by == "people":
        people = sorted(rng.permutation(people)[:max(1, round(len(people) * share / 100))])
    tmp = dst + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    for p in people:
        files = sorted(os.listdir(os.path.join(src, p)))
        if by == "images":
            files = sorted(rng.permutation(files)[:max(1, round(len(files) * share / 100))])
        os.makedirs(os.path.join(tmp, p), exist_ok=True)
        for f in files:
            os.symlink(os.path.realpath(os.path.join(src, p, f)), os.path.join(tmp, p, f))
    os.rename(tmp, dst)
    return dst


def cli(*args):
    subprocess.run([sys.executable, "-m", "deepid2_core.cli", *args], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join(RUNS, "learning_curve"))
    p.add_argument("--train", default=os.path.join(RUNS, "lfw_protocol", "data",
                                                   "half1-lfw_aligned"),
                   help="half 1's training folder (lfw_multipatch.py train makes it)")
    p.add_argument("--lfw", default=os.path.join(RUNS, "lfw_aligned"))
    p.add_argument("--pairs", default=os.path.join(DATA, "pairs.txt"))
    p.add_argument("--shares", default="25,50")
    p.add_argument("--by", default="people,images")
    p.add_argument("--patch", default="56")
    p.add_argument("--epochs", type=int, default=60)
    a = p.parse_args()
    for by in a.by.split(","):
        for share in (int(s) for s in a.shares.split(",")):
            name = f"{by}-{share}"
            data = subset_folder(a.train, os.path.join(a.runs, "data", name), share, by)
            run = os.path.join(a.runs, name)
            model = os.path.join(run, "verifier.safetensors")
            if not os.path.exists(os.path.join(run, "done")):
                cli("train", "--data", data, "--out", run, "--layout", "deepid2", "--patch",
                    a.patch, "--landmarks", "mean", "--epochs", str(a.epochs), "--lr", "0.03",
                    "--lambda", "0.05", "--seed", "0", "--augment")
                open(os.path.join(run, "done"), "w").close()
            if not os.path.exists(model):
                cli("fit-verifier", "--nets", run, "--data", data, "--out", model,
                    "--em-iters", "30")
            out = os.path.join(run, "eval")
            if not os.path.exists(os.path.join(out, "metrics.json")):
                cli("eval-lfw", "--lfw", a.lfw, "--unaligned", os.path.join(DATA, "lfw"),
                    "--pairs", a.pairs, "--folds", "6-10", "--model", model, "--out", out)
            n_img = sum(len(fs) for _, _, fs in os.walk(data))
            with open(os.path.join(out, "metrics.json")) as f:
                m = json.load(f)
            print(json.dumps(dict(run=name, people=len(os.listdir(data)), images=n_img,
                                  accuracy=round(m["mean"], 4), stderr=round(m["stderr"], 4),
                                  auc=round(m["auc"], 4))), flush=True)


if __name__ == "__main__":
    main()
