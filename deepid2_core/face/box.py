"""The face-box rule: the boxes the landmark nets were trained on, and that the pipeline
therefore gives them (`face_boxes`; `face_box` for the largest alone).

  "haar":    OpenCV's frontal-face Haar cascade (haarcascade_frontalface_default.xml,
             detectMultiScale with its defaults: scaleFactor 1.1, minNeighbors 3, 24 px)
             on the grey image, largest box first; where it finds nothing, the same on
             the image padded by 25% of its smaller side (border replicated: faces cut by
             the image edge); where that finds nothing too, the fixed central box below.
  "yunet":   OpenCV's YuNet (cv2.FaceDetectorYN, the model the package carries), each box
             mapped onto the Haar box of the same face (`YUNET_TO_HAAR`, measured by
             experiments/yunet_box_mapping.py on MTFL's training images): the landmark nets
             see the boxes they were trained on. Images under 400 px on their longer side
             where it finds nothing are tried again upscaled 2x, then padded by 40 px.
             Where YuNet finds nothing, the "haar" rule follows (source "haar",
             "haar_padded" or "central"). The pipeline's default runs this rule in
             C++ (deepid2_core.face.native) without the Haar fallback, which found
             no face YuNet missed on LFW or celeba-lfwstyle; this Python form serves
             another YuNet ONNX file (--model) and the studies.
  "central": the fixed central box always: a square of side 0.56 x min(H, W) centred at
             (0.5 W, 0.47 H) -- the median Haar box of the MTFL training images (9,324
             detections on 10,000 images).
pick: which face comes first (the one `face_box` returns and `verify` uses): "largest"
(by area) or "center" (nearest the image centre: LFW's convention, where the largest box
is sometimes a bystander).
OpenCV 5 (opencv-python 5.x) no longer ships the Haar cascade; the package carries it and
runs it through a numba port of detectMultiScale that gives OpenCV 4's boxes
(deepid2_core.face.haar), so "haar" works everywhere; "auto" means "haar".
"""

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .detect import YUNET_MODEL, HaarDetector, YuNetDetector, detect_image, to_bgr8

CENTRAL_BOX = (0.5, 0.47, 0.56)  # centre x, centre y (fractions of W, H), side / min(H, W)
HAAR_MIN_SIZE = 24  # the rule's smallest Haar window (px)
HAAR_PAD = 0.25  # second Haar try: the image padded by this share of its smaller side
DETECTORS = ("auto", "haar", "yunet", "central")     # "auto": "haar" (training's rule)
PICKS = ("largest", "center")
# Haar box from YuNet box (x, y, w, h), s = sqrt(w h): centre + (DX s, DY s), side K s
# (medians over the 9,515 of MTFL's 10,000 training images where both find the face,
# IoU > 0.3: experiments/yunet_box_mapping.py).
YUNET_TO_HAAR = dict(dx=-0.0019, dy=-0.0108, k=1.0992)
YUNET_RETRY_SIDE = 400   # smaller images where YuNet finds nothing are retried upscaled

_HAAR = []
_YUNET = {}


def haar_detector():
    """The frontal-face Haar cascade with detectMultiScale's defaults
    (scale 1.1, 3 neighbours): OpenCV's own where it has one (4.x), else the
    package's identical numba port (deepid2_core.face.haar; OpenCV 5 dropped it)."""
    if not _HAAR:
        _HAAR.append(HaarDetector(scale_factor=1.1, min_neighbors=3,
                                  min_size=(HAAR_MIN_SIZE, HAAR_MIN_SIZE)))
    return _HAAR[0]


def yunet_detector(model=None):
    """YuNet with the packaged model (or the ONNX file `model`), one per model file."""
    path = os.fspath(model) if model else YUNET_MODEL
    if path not in _YUNET:
        _YUNET[path] = YuNetDetector(path, score_threshold=0.6)
    return _YUNET[path]


def yunet_raw_boxes(image, model=None, max_side=None):
    """YuNet's own boxes (float64 n x 4, largest first) and scores on a BGR image, with
    the small-image retries of the "yunet" rule."""
    det = yunet_detector(model)
    h, w = image.shape[:2]
    r = detect_image(image, det, all_faces=True, max_side=max_side)
    if r.ok or max(h, w) >= YUNET_RETRY_SIDE or min(h, w) < 4:
        return (np.asarray(r.boxes, np.float64).reshape(-1, 4),
                np.asarray(r.scores, np.float64).reshape(-1))
    up = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    for pad in (0, 40):
        im = cv2.copyMakeBorder(up, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else up
        r = detect_image(im, det, all_faces=True)
        if r.ok:    # pixel centres at integers: (p + 0.5) / 2 - 0.5, and w / 2
            b = np.asarray(r.boxes, np.float64)
            b[:, :2] = (b[:, :2] - pad + 0.5) / 2 - 0.5
            b[:, 2:] /= 2
            return b, np.asarray(r.scores, np.float64)
    return np.zeros((0, 4)), np.zeros(0)


def yunet_to_haar(boxes):
    """YuNet boxes (n x 4) -> the square Haar-convention boxes of the same faces."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.sqrt(b[:, 2] * b[:, 3])
    cx = b[:, 0] + b[:, 2] / 2 + YUNET_TO_HAAR["dx"] * s
    cy = b[:, 1] + b[:, 3] / 2 + YUNET_TO_HAAR["dy"] * s
    side = YUNET_TO_HAAR["k"] * s
    return np.stack([cx - side / 2, cy - side / 2, side, side], 1)


def order_faces(boxes, shape, pick="largest"):
    """Indices of boxes (n x 4) in `pick` order: "largest" area first (stable), or
    "center": nearest the image centre first."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if pick == "largest":
        return np.argsort(-(b[:, 2] * b[:, 3]), kind="stable")
    if pick == "center":
        h, w = shape[:2]
        c = b[:, :2] + b[:, 2:] / 2
        return np.argsort(np.hypot(c[:, 0] - w / 2, c[:, 1] - h / 2), kind="stable")
    raise ValueError(f"pick must be largest or center, got {pick!r}")


def resolve_detector(detector):
    if detector not in DETECTORS:
        raise ValueError(f"detector must be auto, haar, yunet or central, got {detector!r}")
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


def face_boxes(image, detector="haar", all_faces=False, max_side=None, pick="largest",
               yunet_model=None):
    """The box rule (module docstring) on a uint8 grey or BGR image. detector: "yunet",
    "haar" or "central" (resolved); all_faces: every box, not only the first; max_side:
    the detector runs on the image shrunk to this longer side (boxes mapped back), None:
    as it is; pick: "largest" or "center" first; yunet_model: another YuNet ONNX file."""
    img, why = to_bgr8(image)
    if img is None:
        raise ValueError(f"image: {why}")
    if pick not in PICKS:
        raise ValueError(f"pick must be largest or center, got {pick!r}")
    if detector == "central":
        return FaceBoxes(central_box(img.shape)[None], np.zeros(1), "central",
                         "the central box rule")
    if detector == "yunet":
        raw, scores = yunet_raw_boxes(img, yunet_model, max_side)
        if len(raw):
            order = order_faces(raw, img.shape, pick)[:None if all_faces else 1]
            return FaceBoxes(yunet_to_haar(raw[order]), scores[order], "yunet")
        fb = face_boxes(img, "haar", all_faces, max_side, pick)
        if fb.reason == "no face found":
            fb.reason = "no face found by YuNet or Haar"
        return fb
    if detector != "haar":
        raise ValueError(f"detector must be yunet, haar or central here, got {detector!r}")
    det = haar_detector()
    r = detect_image(img, det, all_faces=True, max_side=max_side)
    source = "haar"
    if r.status == "no_face" and not r.reason.startswith("detector"):
        # faces that touch the border: a second try with room around them
        h, w = img.shape[:2]
        p = int(round(HAAR_PAD * min(h, w)))
        padded = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)
        r2 = detect_image(padded, det, all_faces=True, max_side=max_side)
        if r2.ok:
            r2.boxes = r2.boxes - np.float32([p, p, 0, 0])
            r, source = r2, "haar_padded"
    if not r.ok:
        return FaceBoxes(central_box(img.shape)[None], np.zeros(1), "central", r.reason)
    order = order_faces(r.boxes, img.shape, pick)[:None if all_faces else 1]
    return FaceBoxes(np.asarray(r.boxes, np.float64)[order],
                     np.asarray(r.scores, np.float64)[order], source)


def face_box(image, detector, pick="largest"):
    """(box, found): the first box of `face_boxes` (detector "yunet", "haar" or
    "central"), and whether a detector found it (False: the central box)."""
    r = face_boxes(image, detector, pick=pick)
    return r.boxes[0], r.found


def turn_box(box, k, w, h):
    """A box (x, y, w, h) of a w x h image, on the image turned k quarter turns
    counter-clockwise (np.rot90(image, k)): the area it covers there. The C++
    pipeline gives a face found on a turned photo back by the inverse."""
    bx, by, bw, bh = (float(v) for v in box)
    return {0: (bx, by, bw, bh), 1: (by, w - bx - bw, bh, bw),
            2: (w - bx - bw, h - by - bh, bw, bh), 3: (h - by - bh, bx, bh, bw)}[k % 4]


def unturn_points(pts, k, w, h):
    """Points (... x 2, pixel centres at integers) of a w x h image turned k quarter
    turns counter-clockwise, back in the image's own pixels."""
    p = np.asarray(pts, np.float64)
    x, y = p[..., 0], p[..., 1]
    back = {0: (x, y), 1: (w - 1 - y, x), 2: (w - 1 - x, h - 1 - y), 3: (y, h - 1 - x)}[k % 4]
    return np.stack(back, -1)
