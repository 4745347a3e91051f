"""The face-box rule: the boxes the landmark nets were trained on, and that the pipeline
therefore gives them (`face_boxes`; `face_box` for the largest alone).

  "haar":    OpenCV's frontal-face Haar cascade (haarcascade_frontalface_default.xml,
             detectMultiScale with its defaults: scaleFactor 1.1, minNeighbors 3, 24 px)
             on the grey image, largest box first; where it finds nothing, the same on
             the image padded by 25% of its smaller side (border replicated: faces cut by
             the image edge); where that finds nothing too, the fixed central box below.
  "central": the fixed central box always: a square of side 0.56 x min(H, W) centred at
             (0.5 W, 0.47 H) -- the median Haar box of the MTFL training images (9,324
             detections on 10,000 images).
OpenCV 5 (opencv-python 5.x) no longer ships the Haar cascade; the package carries it and
runs it through a numba port of detectMultiScale that gives OpenCV 4's boxes
(deepid2_core.face.haar), so "haar" works everywhere; "auto" means "haar".
"""

from dataclasses import dataclass

import cv2
import numpy as np

from .detect import HaarDetector, detect_image, to_bgr8

CENTRAL_BOX = (0.5, 0.47, 0.56)  # centre x, centre y (fractions of W, H), side / min(H, W)
HAAR_PAD = 0.25  # second Haar try: the image padded by this share of its smaller side
DETECTORS = ("auto", "haar", "central")

_HAAR = []


def haar_detector():
    """The frontal-face Haar cascade with detectMultiScale's defaults
    (scale 1.1, 3 neighbours): OpenCV's own where it has one (4.x), else the
    package's identical numba port (deepid2_core.face.haar; OpenCV 5 dropped it)."""
    if not _HAAR:
        _HAAR.append(HaarDetector(scale_factor=1.1, min_neighbors=3, min_size=(24, 24)))
    return _HAAR[0]


def resolve_detector(detector):
    if detector not in DETECTORS:
        raise ValueError(f"detector must be auto, haar or central, got {detector!r}")
    return "haar" if detector == "auto" else detector


def central_box(shape):
    h, w = shape[:2]
    side = CENTRAL_BOX[2] * min(h, w)
    return np.array([CENTRAL_BOX[0] * w - side / 2, CENTRAL_BOX[1] * h - side / 2, side, side])


def context_box(*boxes, grow=2.0):
    """The square around all the boxes grown `grow` times about their centres."""
    b = np.array(boxes, np.float64)
    c, half = b[:, :2] + b[:, 2:] / 2, grow * b[:, 2:] / 2
    lo, hi = (c - half).min(0), (c + half).max(0)
    side = (hi - lo).max()
    mid = (lo + hi) / 2
    return np.array([mid[0] - side / 2, mid[1] - side / 2, side, side])


@dataclass
class FaceBoxes:
    """The rule's answer for one image. boxes: float64 n x 4 (x, y, w, h, image pixels),
    largest first -- the central box alone where no face was found; scores: float64 (n,)
    (Haar: the raw windows merged into the box; 0 for the central box); source: "haar",
    "haar_padded" or "central"; reason: why no face was found ("" where one was)."""
    boxes: np.ndarray
    scores: np.ndarray
    source: str
    reason: str = ""

    @property
    def found(self):
        return self.source != "central"


def face_boxes(image, detector="haar", all_faces=False, max_side=None):
    """The box rule (module docstring) on a uint8 grey or BGR image. detector: "haar" or
    "central" (resolved); all_faces: every Haar box, not only the largest; max_side: Haar
    runs on the image shrunk to this longer side (boxes mapped back), None: as it is."""
    img, why = to_bgr8(image)
    if img is None:
        raise ValueError(f"image: {why}")
    if detector == "central":
        return FaceBoxes(central_box(img.shape)[None], np.zeros(1), "central",
                         "the central box rule")
    if detector != "haar":
        raise ValueError(f"detector must be haar or central here, got {detector!r}")
    det = haar_detector()
    r = detect_image(img, det, all_faces=all_faces, max_side=max_side)
    source = "haar"
    if r.status == "no_face" and not r.reason.startswith("detector"):
        # faces that touch the border: a second try with room around them
        h, w = img.shape[:2]
        p = int(round(HAAR_PAD * min(h, w)))
        padded = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)
        r2 = detect_image(padded, det, all_faces=all_faces, max_side=max_side)
        if r2.ok:
            r2.boxes = r2.boxes - np.float32([p, p, 0, 0])
            r, source = r2, "haar_padded"
    if not r.ok:
        return FaceBoxes(central_box(img.shape)[None], np.zeros(1), "central", r.reason)
    return FaceBoxes(np.asarray(r.boxes, np.float64), np.asarray(r.scores, np.float64), source)


def face_box(image, detector):
    """(box, found): the largest box of `face_boxes` (detector "haar" or "central"), and
    whether Haar found it (False: the central box)."""
    r = face_boxes(image, detector)
    return r.boxes[0], r.found
