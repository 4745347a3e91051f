"""The verifier's commands: `deepid2 fit-verifier`, `verify`, `eval-lfw`
(enroll / identify are in gallery.py). Each is a function returning a dict, so
scripts (experiments/lfw_protocol.py) call the same code as the command line.

A verifier model is the file of docs/verifier_model.md: the patch networks
(one whole-face network, or one per chosen patch of a layout), PCA and Joint
Bayesian. Faces go in either as plain photographs
(detection, landmarks and alignment as `deepid2 align` does them) or, with
`aligned=True`, as faces already aligned to LFW's 250 x 250 geometry.
"""
import json
import os
import sys
import time

import numpy as np

from .. import checks
from ..data import scan_identities
from ..face.inputs import PatchSpec, spec_from_dict
from ..progress import Progress
from .features import FeatureExtractor, PatchInputs, patch_names, patch_network
from .lfw import flatten, missing_images, read_pairs
from .metrics import auc, eer, kfold_accuracy, roc_curve, tar_at_far
from .model import Verifier, sample_pairs
from .pca import DEFAULT_DIM


def _backend(name="cpu"):
    from ..backends import get_backend
    return get_backend(name)


def prepare_faces(paths, aligned=False, progress=True, pick="largest"):
    """Image paths -> (faces: aligned BGR arrays or, when aligned, the paths,
    problems: {path: reason}) for unreadable images and images without a face.
    pick: which face of a photograph ("largest" or "center")."""
    from ..face.detect import read_image
    from ..face.pipeline import align_image, new_aligner
    faces, problems = {}, {}
    aligner = None if aligned else new_aligner(pick=pick)
    bar = Progress(len(paths), "faces", enabled=progress and len(paths) > 1)
    for p in paths:
        img, why = read_image(p)
        if img is None:
            problems[p] = f"cannot read {p}: {why}"
        elif aligned:
            faces[p] = img
        else:
            face, why = align_image(img, aligner=aligner)
            if face is None:
                problems[p] = f"no face found in {p} ({why})"
            else:
                faces[p] = face
        bar.update(1)
    bar.close()
    return faces, problems


def extract_paths(ext, paths, chunk=512):
    """Features of image files, skipping unreadable ones: (features, kept
    indices, reasons). Chunks keep memory flat; a chunk with a bad file is
    redone one file at a time to find it."""
    feats, keep, problems = [], [], []
    bar = Progress(len(paths), "features", enabled=ext.progress)
    progress, ext.progress = ext.progress, False
    try:
        for s in range(0, len(paths), chunk):
            part = list(range(s, min(s + chunk, len(paths))))
            try:
                feats.append(ext.extract([paths[i] for i in part]))
                keep += part
            except ValueError:
                for i in part:
                    try:
                        feats.append(ext.extract([paths[i]]))
                        keep.append(i)
                    except ValueError as e:
                        problems.append(str(e))
            bar.update(len(part))
    finally:
        ext.progress = progress
        bar.close()
    dim = ext.dim
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
            np.array(keep, np.int64), problems)


def trained_input(meta):
    """The patch a network was trained on (face.inputs.PatchSpec: the fixed crop;
    LayoutPatch: a patch of a layout), from its model file's "input"
    metadata (absent: the default PatchSpec)."""
    if "input" not in meta:
        return PatchSpec()
    return spec_from_dict(json.loads(meta["input"]))


def fit_layout(nets):
    """(layout, [PatchNetwork]) for trained network files: one whole-face
    network gives PatchInputs.whole (a v1 file's), anything else PatchInputs."""
    files = [checks.run_model_file(n) for n in nets]   # checked: checks.trained_network
    if not files:
        raise ValueError("fitting a verifier needs at least one trained network")
    from .. import safetensors
    loaded = [safetensors.load(f) for f in files]   # each file read (and hashed) once
    specs = [trained_input(meta) for _, meta in loaded]
    networks = [patch_network(tensors, meta, f) for f, (tensors, meta) in zip(files, loaded)]
    if len(specs) == 1 and isinstance(specs[0], PatchSpec):
        return PatchInputs.whole(specs[0]), networks
    layout = PatchInputs(tuple(specs))
    names = patch_names(layout)
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        raise ValueError(f"patch {sorted(dup)[0]!r} is given by more than one network")
    return layout, networks


def _to_stderr(text):
    print(text, file=sys.stderr)


def fit_verifier_main(nets, data, out, pca=None, n_pairs=3000, seed=0,
                      backend="cpu", cache_dir=None, log=print, em_iters=None, em_tol=None,
                      warn=_to_stderr):
    """Features of every image under data (identity folders of aligned faces)
    -> PCA + Joint Bayesian, thresholds on training pairs, the best scores of
    outsider probes over simulated galleries (impostor.py) -> verifier file. em_iters, em_tol:
    JointBayesian.fit's max_iter and tol (None: its defaults). log: the result
    line (stdout); warn: progress and skipped images (stderr). pca=None: 180,
    or the rank of the features where that is less (with a note)."""
    layout_obj, networks = fit_layout(nets)
    ids = scan_identities(data)
    paths = [p for _, ps in ids for p in ps]
    labels = np.array([k for k, (_, ps) in enumerate(ids) for _ in ps])
    ext = FeatureExtractor(layout_obj, networks, _backend(backend), cache_dir=cache_dir)
    feats, keep, problems = extract_paths(ext, paths)
    for why in problems[:5]:
        warn(f"skipped: {why}")
    if len(keep) < len(paths):
        warn(f"{len(paths) - len(keep)} images skipped")
    labels = labels[keep]
    multi = np.sum(np.bincount(labels) >= 2) if len(labels) else 0
    if multi < 2:
        raise ValueError(f"{data}: fitting needs at least 2 identities with 2 or more readable "
                         f"images, found {multi}")
    warn(f"{len(keep)} images of {len(np.unique(labels))} identities, features "
         f"{feats.shape[1]}-d")
    rank = min(len(feats) - 1, feats.shape[1])
    if pca is not None and pca > rank:
        raise ValueError(f"--pca {pca} exceeds what {len(feats)} images of {feats.shape[1]}-d "
                         f"features allow (at most {rank})")
    jb = {k: v for k, v in (("max_iter", em_iters), ("tol", em_tol)) if v is not None}
    t0 = time.perf_counter()
    ver = Verifier.fit(feats, labels, d=pca, n_pairs=n_pairs, seed=seed, **jb)
    fit_s = time.perf_counter() - t0
    if pca is None:
        pca = ver.pca.dim
        if pca < DEFAULT_DIM:
            warn(f"note: PCA {pca} dimensions, not the default {DEFAULT_DIM}: the features of "
                 f"{len(feats)} images span only {pca} (--pca sets it; more images allow more)")
    a, b, same = sample_pairs(labels, n_pairs, seed + 1)
    train_acc = float(np.mean((ver.score(feats[a], feats[b]) >= ver.threshold) == same))
    meta = {"trained_on": json.dumps({"data": os.path.abspath(data), "images": len(keep),
                                      "identities": int(len(np.unique(labels)))}),
            "train_pair_accuracy": f"{train_acc:.4f}",
            "net_files": json.dumps([os.path.abspath(n) for n in nets])}
    ver.with_networks(ext).save(out, extra_meta=meta)
    log(f"PCA {pca}, Joint Bayesian after {ver.jb.iterations} EM iterations ({fit_s:.0f} s); "
        f"threshold "
        f"{ver.threshold:.3f} (accuracy {train_acc:.4f} on other training pairs); impostor "
        f"scores of {ver.impostor.trials} outsider probes per simulated gallery size "
        f"({', '.join(map(str, ver.impostor.sizes(1)))} people; means of "
        f"1-{max(ver.impostor.tables)} images); wrote {out}")
    return dict(threshold=ver.threshold, train_pair_accuracy=train_acc, images=len(keep))


def read_pair_lines(path):
    """[(line number, path A, path B, None) or (line number, the line, "", why)]
    of a --pairs file: two paths a line, split at a tab when the line holds
    one (paths with spaces), else at whitespace; blank lines and lines
    starting with # are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"--pairs {path} is not UTF-8 text ({e.reason} at byte {e.start})") \
            from None
    out = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [x for x in line.split("\t") if x.strip()] if "\t" in line else line.split()
        fields = [x.strip() for x in fields]
        if len(fields) == 2:
            out.append((k, fields[0], fields[1], None))
        else:
            out.append((k, line.strip(), "", f"line {k}: expected two image paths, got "
                        f"{len(fields)} (separate them by a tab when a path holds a space)"))
    if not out:
        raise ValueError(f"--pairs {path} holds no pairs (one line per pair: A B, or A<TAB>B)")
    return out


def verify_pairs_main(pairs_file, model=None, aligned=False, log=print, warn=_to_stderr,
                      chunk=256, pick="largest"):
    """`deepid2 verify --pairs FILE`: one line per pair on stdout, in the
    file's order: A, B, same/different (or "error: why"), score, tab-separated
    ("-" for the score of a pair that failed). The model loads once; each
    image is read and embedded once. Returns (pairs scored, pairs failed)."""
    lines = read_pair_lines(pairs_file)
    m = Verifier.load(model, progress=False)
    feats, problems = {}, {}
    bar = Progress(len(lines), "pairs", enabled=len(lines) > 1)
    scored = failed = 0
    for s in range(0, len(lines), chunk):
        part = lines[s:s + chunk]
        new = sorted({p for _, a, b, why in part if why is None for p in (a, b)}
                     - set(feats) - set(problems))
        if new:
            faces, bad = prepare_faces(new, aligned=aligned, progress=False, pick=pick)
            problems.update(bad)
            good = [p for p in new if p in faces]
            if good:
                feats.update(zip(good, m.features([faces[p] for p in good])))
        ok = [(a, b) for _, a, b, why in part if why is None and a in feats and b in feats]
        score = dict(zip(ok, m.score(np.array([feats[a] for a, _ in ok]),
                                     np.array([feats[b] for _, b in ok])))) if ok else {}
        for _, a, b, why in part:
            why = why or problems.get(a) or problems.get(b)
            if why is None:
                v = float(score[(a, b)])
                log(f"{a}\t{b}\t{'same' if v >= m.threshold else 'different'}\t{v:.3f}")
                scored += 1
            else:
                log(f"{a}\t{b}\terror: {why}\t-")
                failed += 1
        bar.update(len(part))
    bar.close()
    warn(f"{scored} of {len(lines)} pairs scored (threshold {m.threshold:.3f})"
         + (f"; {failed} failed (error lines above)" if failed else ""))
    return scored, failed


def parse_folds(folds, n):
    """Folds ("6-10", "1,3,5", a list of numbers, or None: all) -> sorted 1-based
    fold numbers within 1..n; the syntax is checks.folds'."""
    if folds is None:
        return list(range(1, n + 1))
    text = folds if isinstance(folds, str) else ",".join(map(str, folds))
    chosen = checks.folds(text)
    if chosen[0] < 1 or chosen[-1] > n:
        raise ValueError(f"--folds {text!r}: the pairs file has folds 1..{n}")
    return chosen


def eval_lfw_main(lfw, pairs, model=None, out=None, folds=None, unaligned=None, log=print,
                  cache_dir=None):
    """k-fold accuracy on LFW pairs (each fold's threshold from the other folds
    given), ROC, AUC, EER, TAR@FAR=1e-3. lfw: the images the pairs name
    (aligned faces, or LFW's deep-funneled images); unaligned: where to read an
    image missing from lfw (e.g. the raw LFW when alignment found no face)."""
    from .roc_plot import plot_roc, write_roc_csv
    all_folds = read_pairs(pairs)
    chosen = parse_folds(folds, len(all_folds))
    if len(chosen) < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds")
    pair_list, fold_of = flatten([all_folds[k - 1] for k in chosen])
    missing = set(missing_images([all_folds[k - 1] for k in chosen], lfw))
    if missing and unaligned:
        still = [p for p in missing if not os.path.isfile(os.path.join(unaligned, p))]
    else:
        still = sorted(missing)
    if still:
        raise ValueError(f"{len(still)} images of the pairs are missing under {lfw}, e.g. "
                         f"{still[0]}" + ("" if unaligned else " (--unaligned DIR reads them "
                                          "from another folder)"))
    m = Verifier.load(model, cache_dir=cache_dir)
    rels = sorted({p for pr in pair_list for p in pr[:2]})
    index = {r: i for i, r in enumerate(rels)}
    paths = [os.path.join(unaligned if r in missing else lfw, *r.split("/")) for r in rels]
    feats = m.features(paths)
    i1 = [index[p.path1] for p in pair_list]
    i2 = [index[p.path2] for p in pair_list]
    same = np.array([p.same for p in pair_list])
    scores = {meth: m.score(feats[i1], feats[i2], meth)
              for meth in ("joint_bayesian", "l2", "cosine")}
    res = kfold_accuracy(scores["joint_bayesian"], same, np.array(fold_of))
    roc = roc_curve(scores["joint_bayesian"], same)
    result = dict(folds=chosen, mean=res["mean"], std=res["std"], stderr=res["stderr"],
                  accuracies=[float(x) for x in res["accuracies"]],
                  thresholds=[float(x) for x in res["thresholds"]], auc=auc(roc), eer=eer(roc),
                  **{"tar_at_far_1e-3": tar_at_far(roc, 1e-3)}, pairs=len(pair_list),
                  images_from_unaligned=len(missing), model=os.path.abspath(m.path),
                  baselines={meth: kfold_accuracy(scores[meth], same, np.array(fold_of))["mean"]
                             for meth in ("l2", "cosine")})
    if out:
        os.makedirs(out, exist_ok=True)
        write_roc_csv(os.path.join(out, "roc.csv"), roc)
        plot_roc(os.path.join(out, "roc.png"),
                 {meth: roc_curve(s, same) for meth, s in scores.items()},
                 title=f"LFW folds {chosen[0]}-{chosen[-1]}")
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(result, f, indent=1)
        np.savez(os.path.join(out, "scores.npz"), scores=scores["joint_bayesian"], same=same,
                 fold=np.array(chosen)[np.array(fold_of)])
    for k, acc in zip(chosen, result["accuracies"]):
        log(f"fold {k}: {acc:.4f}")
    log(f"AUC {result['auc']:.4f}, EER {result['eer']:.4f}, TAR@FAR=1e-3 "
        f"{result['tar_at_far_1e-3']:.4f}; L2 {result['baselines']['l2']:.4f}, cosine "
        f"{result['baselines']['cosine']:.4f}" + (f"; written to {out}" if out else ""))
    log(f"accuracy: {result['mean']:.4f} +- {result['stderr']:.4f}")
    return result
