"""Identification on a gallery / probe split of labelled features.

Split (`split_gallery_probe`, deterministic from the seed): the identities
with at least 2 images are put in a random order (numpy default_rng(seed)
over their sorted names); the first round(known_fraction x their number) are
the *known* identities: one random image of each forms the gallery, their
other images are genuine probes. Every image of the other identities (the
rest of those with >= 2 images, and all with a single image) is an impostor
probe: its person is not in the gallery.

* closed-set rank-1: over genuine probes, the share whose best-scoring
  gallery image is of the same identity;
* open-set detection and identification rate (DIR) at a false alarm rate
  (FAR, default 1%): the threshold is the lowest at which at most FAR of the
  impostor probes have a best gallery score >= threshold; DIR is the share
  of genuine probes whose best gallery image is of the right identity *and*
  scores >= threshold.

Score matrices are probes x gallery, higher = more similar.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class GalleryProbeSplit:
    gallery: np.ndarray       # image indices, one per known identity
    probes: np.ndarray        # image indices, genuine and impostor
    probe_known: np.ndarray   # bool per probe: its identity is in the gallery


def split_gallery_probe(labels, seed=0, known_fraction=0.5):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0 < known_fraction <= 1:
        raise ValueError(f"known_fraction must be in (0, 1], got {known_fraction}")
    names, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(counts >= 2)
    if len(multi) == 0:
        raise ValueError("identification needs identities with at least 2 images "
                         "(one for the gallery, one to probe); none has")
    rng = np.random.default_rng(seed)
    n_known = max(1, int(round(known_fraction * len(multi))))
    known = np.zeros(len(names), bool)
    known[rng.permutation(multi)[:n_known]] = True
    # one random gallery image per known identity: the smallest random key
    key = rng.random(len(labels))
    order = np.lexsort((key, index))
    first = order[np.searchsorted(index[order], np.flatnonzero(known))]
    is_gallery = np.zeros(len(labels), bool)
    is_gallery[first] = True
    probes = np.flatnonzero(~is_gallery)
    return GalleryProbeSplit(np.sort(first), probes, known[index[probes]])


def _check(scores, probe_labels, gallery_labels):
    s = np.asarray(scores, np.float64)
    p, g = np.asarray(probe_labels), np.asarray(gallery_labels)
    if s.ndim != 2 or s.shape != (len(p), len(g)) or len(g) == 0:
        raise ValueError(f"scores must be probes x gallery = {(len(p), len(g))}, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or inf")
    top = np.argmax(s, 1)
    return s, np.isin(p, g), g[top] == p, s[np.arange(len(p)), top]


def rank1_accuracy(scores, probe_labels, gallery_labels):
    """Closed-set rank-1 over the probes whose identity is in the gallery."""
    _, known, hit, _ = _check(scores, probe_labels, gallery_labels)
    if not known.any():
        raise ValueError("no probe's identity is in the gallery")
    return float(hit[known].mean())


def open_set_dir(scores, probe_labels, gallery_labels, far=0.01):
    """(DIR, threshold, false alarm rate reached) at the given FAR."""
    if not 0 <= far < 1:
        raise ValueError(f"far must be in [0, 1), got {far}")
    _, known, hit, best = _check(scores, probe_labels, gallery_labels)
    if known.all() or not known.any():
        raise ValueError(f"open-set identification needs genuine and impostor probes, got "
                         f"{int(known.sum())} genuine of {len(known)}")
    impostor = np.sort(best[~known])[::-1]
    allowed = int(np.floor(far * len(impostor)))     # impostors that may pass
    # just above the (allowed+1)-th highest impostor: at most `allowed` reach it
    threshold = float(np.nextafter(impostor[allowed], np.inf)) if allowed < len(impostor) \
        else float(impostor[-1])
    reached = float(np.mean(impostor >= threshold))
    return float(np.mean(hit[known] & (best[known] >= threshold))), threshold, reached
