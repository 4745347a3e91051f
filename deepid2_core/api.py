"""The public Python API: what `deepid2 verify`, `enroll` and `identify` do,
for a program.

    import deepid2_core as deepid2
    model = deepid2.load()                  # the shipped model; load(path); load(backend="gpu")
    faces = model.detect(image)             # [Face(box, landmarks, score)], largest first
    vec = model.embed(image)                # 1-d float32 features of the largest face, or None
    vecs = model.embed_many(images)         # one call for many images
    r = model.verify(image_a, image_b)      # Match(same, score, threshold)
    gallery = deepid2.Gallery.enroll(model, {"name": [image, ...]})
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

from .errors import BadGalleryFile, BadImage, NoFace


class Face(NamedTuple):
    box: tuple              # (x, y, w, h) in image pixels
    landmarks: np.ndarray   # float32 5 x 2 (x, y): left eye, right eye, nose, mouth corners
    score: float            # the detector's confidence (YuNet: 0-1; Haar: windows merged)


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


def load(path=None, backend="cpu"):
    """The verifier model file at path (None: the shipped model) on backend
    "cpu" or "gpu"."""
    from .verifier.model import Verifier
    return Model(Verifier.load(path, backend=backend, progress=False))


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


class Model:
    """A verifier model with the face pipeline in front of it. `verifier` is
    the deepid2_core.verifier.Verifier (raw features, scores, threshold)."""

    def __init__(self, verifier):
        self.verifier = verifier
        self._aligner = None    # the face pipeline's models, loaded on first use

    @property
    def threshold(self):
        return self.verifier.threshold

    def detect(self, image):
        """Every face in the image, largest first: [Face(box, landmarks, score)]
        ([] when there is none). Faces are found by the box rule the landmark
        nets were trained on (YuNet's boxes mapped to Haar's, Haar where it finds none)."""
        from .face.box import face_boxes
        from .face.landmarks import predict_landmarks
        from .face.pipeline import MAX_SIDE
        img, _ = _image(image)
        r = face_boxes(img, "yunet", all_faces=True, max_side=MAX_SIDE)
        if not r.found:
            return []
        points = predict_landmarks(self._pipeline().model, img, r.boxes)
        return [Face(tuple(float(v) for v in box), pts, float(score))
                for box, pts, score in zip(r.boxes, points, r.scores)]

    def _aligned(self, image):
        """(the largest face aligned as `deepid2 align` does it, or None, why, name)."""
        from .face.pipeline import align_image
        img, name = _image(image)
        face, why = align_image(img, aligner=self._pipeline())
        return face, why, name

    def _pipeline(self):
        """The aligner (YuNet + the landmark cascade) that detect and embed share."""
        from .face.pipeline import new_aligner
        if self._aligner is None:
            self._aligner = new_aligner()
        return self._aligner

    def embed(self, image):
        """The raw features (1-d float32, the model's feature size) of the
        image's largest face, or None when no face is found."""
        return self.embed_many([image])[0]

    def embed_many(self, images):
        """embed for each image, the networks run on all faces together: a
        list as long as images holding a 1-d float32 vector per image, None
        where the image has no face. An unreadable image raises BadImage."""
        faces = [self._aligned(im)[0] for im in images]
        found = [f for f in faces if f is not None]
        feats = iter(self.verifier.features(found) if found else ())
        return [None if f is None else next(feats) for f in faces]

    def verify(self, image_a, image_b):
        """Match(same, score, threshold) of the largest faces of two images;
        NoFace when one has none."""
        faces = []
        for image in (image_a, image_b):
            face, why, name = self._aligned(image)
            if face is None:
                raise NoFace(f"no face found in {name} ({why})")
            faces.append(face)
        a, b = np.split(self.verifier.features(faces), 2)
        score = float(self.verifier.score(a, b)[0])
        return Match(score >= self.threshold, score, self.threshold)


class Gallery:
    """Known people, each the mean raw feature of their enrolment images, with
    the open-set threshold of `deepid2 enroll` (false accept rate 1%, from the
    model's impostor score distribution; for a model file without one, from
    the enrolment images, with a note on stderr). Saved in the gallery file format of `deepid2 enroll`
    (.npz or .safetensors), tied to its model."""

    def __init__(self, model, names, means, counts, threshold):
        self.model, self.names = model, list(names)
        self.means = np.asarray(means, np.float32)      # as the gallery file holds them
        self.counts, self.threshold = np.asarray(counts, np.int64), float(threshold)

    @classmethod
    def enroll(cls, model, people):
        """people: {name: [image, ...]}, at least 2 names. Every image must show
        a face (NoFace otherwise)."""
        from .verifier.gallery import enrol
        faces, labels = [], []
        for name, images in people.items():
            if isinstance(images, (str, os.PathLike, np.ndarray)):
                raise ValueError(f"people[{name!r}] must be a list of images, not one image")
            for image in images:
                face, why, what = model._aligned(image)
                if face is None:
                    raise NoFace(f"no face found in {what} ({why})")
                faces.append(face)
                labels.append(str(name))
        if not faces:
            raise ValueError("enrolment needs images: people is empty")
        feats = model.verifier.features(faces)
        names, means, counts, t, _, _ = enrol(model.verifier, feats, np.array(labels),
                                              "the gallery")
        return cls(model, names, means, counts, t)

    def identify(self, image, top=1):
        """Identification(name, score, candidates, threshold) of the image's
        largest face: candidates are the top identities (name, score), best
        first; name is the best one when its score reaches the open-set
        threshold, else None (not in the gallery)."""
        from .verifier.gallery import best_candidates
        if int(top) < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        face, why, what = self.model._aligned(image)
        if face is None:
            raise NoFace(f"no face found in {what} ({why})")
        v = self.model.verifier
        best = best_candidates(v.score_matrix(v.features([face]), self.means)[0], self.names,
                               int(top))
        known = best[0][1] >= self.threshold
        return Identification(best[0][0] if known else None, best[0][1], best, self.threshold)

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
                                 f"{model.verifier.path}: enrol again")
        return cls(model, g["names"], g["means"], g["counts"], g["threshold"])
