"""`deepid2 eval-ident`: closed-set and open-set identification on labelled
faces, as in the DeepID2 paper's LFW identification experiments, with the
gallery / probe split of identification.split_gallery_probe written out.

The people: every identity folder under DATA, or, with --pairs and --folds,
only the people those View 2 folds name (so a model is tested on people it
never saw, as in eval-lfw). Scores are the model's Joint Bayesian score of a
probe against each gallery image.

The DIR at FAR uses the threshold set on these impostor probes themselves
(the best any threshold can do). When the model holds its impostor score
distribution (impostor.py), the DIR and the false alarm rate reached at the
threshold `enroll` would set for this gallery are reported too.
"""
import json
import os
import sys

import numpy as np

from ..data import scan_identities
from .commands import extract_paths, parse_folds
from .model import Verifier
from .identification import open_set_dir, rank1_accuracy, split_gallery_probe
from .lfw import people_of_folds, read_pairs


def eval_ident_main(data, model=None, pairs=None, folds=None, known_fraction=0.5, seed=0,
                    far=0.01, out=None, cache_dir=None, log=print,
                    warn=lambda text: print(text, file=sys.stderr)):
    ids = scan_identities(data)
    if pairs is not None:
        all_folds = read_pairs(pairs)
        chosen = parse_folds(folds, len(all_folds))
        people = set(people_of_folds([all_folds[k - 1] for k in chosen]))
        ids = [(name, ps) for name, ps in ids if name in people]
    if not ids:
        raise ValueError(f"{data}: no identity folders" + (" of those folds' people"
                                                            if pairs else ""))
    m = Verifier.load(model, cache_dir=cache_dir)
    paths = [p for _, ps in ids for p in ps]
    labels = np.array([k for k, (_, ps) in enumerate(ids) for _ in ps])
    feats, keep, problems = extract_paths(m.extractor, paths)
    for why in problems[:5]:
        warn(f"skipped: {why}")
    labels = labels[keep]
    split = split_gallery_probe(labels, seed=seed, known_fraction=known_fraction)
    z = m.project(feats)       # all rows at once, then the split: as the figures were made
    s = m.jb.score_matrix(z[split.probes], z[split.gallery])
    pl, gl = labels[split.probes], labels[split.gallery]
    rank1 = rank1_accuracy(s, pl, gl)
    dir_, threshold, reached = open_set_dir(s, pl, gl, far)
    res = dict(identities=len(ids), images=len(keep), gallery=len(split.gallery),
               genuine_probes=int(split.probe_known.sum()),
               impostor_probes=int((~split.probe_known).sum()),
               impostor_identities=int(len(np.unique(pl[~split.probe_known]))),
               known_fraction=known_fraction, seed=seed, rank1=rank1, far=far,
               dir=dir_, threshold=threshold, far_reached=reached,
               model=os.path.abspath(m.path), folds=folds)
    if m.impostor is not None:
        t, _ = m.impostor.threshold([1] * len(split.gallery), far)
        best = s.max(1)
        hit = gl[np.argmax(s, 1)] == pl
        known = split.probe_known
        res.update(model_threshold=t, model_threshold_far=float(np.mean(best[~known] >= t)),
                   model_threshold_dir=float(np.mean(hit[known] & (best[known] >= t))))
    log(f"{res['identities']} people, {res['images']} images: gallery {res['gallery']} "
        f"(one image of each known person), {res['genuine_probes']} genuine probes, "
        f"{res['impostor_probes']} impostor probes of {res['impostor_identities']} people "
        f"not in the gallery (split seed {seed})")
    log(f"closed-set rank-1: {rank1:.4f}")
    log(f"open-set DIR at FAR {far:g}: {dir_:.4f} (threshold {threshold:.3f}, set on these "
        f"impostor probes)")
    if "model_threshold" in res:
        log(f"at the threshold enroll sets from the model's impostor scores "
            f"({res['model_threshold']:.3f}): DIR {res['model_threshold_dir']:.4f}, false "
            f"alarm rate {res['model_threshold_far']:.4f}")
    if out:
        os.makedirs(out, exist_ok=True)
        names = [ids[k][0] for k in range(len(ids))]
        with open(os.path.join(out, "identification.json"), "w") as f:
            json.dump(dict(res, gallery_images=[paths[keep[i]] for i in split.gallery],
                           known_people=sorted({names[labels[i]] for i in split.gallery})), f,
                      indent=1)
    return res
