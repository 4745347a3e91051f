"""Variant (d) of issue 6: the multi-patch DeepID2 model (one network per
patch of the deepid2 layout, features of each patch and its flipped
counterpart concatenated, PCA + Joint Bayesian) under the honest LFW split of
experiments/lfw_protocol.py, with the paper's forward-backward patch selection.

    python experiments/lfw_multipatch.py train               # one network per candidate and half
    python experiments/lfw_multipatch.py features            # each network's features, cached
    python experiments/lfw_multipatch.py select              # on half 1's validation identities
    python experiments/lfw_multipatch.py eval                # fit-verifier + eval-lfw per half
    python experiments/lfw_multipatch.py ship --accuracy "..."  # half 1's model -> the package

Selection never sees a test pair: half 1's training identities (the people of
folds 1-5 + celeba) are split 80 / 20 (seed 0); PCA + Joint Bayesian are fitted
on the 80%, and a subset's score is the best-threshold accuracy on 3,000 +
3,000 pairs of the other 20% (people the networks were trained on, but the
verifier was not). The curve of accuracy against the number of patches is
then also measured on the test pairs of half 1 (folds 6-10), for each size's
selected subset, fitted on all training identities. `eval` takes the subset
with the best validation score (or --patches) through the real files:
`deepid2 fit-verifier` with those networks, `deepid2 eval-lfw` on the test
folds of each half.

Runs go under --runs (default $DEEPID2_RUNS/lfw_protocol); --lfw and --celeba
default to $DEEPID2_RUNS/lfw_aligned and $DEEPID2_RUNS/celeba_aligned.
DEEPID2_RUNS defaults to ./runs, relative to the current directory.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lfw_protocol import DATA, HALVES, RUNS  # noqa: E402
from deepid2_core.verifier.pca import DEFAULT_DIM, RANK_TOL  # noqa: E402

CANDIDATES = (14, 25, 56, 64, 35, 44, 125, 2)


def run_dir(a, half, p):
    return os.path.join(a.runs, a.name, half, f"p{p}")


def data_dir(a, half):
    base = os.path.join(a.runs, "data", f"{half}-{os.path.basename(os.path.normpath(a.lfw))}")
    return base + f"+{a.extra_name}" if a.extra else base


def extra_folder(a, half):
    """The half's training folder plus every identity folder of --extra
    (symlinks, named EXTRA_NAME_<id> so they cannot collide with LFW names)."""
    d = data_dir(a, half)
    if os.path.isdir(d):
        return d
    base = data_dir(argparse.Namespace(**dict(vars(a), extra=None)), half)
    os.makedirs(d + ".tmp", exist_ok=True)
    for name in sorted(os.listdir(base)):
        os.symlink(os.path.realpath(os.path.join(base, name)), os.path.join(d + ".tmp", name))
    for name in sorted(os.listdir(a.extra)):
        src = os.path.join(a.extra, name)
        if os.path.isdir(src):
            os.symlink(os.path.abspath(src), os.path.join(d + ".tmp", f"{a.extra_name}_{name}"))
    os.rename(d + ".tmp", d)
    return d


def pair_images(a):
    """(relative paths of every image the pairs name, their file paths: aligned,
    or LFW's own image where alignment found no face)."""
    from deepid2_core.verifier.lfw import flatten, missing_images, read_pairs
    folds = read_pairs(a.pairs)
    pairs, _ = flatten(folds)
    rels = sorted({p for pr in pairs for p in pr[:2]})
    missing = set(missing_images(folds, a.lfw))
    raw = os.path.join(DATA, "lfw")
    return rels, [os.path.join(raw if r in missing else a.lfw, *r.split("/")) for r in rels]


def features_of(a, half, p):
    """{train, labels, lfw, lfw_rels} of patch network p of half, computed once."""
    path = os.path.join(a.runs, a.name, half, f"feats-p{p}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return {k: z[k] for k in z.files}
    from deepid2_core.backends import get_backend
    from deepid2_core.data import scan_identities
    from deepid2_core.verifier.commands import extract_paths, fit_layout
    from deepid2_core.verifier.features import FeatureExtractor
    layout, nets = fit_layout([run_dir(a, half, p)])
    ext = FeatureExtractor(layout, nets, get_backend("cpu"),
                           cache_dir=os.path.join(a.runs, a.name, "feature-cache"))
    ids = scan_identities(data_dir(a, half))
    paths = [q for _, qs in ids for q in qs]
    labels = np.array([k for k, (_, qs) in enumerate(ids) for _ in qs])
    train, keep, problems = extract_paths(ext, paths)
    if problems:
        raise SystemExit(f"unreadable training images: {problems[:3]}")
    rels, lfw_paths = pair_images(a)
    lfw, keep2, problems = extract_paths(ext, lfw_paths)
    if problems:
        raise SystemExit(f"unreadable LFW images: {problems[:3]}")
    out = dict(train=train, labels=labels[keep], lfw=lfw, lfw_rels=np.array(rels))
    np.savez(path + ".tmp.npz", **out)
    os.replace(path + ".tmp.npz", path)
    return out


def test_pairs(a, half, rels):
    """(index1, index2, same, fold) of the test pairs of half into lfw_rels."""
    from deepid2_core.verifier.lfw import flatten, read_pairs
    folds = read_pairs(a.pairs)
    pairs, fold_of = flatten([folds[k] for k in HALVES[half][1]])
    index = {r: i for i, r in enumerate(rels)}
    return (np.array([index[p.path1] for p in pairs]), np.array([index[p.path2] for p in pairs]),
            np.array([p.same for p in pairs]), np.array(fold_of))


def stack(feats, subset, key):
    return np.concatenate([feats[p][key] for p in subset], 1)


def pca_dim(x, want):
    """want, or the features' rank where it is lower (dead ReLU units: one
    patch's 320-d features have rank ~180)."""
    xc = x - x.mean(0)
    var = np.linalg.eigvalsh(xc.T @ xc / (len(x) - 1))
    return min(want, int(np.sum(var > RANK_TOL * var[-1])))


def spanned(feats, rows):
    """Each patch's features in the directions they span on `rows` (its PCA
    without the null directions: dead ReLU units leave ~180 of 320). PCA +
    Joint Bayesian on a concatenation of these are those of the raw features,
    in half the dimensions, so a subset is scored several times faster."""
    out = {}
    for p, f in feats.items():
        x = f["train"][rows].astype(np.float64)
        mean = x.mean(0)
        var, vec = np.linalg.eigh((x - mean).T @ (x - mean))
        basis = vec[:, var > RANK_TOL * var[-1]]
        out[p] = {k: ((f[k] - mean) @ basis).astype(np.float32) for k in ("train", "lfw")}
    return out


def validation_split(labels):
    """Half 1's training people split 80 / 20 (seed 0): (is_val per image,
    3,000 + 3,000 validation pairs (first, second, same) among the 20%)."""
    from deepid2_core.verifier.model import sample_pairs
    ids = np.unique(labels)
    val_ids = np.random.default_rng(0).permutation(ids)[:len(ids) // 5]
    is_val = np.isin(labels, val_ids)
    return is_val, sample_pairs(labels[is_val], 3000, seed=1)


def select(a):
    from deepid2_core.verifier.metrics import best_threshold, kfold_accuracy
    from deepid2_core.verifier.model import Verifier
    from deepid2_core.verifier.selection import forward_backward
    half = a.select_half
    raw = {p: features_of(a, half, p) for p in a.candidates}
    labels = raw[a.candidates[0]]["labels"]
    ids = np.unique(labels)
    is_val, (va, vb, vsame) = validation_split(labels)
    val_ids = np.unique(labels[is_val])
    feats = spanned(raw, ~is_val)

    def score(subset):
        x = stack(feats, subset, "train")
        # d=None: PCA finds min(180, rank) itself, one eigendecomposition fewer
        d = None if a.pca == DEFAULT_DIM else pca_dim(x[~is_val], a.pca)
        ver = Verifier.fit(x[~is_val], labels[~is_val], d=d,
                           max_iter=a.em_iters, impostor_pairs=0)   # the score alone
        xv = x[is_val]
        return best_threshold(ver.score(xv[va], xv[vb]), vsame)[1]

    print(f"selection on {half}: {len(ids) - len(val_ids)} fitting identities, "
          f"{len(val_ids)} validation identities ({is_val.sum()} images)", flush=True)
    best = forward_backward(score, a.candidates, max_size=a.max_size,
                            log=lambda m: print("  " + m, flush=True))
    rels = raw[a.candidates[0]]["lfw_rels"]
    i1, i2, same, fold = test_pairs(a, half, rels)
    feats = spanned(raw, slice(None))
    curve = []
    for k, (val, subset) in best.items():
        x = stack(feats, subset, "train")
        ver = Verifier.fit(x, labels, d=pca_dim(x, a.pca), max_iter=a.em_iters, impostor_pairs=0)
        t = stack(feats, subset, "lfw")
        res = kfold_accuracy(ver.score(t[i1], t[i2]), same, fold)
        curve.append(dict(patches=k, subset=list(subset), validation=val, test_mean=res["mean"],
                          test_stderr=res["stderr"]))
        print(f"{k} patches {list(subset)}: validation {val:.4f}, test (folds "
              f"{HALVES[half][1][0] + 1}-{HALVES[half][1][-1] + 1}) {res['mean']:.4f} +- "
              f"{res['stderr']:.4f}", flush=True)
    chosen = max(curve, key=lambda c: c["validation"])
    out = os.path.join(a.runs, a.name, "selection.json")
    with open(out, "w") as f:
        json.dump(dict(half=half, candidates=list(a.candidates), curve=curve,
                       chosen=chosen["subset"], em_iters=a.em_iters, pca=a.pca), f, indent=1)
    print(f"chosen: {chosen['subset']} (best validation accuracy); wrote {out}")


def chosen_patches(a):
    """--patches, else the subset `select` chose."""
    if a.patches:
        return [int(p) for p in a.patches.split(",")]
    with open(os.path.join(a.runs, a.name, "selection.json")) as f:
        return json.load(f)["chosen"]


def evaluate(a):
    from deepid2_core.verifier.commands import eval_lfw_main, fit_verifier_main
    subset = chosen_patches(a)
    tag = "-".join(map(str, subset))
    accs, halves = [], {}
    for half in a.halves.split(","):
        model = os.path.join(a.runs, a.name, half, f"verifier-{tag}.safetensors")
        cache = os.path.join(a.runs, a.name, "feature-cache")
        if not os.path.exists(model):
            x = stack({p: features_of(a, half, p) for p in subset}, subset, "train")
            fit_verifier_main([run_dir(a, half, p) for p in subset], data_dir(a, half), model,
                              pca=pca_dim(x, a.pca), cache_dir=cache,
                              em_iters=a.em_iters)
        res = eval_lfw_main(a.lfw, a.pairs, model, os.path.join(a.runs, a.name, half, f"eval-{tag}"),
                            folds=[k + 1 for k in HALVES[half][1]],
                            unaligned=os.path.join(DATA, "lfw"), cache_dir=cache)
        accs += res["accuracies"]
        halves[half] = {k: res[k] for k in ("mean", "stderr", "auc", "eer", "tar_at_far_1e-3",
                                            "baselines")}
    accs = np.array(accs)
    summary = dict(patches=subset, fold_accuracies=accs.tolist(), mean=float(accs.mean()),
                   stderr=float(accs.std(ddof=1) / np.sqrt(len(accs))), halves=halves)
    with open(os.path.join(a.runs, a.name, f"summary-{tag}-{a.halves.replace(',', '+')}.json"),
              "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(halves, indent=1))
    print(f"{len(accs)}-fold accuracy (d, patches {subset}): {summary['mean']:.4f} +- "
          f"{summary['stderr']:.4f}")


def ship(a):
    """Half 1's verifier (people of folds 1-5 + celeba) as the package's model,
    its machine-local provenance replaced by the recipe."""
    from deepid2_core import safetensors
    subset = chosen_patches(a)
    tag = "-".join(map(str, subset))
    tensors, meta = safetensors.load(os.path.join(a.runs, a.name, "half1", f"verifier-{tag}.safetensors"))
    trained = json.loads(meta["trained_on"])
    meta["trained_on"] = json.dumps({
        "data": "LFW people of View 2 folds 1-5 + ../shared/data/celeba-lfwstyle, aligned by "
                "`deepid2 align --pick center` (the C++ pipeline: YuNet, landmark cascade, "
                "similarity alignment)",
        "images": trained["images"],
        "identities": trained["identities"],
        "people_list": "experiments/lfw_protocol.py writes half1-people.json"})
    meta["net_files"] = json.dumps([
        f"deepid2 train --layout deepid2 --patch {p} --landmarks mean --epochs {a.epochs} "
        f"--lr 0.03 --lambda {a.lam:g} --seed 0{' --augment' if a.augment else ''} (half 1)"
        for p in subset])
    opts = " ".join(["--name", a.name_given] + augment_options(a)
                    + ([] if a.epochs == 20 else ["--epochs", str(a.epochs)])
                    + ([] if a.lam == 0.05 else ["--lam", f"{a.lam:g}"]))
    patches = ",".join(map(str, subset))
    stages = [f"python experiments/lfw_multipatch.py train {opts} --candidates {patches} "
              "--halves half1"]
    if not a.patches:   # chosen by `select`: its candidates and options
        with open(os.path.join(a.runs, a.name, "selection.json")) as f:
            sel = json.load(f)
        cands = ",".join(map(str, sel["candidates"]))
        size = len(sel["curve"])
        stages = [f"python experiments/lfw_multipatch.py train {opts} --candidates {cands} "
                  "--halves half1",
                  f"python experiments/lfw_multipatch.py select {opts} --candidates {cands} "
                  f"--max-size {size}   # chooses {patches}"]
    meta["recipe"] = json.dumps([
        "deepid2 align ../shared/data/lfw runs/lfw_aligned --pick center",
        "deepid2 align ../shared/data/celeba-lfwstyle runs/celeba_aligned --pick center",
        *stages,
        f"python experiments/lfw_multipatch.py eval {opts} --patches {patches} --halves half1",
        f"python experiments/lfw_multipatch.py ship {opts} --accuracy ..."])
    meta["lfw_folds_6_10_accuracy"] = a.accuracy
    meta["impostor_scores_from"] = (
        "deepid2 fit-verifier's gallery simulation (deepid2_core/verifier/impostor.py, seed 0, "
        f"20000 trials per size) on the features of its own training faces ({trained['images']} "
        f"images of {trained['identities']} identities, the people of trained_on)")
    safetensors.save(a.out, tensors, meta)
    print(f"wrote {a.out}: patches {subset}")
    # the C++ example's face patches follow the model's patches (ctest example_shipped_model)
    import subprocess
    faces = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cpp", "examples",
                         "faces", "make_faces.py")
    subprocess.run([sys.executable, faces, "--model", a.out], check=True)


def augment_options(a):
    return ["--augment"] if a.augment else []


def train(a):
    """`deepid2 train` of every candidate patch on each half's training people
    (faces aligned by `deepid2 align`), one thread each; finished runs are kept."""
    import subprocess
    from lfw_protocol import train_folder
    from deepid2_core.verifier.lfw import read_pairs
    folds = read_pairs(a.pairs)
    for half in a.halves.split(","):
        data = train_folder(a.runs, half, a.lfw, a.celeba, folds)
        if a.extra:
            data = extra_folder(a, half)
        for c in a.candidates:
            out = run_dir(a, half, c)
            if os.path.exists(os.path.join(out, "done")):
                continue
            resume = ["--resume"] if os.path.exists(os.path.join(out, "checkpoint.safetensors")) else []
            subprocess.run([sys.executable, "-m", "deepid2_core.cli", "train", "--data", data,
                            "--out", out, "--layout", "deepid2", "--patch", str(c),
                            "--landmarks", "mean", "--epochs", str(a.epochs), "--lr", "0.03",
                            "--lambda", f"{a.lam:g}", "--seed", "0"] + augment_options(a) + resume,
                           check=True,
                           env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
            open(os.path.join(out, "done"), "w").close()


def arguments(argv=None, stages=("train", "features", "select", "eval", "ship"), doc=None):
    """The options every stage shares (experiments/jb_ensemble.py uses them too)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("stage", choices=stages)
    p.add_argument("--runs", default=os.path.join(RUNS, "lfw_protocol"))
    p.add_argument("--lfw", default=os.path.join(RUNS, "lfw_aligned"),
                   help="faces from `deepid2 align`")
    p.add_argument("--celeba", default=os.path.join(RUNS, "celeba_aligned"),
                   help="celeba-lfwstyle aligned by `deepid2 align`")
    p.add_argument("--pairs", default=os.path.join(DATA, "pairs.txt"))
    p.add_argument("--extra", help="more training identity folders (aligned faces), e.g. "
                                   "celeba-aligned through experiments/pad_celeba_aligned.py + align")
    p.add_argument("--extra-name", default="c2", help="prefix of --extra's identities")
    p.add_argument("--name", default="d", help="run folder under --runs (d: variant (d))")
    p.add_argument("--augment", action="store_true",
                   help="train: `deepid2 train --augment`; the runs go under NAME-aug (give "
                        "--augment to every stage)")
    p.add_argument("--epochs", type=int, default=20,
                   help="train: epochs per network; other than 20, the runs go under NAME-eN "
                        "(give it to every stage)")
    p.add_argument("--candidates", default=",".join(map(str, CANDIDATES)),
                   help="deepid2 layout patch indices with trained networks")
    p.add_argument("--lam", type=float, default=0.05,
                   help="train: the verification loss weight; other than 0.05, the runs go "
                        "under NAME-lamX (give it to every stage)")
    p.add_argument("--halves", default="half1,half2")
    p.add_argument("--select-half", default="half1")
    p.add_argument("--patches", help="eval, ship: these patches instead of selection.json's")
    p.add_argument("--max-size", type=int,
                   help="select: grow subsets up to this many patches (default: all candidates)")
    p.add_argument("--pca", type=int, default=180)
    p.add_argument("--em-iters", type=int, default=30)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                 "deepid2_core", "models", "verifier.safetensors"))
    p.add_argument("--accuracy", default="", help="ship: the measured accuracy line to record")
    a = p.parse_args(argv)
    a.candidates = tuple(int(c) for c in a.candidates.split(","))
    a.name_given = a.name
    if a.augment:   # never mixed with the runs without augmentation
        a.name += "-aug"
    if a.epochs != 20:
        a.name += f"-e{a.epochs}"
    if a.lam != 0.05:
        a.name += f"-lam{a.lam:g}"
    return a


def main():
    a = arguments()
    if a.stage == "train":
        train(a)
    elif a.stage == "features":
        for half in a.halves.split(","):
            for c in a.candidates:
                if os.path.exists(os.path.join(run_dir(a, half, c), "done")):
                    features_of(a, half, c)
                    print(f"{half} p{c}: features ready", flush=True)
                else:
                    print(f"{half} p{c}: network not trained yet", flush=True)
    elif a.stage == "select":
        select(a)
    elif a.stage == "ship":
        ship(a)
    else:
        evaluate(a)


if __name__ == "__main__":
    main()
