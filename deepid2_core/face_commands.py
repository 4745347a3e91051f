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
import os
import sys

import numpy as np

from .api import Gallery, Match, Model
from .data import scan_identities
from .errors import BadImage, NoFace
from .verifier.commands import extract_paths, prepare_faces
from .verifier.gallery import FAR, enroll_features, save_gallery
from .verifier.model import Verifier


def _to_stderr(text):
    print(text, file=sys.stderr)


def verify_main(a, b, model=None, aligned=False, log=print, pick="largest", warn=_to_stderr):
    """`deepid2 verify A B`: the API's Model.verify (aligned: the faces as they are);
    warn: which face of a photograph with several was used (stderr)."""
    m = Model(Verifier.load(model, progress=False), pick)
    if aligned:
        faces, problems = prepare_faces([a, b], aligned=True, progress=False)
        for p in (a, b):
            if p in problems:
                raise BadImage(problems[p])
        score = float(m.verifier.score(*np.split(m.verifier.features([faces[a], faces[b]]), 2))[0])
        r = Match(score >= m.threshold, score, m.threshold)
    else:
        r = m.verify(a, b, warn=warn)
    log(f"{'same person' if r.same else 'different people'}: score {r.score:.3f}, "
        f"threshold {r.threshold:.3f}")
    return dict(same=r.same, score=r.score, threshold=r.threshold)


def _features_of_faces(m, paths, aligned, chunk=256, pick="largest", warn=None):
    """Raw features of the images with a face, through the API's Model:
    (features, kept paths, problems: {path: a BadImage or NoFace} for the
    other images). warn: which face of a photograph with several was used."""
    if aligned:
        feats, keep, problems = extract_paths(m.extractor, paths)
        good = set(keep.tolist())
        bad = [p for i, p in enumerate(paths) if i not in good]
        return feats, [paths[i] for i in keep], dict(zip(bad, map(BadImage, problems)))
    model = Model(m, pick)
    feats, kept, problems = [], [], {}
    for s in range(0, len(paths), chunk):
        found = []
        for p in paths[s:s + chunk]:
            try:
                (img, pts, name), = model._first_faces([p], warn)
            except BadImage as e:
                problems[p] = e
                continue
            if pts is None:
                problems[p] = NoFace(f"no face found in {name}")
                continue
            found.append((img, pts))
            kept.append(p)
        if found:
            feats.append(model._features(found))
    return (np.concatenate(feats) if feats else None), kept, problems




def enroll_main(folder, gallery, model=None, aligned=False, log=print, warn=_to_stderr,
                pick="largest"):
    """log: the result line (stdout); warn: skipped images, the people
    dropped (an empty folder, no image with a face) and notes (stderr)."""
    ids = scan_identities(folder)
    listed = {name for name, _ in ids}
    for name in sorted(os.listdir(folder)):
        if (not name.startswith(".") and name not in listed
                and os.path.isdir(os.path.join(folder, name))):
            warn(f"dropped {name}: empty folder (no .jpg, .jpeg or .png image)")
    m = Verifier.load(model)
    paths = [p for _, ps in ids for p in ps]
    owner = {p: name for name, ps in ids for p in ps}
    feats, kept, problems = _features_of_faces(m, paths, aligned, pick=pick, warn=warn)
    for e in problems.values():
        warn(f"skipped: {e}")
    enrolled = {owner[p] for p in kept}
    for name, ps in ids:
        if name not in enrolled:
            warn(f"dropped {name}: no image with a face ({len(ps)} image"
                 f"{'s' if len(ps) > 1 else ''} skipped)")
    labels = np.array([owner[p] for p in kept])
    names, means, counts, t, tar, how = enroll_features(m, feats, labels, folder)
    save_gallery(gallery, names, means, counts, t, m.key())
    log(f"enrolled {len(names)} identities from {len(kept)} images ({len(problems)} skipped); "
        f"open-set threshold {t:.3f} at FAR {FAR:.0%} {how}"
        + (f" (true accept rate {tar:.3f} on the enrollment images)" if tar is not None else "")
        + f"; wrote {gallery}")
    return dict(identities=len(names), images=len(kept), threshold=t, tar=tar)


def identify_main(images, gallery, model=None, top=1, aligned=False, log=print,
                  warn=_to_stderr, pick="largest"):
    """log: one line per image (stdout), in order, as `verify --pairs` does:
    its matches, or `PATH: error: WHY` for an image that could not be
    identified; warn: which face of a photograph with several was used and,
    when some failed, a summary (stderr). Returns ({path: name or "unknown"},
    the number of images that failed)."""
    m = Verifier.load(model, progress=False)
    g = Gallery.load(gallery, Model(m))
    images = list(images)
    feats, kept, problems = _features_of_faces(m, images, aligned, pick=pick, warn=warn)
    found = dict(zip(kept, g.identify_features(feats, top) if kept else ()))
    results = {}
    for p in images:
        if p in problems:
            log(f"{p}: error: {problems[p]}")
            continue
        r = found[p]
        results[p] = r.name or "unknown"
        alts = ", ".join(f"{n} {v:.3f}" for n, v in r.candidates)
        log(f"{p}: {results[p]} (threshold {r.threshold:.3f}; best: {alts})")
    if problems:
        warn(f"{len(results)} of {len(images)} images identified; {len(problems)} failed "
             f"(error lines above)")
    return results, len(problems)
