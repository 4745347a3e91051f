"""The gallery of `deepid2 enroll` and `identify` (their commands are in
face_commands.py): identities, each the mean raw feature of its enrollment
images, scored by the model's Joint Bayesian.

Open-set threshold (FAR = 1%: at most 1% of the probes of people not in the
gallery are taken for someone in it): from the model's impostor statistics,
the best score of an outsider probe over galleries that `fit-verifier`
simulated from its training people (impostor.ImpostorScores.threshold, for
this gallery's number of people and images each). A model file without them
(or with the older single-pair format) falls back, with a note on stderr, to
the enrollment images themselves: each
image's best score against the *other* identities is an impostor score, and
the threshold is the lowest at which at most 1% of those reach it (few
pairs: a rough estimate). Genuine scores (each image against its identity's
mean of the other images) give the true accept rate reported at the
threshold.

Gallery file (.npz or .safetensors): names, means (float32 K x D), counts,
threshold, far and the model key, so a gallery is never scored by another model.
"""
import json
import os
import zipfile

import numpy as np

from ..progress import note
from .. import safetensors
from ..errors import BadGalleryFile
from .impostor import stored_format
from .model import IMPOSTOR_KEY

FAR = 0.01


def open_set_threshold(m, feats, labels, far=FAR):
    """(threshold, true accept rate at it on the enrollment images, how it was
    set) from enrollment features; the fallback says so on stderr."""
    ids, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), feats.shape[1]))
    np.add.at(sums, index, feats)
    z = m.project(feats)
    if m.impostor is not None:
        t, extrapolated = m.impostor.threshold(counts, far)
        how = (f"from the model's impostor scores (best scores of {m.impostor.trials} outsider "
               f"probes against simulated galleries per size"
               + (", extrapolated past the measured ones" if extrapolated else "") + ")")
    else:
        s = m.jb.score_matrix(z, m.project(sums / counts[:, None]))
        s[np.arange(len(z)), index] = -np.inf
        impostor = np.sort(s.max(1))[::-1]
        allowed = int(np.floor(far * len(impostor)))
        t = float(np.nextafter(impostor[allowed], np.inf)) if allowed < len(impostor) \
            else float(impostor[-1])
        how = f"from the {len(impostor)} enrollment images"
        old = stored_format(m.metadata.get(IMPOSTOR_KEY, ""))
        holds = (f"holds impostor scores of the older format {old!r} (single pairs, not "
                 f"galleries: refit it with `deepid2 fit-verifier`)" if old else
                 "holds no impostor score distribution (written before `deepid2 fit-verifier` "
                 "stored one)")
        note(
            f"note: {m.path or 'the model'} {holds}: the open-set threshold is estimated "
            f"from the {len(impostor)} enrollment images alone, and rejects many genuine probes")
    multi = counts[index] >= 2                 # leave-one-out mean needs another image
    if not multi.any():
        return t, None, how
    loo = (sums[index[multi]] - feats[multi]) / (counts[index[multi]] - 1)[:, None]
    genuine = m.jb.score(z[multi], m.project(loo))
    return t, float(np.mean(genuine >= t)), how


def save_gallery(path, names, means, counts, threshold, key):
    meta = {"format": "deepid2-gallery/1", "names": json.dumps(list(names)),
            "threshold": repr(float(threshold)), "far": repr(FAR), "model_key": key}
    if path.endswith(".safetensors"):
        safetensors.save(path, {"means": means.astype(np.float32),
                                "counts": counts.astype(np.int64)}, meta)
    elif path.endswith(".npz"):
        tmp = path + ".tmp.npz"
        try:
            np.savez(tmp, means=means.astype(np.float32), counts=counts.astype(np.int64),
                     meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):      # a failed write leaves nothing half-written
                os.remove(tmp)
    else:
        raise BadGalleryFile(f"gallery file {path} must end in .npz or .safetensors")


def _container(path):
    """"npz" or "safetensors" from the file's first bytes (a zip's signature; a
    safetensors file's 8-byte header length, then its JSON header), else None; an empty
    file by its name."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:   # an empty file is a damaged gallery (a write cut short), not a photo
        return "safetensors" if path.endswith(".safetensors") else "npz"
    if head[:2] == b"PK":
        return "npz"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def load_gallery(path):
    """names, means (K x D), counts, threshold and model_key of a gallery
    file; BadGalleryFile, one line, when it is missing, truncated or damaged."""
    if os.path.isdir(path):
        raise BadGalleryFile(f"gallery file {path} is a folder, not a gallery file")
    if not os.path.isfile(path):
        raise BadGalleryFile(f"gallery file {path} does not exist (make it with `deepid2 enroll`)")
    kind = _container(path)
    if kind is None:   # a photograph or a text file: numpy's own error would speak of pickles
        raise BadGalleryFile(f"{path} is not a gallery file (a .npz or .safetensors file "
                             f"written by `deepid2 enroll`)")
    try:
        if kind == "safetensors":
            t, meta = safetensors.load(path)
        else:
            with np.load(path, allow_pickle=False) as z:
                t, meta = {k: z[k] for k in ("means", "counts")}, json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or meta.get("format") != "deepid2-gallery/1":
            raise ValueError("format is not deepid2-gallery/1")
        names = json.loads(meta["names"])
        means, counts = np.asarray(t["means"]), np.asarray(t["counts"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("names is not a list of strings")
        if means.ndim != 2 or len(means) != len(names) or counts.shape != (len(names),):
            raise ValueError(f"{len(names)} names, means {means.shape}, counts {counts.shape}")
        threshold = float(meta["threshold"])
        if not (np.isfinite(threshold) and np.all(np.isfinite(means))):
            raise ValueError("non-finite values")
        return dict(names=names, means=means, counts=counts, threshold=threshold,
                    model_key=str(meta["model_key"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        detail = f"{type(e).__name__}: {e}".replace(path, "").replace("\n", " ").strip()
        raise BadGalleryFile(f"{path}: not a deepid2 gallery file ({detail})") from None


def enroll_features(m, feats, labels, where):
    """A gallery of labelled raw features: (sorted names, means float64 K x D,
    counts, open-set threshold, true accept rate at it or None, how the
    threshold was set). where: what the error names when there is no
    identity, or one while the model holds no impostor scores (the threshold
    then needs enrollment images of other people)."""
    names = sorted(set(labels.tolist()))
    if not names:
        raise ValueError(f"{where}: enrollment needs at least 1 identity with a usable image")
    if len(names) < 2 and m.impostor is None:
        raise ValueError(f"{where}: 1 identity, and {m.path or 'the model'} holds no impostor "
                         f"scores (refit it with `deepid2 fit-verifier`): the open-set threshold "
                         f"then comes from enrollment images of at least 2 people")
    index = np.searchsorted(names, labels)
    counts = np.bincount(index, minlength=len(names))
    means = np.zeros((len(names), feats.shape[1]))
    np.add.at(means, index, feats)
    means /= counts[:, None]
    t, tar, how = open_set_threshold(m, feats, labels)
    return names, means, counts, t, tar, how


def best_candidates(scores, names, top):
    """[(name, score)] of the top identities of one probe's scores, best first."""
    order = np.argsort(-scores, kind="stable")[:top]
    return [(names[j], float(scores[j])) for j in order]
