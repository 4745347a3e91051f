"""The public Python API: what `deepid2 verify`, `enroll` and `identify` do,
for a program.

    import deepid2_core as deepid2
    model = deepid2.load()                  # the shipped model; load(path); load(backend="gpu")
    faces = model.detect(image)             # [Face(box, landmarks, score)], largest first
    vec = model.embed(image)                # 1-d float32 features of the largest face, or None
    vecs = model.embed_many(images)         # one call for many images
    r = model.verify(image_a, image_b)      # Match(same, score, threshold)
    gallery = deepid2.Gallery.enroll(model, {"name": [image, ...]})   # 1 person or more
    gallery.identify(image, top=3)          # Identification(name, score, candidates, threshold)

An image is a file path, a numpy H x W x 3 uint8 array in RGB order (as PIL
and face_recognition give; reverse the channels of a cv2.imread array), or an
H x W uint8 grey array. The face is found, its landmarks located and it is
aligned exactly as the command line does it. Errors are ValueError
subclasses of deepid2_core.errors (BadImage, NoFace, BadModelFile,
BadGalleryFile) with the one-line message the command line prints.

Nothing heavy (OpenCV, numba, the networks) is imported before it is used.
"""
import os
from typing import NamedTuple, Optional

import numpy as np

from .checks import positive_int
from .errors import BadGalleryFile, BadImage, NoFace


class Face(NamedTuple):
    box: tuple              # (x, y, w, h) in image pixels
    landmarks: np.ndarray   # float32 5 x 2 (x, y): left eye, right eye, nose, mouth corners
    score: float            # the detector's confidence (YuNet: 0-1; Haar: windows merged)
    turn: int = 0           # quarter turns counter-clockwise (np.rot90) that made the face
                            # upright; box and landmarks are in the image's pixels all the same
    turn_unsure: bool = False   # another orientation scored nearly as high


class Match(NamedTuple):
    same: bool              # score >= threshold
    score: float            # Joint Bayesian log-likelihood ratio: higher = more alike
    threshold: float        # the model's "same" threshold


class Identification(NamedTuple):
    name: Optional[str]     # the best candidate when its score reaches threshold, else None
    score: float            # the best candidate's score
    candidates: list        # [(name, score)], the top identities, best first
    threshold: float        # the gallery's open-set threshold

    @property
    def known(self):
        return self.name is not None


def load(path=None, backend="cpu", pick="largest"):
    """The verifier model file at path (None: the shipped model) on backend
    "cpu" or "gpu"; pick: which face of a photograph with several is used
    ("largest" or "center", the one nearest the image centre) by embed,
    verify and a Gallery's enroll and identify (`--pick` of the commands)."""
    from .verifier.model import Verifier
    return Model(Verifier.load(path, backend=backend, progress=False), pick)


def _image(image):
    """(uint8 H x W x 3 BGR array, what messages call it) of an image argument."""
    from .face.detect import read_image, to_bgr8
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        img, why = read_image(path)
        if img is None:
            raise BadImage(f"cannot read {path}: {why}")
        return img, path
    if not isinstance(image, np.ndarray):
        raise BadImage(f"an image is a file path or a numpy uint8 array, got "
                       f"{type(image).__name__}")
    if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3
                                       and image.shape[2] == 3) or 0 in image.shape:
        raise BadImage(f"an image array must be uint8 H x W x 3 (RGB) or H x W (grey), got "
                       f"{image.dtype} of shape {image.shape}")
    name = f"the {image.shape[1]}x{image.shape[0]} image array"
    if image.ndim == 2:
        return to_bgr8(image)[0], name
    return np.ascontiguousarray(image[:, :, ::-1]), name


def _say_choices(faces, name, pick, warn):
    """The choices detect made silently, one line each: which face of several
    was used, and whether it lay turned or its orientation was unclear."""
    box, _, _, turn, unsure = faces[0]
    if len(faces) > 1:
        which = "largest" if pick == "largest" else "one nearest the centre"
        warn(f"{name}: {len(faces)} faces found; used the {which}, box (x, y, w, h) = "
             f"({', '.join(f'{float(v):.0f}' for v in box)}) (--pick largest|center)")
    if turn:
        warn(f"{name}: the face lies turned; read it after turning the photo "
             f"{90 * turn} degrees counter-clockwise")
    if unsure:
        warn(f"{name}: the face's orientation is unclear (the detector scores another "
             f"quarter turn nearly as high); if the photo is sideways, turn it upright")


class Model:
    """A verifier model with the face pipeline in front of it. `verifier` is
    the deepid2_core.verifier.Verifier (raw features, scores, threshold).
    Detection, landmarks and alignment run in the C++ pipeline
    (deepid2_core.face.native); so do the patch networks on the CPU backend,
    while the GPU backend batches them on the device."""

    def __init__(self, verifier, pick="largest"):
        from .face.box import PICKS
        if pick not in PICKS:
            raise ValueError(f"pick must be largest or center, got {pick!r}")
        self.verifier, self.pick = verifier, pick
        self._faces = self._native = None     # loaded on first use

    @property
    def threshold(self):
        return self.verifier.threshold

    def _pipeline(self):
        """The C++ pipeline: with this model's networks where it can run them (the
        CPU backend, layout patches), else detection and alignment only."""
        from .face import native
        if self._faces is None:
            ext = self.verifier.extractor
            cpu = ext is not None and ext.be.name == "cpu"
            if cpu and self.verifier.path and native.supports(self.verifier.path)[0]:
                self._native = native.pipeline(self.verifier.path)
                self._faces = self._native
            else:
                self._faces = native.pipeline(None)
        return self._faces

    def detect(self, image, pick=None):
        """Every face in the image, largest first (or with pick="center", nearest
        the centre first): [Face(box, landmarks, score)] ([] when there is none).
        Boxes are the landmark nets' (YuNet's mapped onto Haar's convention)."""
        img, _ = _image(image)
        faces = self._pipeline().detect(img, pick or self.pick)
        return [Face(tuple(float(v) for v in box), pts, float(score), int(turn), bool(unsure))
                for box, pts, score, turn, unsure in faces]

    def _first_faces(self, images, warn=None):
        """[(BGR image, its first face's landmarks or None, name)] per image;
        warn (a function of one line) is told which face of a photograph with
        several was used, and how the face used lay (turned or unsure)."""
        out = []
        for image in images:
            img, name = _image(image)
            faces = self._pipeline().detect(img, self.pick)
            if warn is not None and faces:
                _say_choices(faces, name, self.pick, warn)
            out.append((img, faces[0][1] if faces else None, name))
        return out

    def _features(self, found):
        """Raw features of [(BGR image, landmarks)]: n x D float32."""
        p = self._pipeline()
        if self._native is not None:
            return p.embed([img for img, _ in found], [pts for _, pts in found])
        aligned = [p.align(img, pts, p.aligned_side, p.aligned_side)[0] for img, pts in found]
        return self.verifier.features(aligned)

    def embed(self, image):
        """The raw features (1-d float32, the model's feature size) of the
        image's first face, or None when no face is found."""
        return self.embed_many([image])[0]

    def embed_many(self, images):
        """embed for each image, the networks run on all faces together: a
        list as long as images holding a 1-d float32 vector per image, None
        where the image has no face. An unreadable image raises BadImage."""
        faces = self._first_faces(images)
        found = [(img, pts) for img, pts, _ in faces if pts is not None]
        feats = iter(self._features(found) if found else ())
        return [None if pts is None else next(feats) for _, pts, _ in faces]

    def _embed_or_raise(self, images, warn=None):
        """Features of the first face of each image; NoFace naming the first without."""
        faces = self._first_faces(images, warn)
        for _, pts, name in faces:
            if pts is None:
                raise NoFace(f"no face found in {name}")
        return self._features([(img, pts) for img, pts, _ in faces])

    def verify(self, image_a, image_b, warn=None):
        """Match(same, score, threshold) of the first faces of two images;
        NoFace when one has none. warn (e.g. print to stderr) is told which
        face of a photograph with several was used."""
        a, b = np.split(self._embed_or_raise([image_a, image_b], warn), 2)
        score = float(self.verifier.score(a, b)[0])
        return Match(score >= self.threshold, score, self.threshold)


def _top(top):
    """The API's check of `top` (the command line checks --top in checks.py)."""
    return positive_int(int(top), "top")


class Gallery:
    """Known people, each the mean raw feature of their enrollment images, with
    the open-set threshold of `deepid2 enroll` (false accept rate 1%, from the
    model's impostor score distribution; for a model file without one, from
    the enrollment images, with a note on stderr). Saved in the gallery file format of `deepid2 enroll`
    (.npz or .safetensors), tied to its model."""

    def __init__(self, model, names, means, counts, threshold):
        self.model, self.names = model, list(names)
        self.means = np.asarray(means, np.float32)      # as the gallery file holds them
        self.counts, self.threshold = np.asarray(counts, np.int64), float(threshold)

    @classmethod
    def enroll(cls, model, people):
        """people: {name: [image, ...]}, one name or more; the face used in a
        photograph with several is the model's pick (load(pick=...)). An image
        without a face is skipped with a note on stderr naming it, as
        `deepid2 enroll` skips it; NoFace when a person is left with no image
        with a face. An unreadable image raises BadImage."""
        from .progress import note
        from .verifier.gallery import enroll_features
        images, labels = [], []
        for name, imgs in people.items():
            if isinstance(imgs, (str, os.PathLike, np.ndarray)):
                raise ValueError(f"people[{name!r}] must be a list of images, not one image")
            images += list(imgs)
            labels += [str(name)] * len(imgs)
        if not images:
            raise ValueError("enrollment needs images: people is empty")
        faces = model._first_faces(images)
        keep = [i for i, (_, pts, _) in enumerate(faces) if pts is not None]
        for i, (_, pts, name) in enumerate(faces):
            if pts is None:
                note(f"skipped: no face found in {name} (people[{labels[i]!r}])")
        for person in dict.fromkeys(labels):
            if not any(labels[i] == person for i in keep):
                raise NoFace(f"people[{person!r}] has no image with a face")
        feats = model._features([faces[i][:2] for i in keep])
        names, means, counts, t, _, _ = enroll_features(
            model.verifier, feats, np.array([labels[i] for i in keep]), "the gallery")
        return cls(model, names, means, counts, t)

    def identify(self, image, top=1):
        """Identification(name, score, candidates, threshold) of the image's
        largest face: candidates are the top identities (name, score), best
        first; name is the best one when its score reaches the open-set
        threshold, else None (not in the gallery)."""
        top = _top(top)      # before the face work
        return self._identify(self.model._embed_or_raise([image]), top)[0]

    def identify_features(self, features, top=1):
        """identify for raw feature vectors (n x D): one Identification each."""
        return self._identify(features, _top(top))

    def _identify(self, features, top):
        from .verifier.gallery import best_candidates
        out = []
        for row in self.model.verifier.score_matrix(features, self.means):
            best = best_candidates(row, self.names, top)
            known = best[0][1] >= self.threshold
            out.append(Identification(best[0][0] if known else None, best[0][1], best,
                                      self.threshold))
        return out

    def save(self, path):
        from .verifier.gallery import save_gallery
        save_gallery(os.fspath(path), self.names, self.means, self.counts, self.threshold,
                     self.model.verifier.key())

    @classmethod
    def load(cls, path, model=None):
        """A gallery file for model (None: the shipped model, as load())."""
        from .verifier.gallery import load_gallery
        model = load() if model is None else model
        g = load_gallery(os.fspath(path))
        if g["model_key"] != model.verifier.key():
            raise BadGalleryFile(f"{path} was enrolled with another model than "
                                 f"{model.verifier.path}: enroll again")
        return cls(model, g["names"], g["means"], g["counts"], g["threshold"])
