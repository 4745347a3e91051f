"""`deepid2 verify`, `enroll` and `identify`: the command line's verbs on
photographs, each through the API's objects (deepid2_core.api.Model and
Gallery), so that the command line and a program take one path. The
verifier's own commands (fit-verifier, eval-lfw, verify --pairs) are in
verifier/commands.py; the gallery file and its open-set threshold in
verifier/gallery.py.

Each function returns a dict or the results (scripts call the same code as
the command line); results go through `log` (stdout), skipped images and
notes through `warn` (stderr). A problem with an image keeps its type
(BadImage, NoFace).
"""
import sys

import numpy as np

from .api import Gallery, Match, Model
from .data import scan_identities
from .errors import BadImage, NoFace
from .verifier.commands import extract_paths, prepare_faces
from .verifier.gallery import FAR, check_gallery_path, enrol, save_gallery
from .verifier.model import Verifier


def _to_stderr(text):
    print(text, file=sys.stderr)


def verify_main(a, b, model=None, aligned=False, log=print, pick="largest"):
    """`deepid2 verify A B`: the API's Model.verify (aligned: the faces as they are)."""
    m = Model(Verifier.load(model, progress=False), pick)
    if aligned:
        faces, problems = prepare_faces([a, b], aligned=True, progress=False)
        for p in (a, b):
            if p in problems:
                raise BadImage(problems[p])
        score = float(m.verifier.score(*np.split(m.verifier.features([faces[a], faces[b]]), 2))[0])
        r = Match(score >= m.threshold, score, m.threshold)
    else:
        r = m.verify(a, b)
    log(f"{'same person' if r.same else 'different people'}: score {r.score:.3f}, "
        f"threshold {r.threshold:.3f}")
    return dict(same=r.same, score=r.score, threshold=r.threshold)


def _features_of_faces(m, paths, aligned, chunk=256):
    """Raw features of the images with a face, through the API's Model:
    (features, kept paths, problems: a BadImage or NoFace per other image)."""
    if aligned:
        feats, keep, problems = extract_paths(m.extractor, paths)
        return feats, [paths[i] for i in keep], [BadImage(p) for p in problems]
    model = Model(m)
    feats, kept, problems = [], [], []
    for s in range(0, len(paths), chunk):
        found = []
        for p in paths[s:s + chunk]:
            try:
                (img, pts, name), = model._first_faces([p])
            except BadImage as e:
                problems.append(e)
                continue
            if pts is None:
                problems.append(NoFace(f"no face found in {name}"))
                continue
            found.append((img, pts))
            kept.append(p)
        if found:
            feats.append(model._features(found))
    return (np.concatenate(feats) if feats else None), kept, problems




def enroll_main(folder, gallery, model=None, aligned=False, log=print, warn=_to_stderr):
    """log: the result line (stdout); warn: skipped images and notes (stderr)."""
    check_gallery_path(gallery)
    ids = scan_identities(folder)
    m = Verifier.load(model)
    paths = [p for _, ps in ids for p in ps]
    owner = {p: name for name, ps in ids for p in ps}
    feats, kept, problems = _features_of_faces(m, paths, aligned)
    for e in problems:
        warn(f"skipped: {e}")
    labels = np.array([owner[p] for p in kept])
    names, means, counts, t, tar, how = enrol(m, feats, labels, folder)
    save_gallery(gallery, names, means, counts, t, m.key())
    log(f"enrolled {len(names)} identities from {len(kept)} images ({len(problems)} skipped); "
        f"open-set threshold {t:.3f} at FAR {FAR:.0%} {how}"
        + (f" (true accept rate {tar:.3f} on the enrolment images)" if tar is not None else "")
        + f"; wrote {gallery}")
    return dict(identities=len(names), images=len(kept), threshold=t, tar=tar)


def identify_main(images, gallery, model=None, top=1, aligned=False, log=print,
                  warn=_to_stderr):
    """log: one result line per identified image (stdout); warn: the images
    that could not be identified (stderr). The summary of those is raised."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    m = Verifier.load(model, progress=False)
    g = Gallery.load(gallery, Model(m))
    feats, kept, problems = _features_of_faces(m, list(images), aligned)
    results = {}
    for p, r in zip(kept, g.identify_features(feats, top) if kept else ()):
        results[p] = r.name or "unknown"
        alts = ", ".join(f"{n} {v:.3f}" for n, v in r.candidates)
        log(f"{p}: {results[p]} (threshold {r.threshold:.3f}; best: {alts})")
    for e in problems:
        warn(f"error: {e}")
    if problems:
        first = problems[0]
        raise type(first)(f"{len(problems)} of {len(images)} images could not be identified: "
                          f"{first}")
    return results
