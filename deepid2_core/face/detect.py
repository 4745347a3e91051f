"""Face detection: OpenCV's YuNet (the model the package carries) by default, or
OpenCV's Haar cascade.

Every image goes through `read_image` (face/image.py: the one reader of every
command; the header's size is checked against a pixel limit before decoding) or
`to_bgr8` for arrays; neither raises, and both normalise to 8-bit BGR:

=====================  ====================================================
input                  result
=====================  ====================================================
missing / empty file   ``None``, reason "file not found" / "empty file"
text, garbage          ``None``, reason "not a decodable image"
truncated JPEG / PNG   ``None``, reason "truncated JPEG ..." / "truncated PNG ..."
over the pixel limit   ``None``, reason "30000x30000 image (900 megapixels) is
                       over the 50 megapixel limit (...)", nothing decoded
16-bit (PNG, TIFF)     8-bit by v / 257, rounded (0..65535 -> 0..255)
float images           clipped to [0, 1] and scaled by 255
RGBA / grey+alpha      alpha dropped (no compositing)
grey                   expanded to 3 equal channels
EXIF orientation       applied (OpenCV's default)
=====================  ====================================================

`detect_image` / `detect_faces` return a `FaceDetection` per image and never
raise for a bad image: status "ok" (boxes found), "no_face" (readable, no face;
an image smaller than the detector's smallest face, a 1x1 image say, is
"no_face" with that reason) or "unreadable" (with the reason above).

Detectors:

* `HaarDetector`: ``haarcascade_frontalface_default``, from
  ``cv2.data`` through ``cv2.CascadeClassifier`` when the installed OpenCV has
  them (opencv-python 4.x), else the same cascade carried in this package and
  run by `haar.detect_multiscale` (opencv-python 5 ships neither); the two give
  identical boxes. Score = the number of raw windows merged into the box. No
  landmarks.
* `YuNetDetector(model_path)` (default: the packaged
  ``models/face_detection_yunet_2026may.onnx``): ``cv2.FaceDetectorYN``; score = its confidence,
  plus 5 landmarks per face in this project's order: left eye, right eye, nose
  tip, left mouth corner, right mouth corner, left/right as seen in the image
  (MTFL's order; YuNet's output is already in it).

Boxes are float32 (x, y, w, h) in the pixels of the image as read, the detector's
own (face.box maps YuNet's onto the Haar boxes the landmark nets expect), largest
area first; without ``all_faces`` only the largest is returned. Images whose
longer side exceeds ``max_side`` are shrunk for detection and the boxes and
landmarks mapped back.
"""
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from ..errors import BadModelFile
from .image import read_image, to_bgr8  # the one reader (re-exported: face.read_image)


@dataclass
class FaceDetection:
    """One image's result. status: "ok" | "no_face" | "unreadable"; reason
    says why for the last two. boxes float32 (n, 4) x, y, w, h, largest first;
    scores float32 (n,); landmarks float32 (n, 5, 2) (YuNet) or None (Haar);
    size (width, height) of the image as read, None when unreadable."""
    status: str
    reason: str = ""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    landmarks: Optional[np.ndarray] = None
    size: Optional[tuple] = None
    path: Optional[str] = None

    @property
    def ok(self):
        return self.status == "ok"

    def to_dict(self):
        """JSON-friendly dict (lists instead of arrays)."""
        return dict(status=self.status, reason=self.reason, boxes=self.boxes.tolist(),
                    scores=self.scores.tolist(), path=self.path,
                    landmarks=None if self.landmarks is None else self.landmarks.tolist(),
                    size=None if self.size is None else list(self.size))


class HaarDetector:
    """OpenCV's frontal-face Haar cascade. detect(bgr) -> (boxes, scores, None).
    engine: "auto" (cv2.CascadeClassifier when installed, else "numba"),
    "opencv" or "numba"."""
    name = "haar"

    def __init__(self, scale_factor=1.1, min_neighbors=5, min_size=(24, 24), engine="auto"):
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self.min_size = tuple(int(v) for v in min_size)
        xml = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                           "haarcascade_frontalface_default.xml")
        has_cv = hasattr(cv2, "CascadeClassifier") and os.path.isfile(xml)
        if engine == "auto":
            engine = "opencv" if has_cv else "numba"
        if engine == "opencv":
            if not has_cv:
                raise ValueError("this OpenCV has no CascadeClassifier/haarcascades "
                                 "(opencv-python 5); use engine='numba'")
            self._cv = cv2.CascadeClassifier(xml)
        elif engine == "numba":
            from . import haar      # numba: imported only where the port runs (start-up)
            self._haar = haar
            self._cascade = haar.default_cascade()
        else:
            raise ValueError(f"engine must be 'auto', 'opencv' or 'numba', got {engine!r}")
        self.engine = engine
        self.min_face = max(24, min(self.min_size))

    def detect(self, bgr):
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        if self.engine == "opencv":
            boxes, counts = self._cv.detectMultiScale2(
                gray, self.scale_factor, self.min_neighbors, minSize=self.min_size)
        else:
            boxes, counts = self._haar.detect_multiscale(gray, self._cascade, self.scale_factor,
                                                   self.min_neighbors, self.min_size)
        return (np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(counts, np.float32).reshape(-1), None)


class YuNetDetector:
    """cv2.FaceDetectorYN with the ONNX model at model_path.
    detect(bgr) -> (boxes, scores, landmarks (n, 5, 2))."""
    name = "yunet"
    min_face = 10

    def __init__(self, model_path, score_threshold=0.7, nms_threshold=0.3, top_k=5000):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"YuNet model {model_path!r} does not exist")
        self.model_path = model_path
        log = cv2.utils.logging
        level = log.getLogLevel()   # OpenCV 5 warns that its new engine ignores targets
        log.setLogLevel(log.LOG_LEVEL_ERROR)
        try:    # a text file, another network: refused here, not on every image
            self._net = cv2.FaceDetectorYN.create(model_path, "", (320, 320),
                                                  float(score_threshold), float(nms_threshold),
                                                  int(top_k))
            self._net.detect(np.zeros((320, 320, 3), np.uint8))
        except cv2.error as e:
            raise BadModelFile(f"{model_path}: not a YuNet ONNX model (cv2: "
                               f"{cv2_message(e)})") from None
        finally:
            log.setLogLevel(level)
        self._lock = threading.Lock()           # setInputSize + detect must stay together

    def detect(self, bgr):
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self._net.detect(bgr)
        faces = np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float32)
        return faces[:, :4].copy(), faces[:, 14].copy(), faces[:, 4:14].reshape(-1, 5, 2).copy()


def cv2_message(err):
    """The one line of a cv2.error that says what went wrong ("... in function ...")."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(">") or "error:" in ln:
            return ln.lstrip("> ").split("error: ", 1)[-1][:300]
    return (lines[-1] if lines else type(err).__name__)[:300]


YUNET_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "models", "face_detection_yunet_2026may.onnx")


def make_detector(kind="yunet", model_path=None, **kwargs):
    """YuNetDetector (model_path, default the packaged model) or HaarDetector."""
    if kind == "yunet":
        return YuNetDetector(model_path or YUNET_MODEL, **kwargs)
    if kind == "haar":
        if model_path:
            raise ValueError("model_path is a YuNet model: it goes with kind='yunet'")
        return HaarDetector(**kwargs)
    raise ValueError(f"detector kind must be yunet or haar, got {kind!r}")


_default = {}


def _default_detector():
    if "yunet" not in _default:
        _default["yunet"] = YuNetDetector(YUNET_MODEL)
    return _default["yunet"]


def detect_image(image, detector=None, all_faces=False, max_side=1024, path=None):
    """A path or a decoded array -> FaceDetection. Never raises for bad input."""
    if isinstance(image, (str, bytes, os.PathLike)):
        path = os.fspath(image) if path is None else path
        img, why = read_image(image)
    else:
        img, why = to_bgr8(image)
    if img is None:
        return FaceDetection("unreadable", why, path=path)
    det = detector or _default_detector()
    h, w = img.shape[:2]
    if min(h, w) < det.min_face:
        return FaceDetection("no_face", f"image ({w}x{h}) is smaller than the smallest "
                             f"detectable face ({det.min_face} px)", size=(w, h), path=path)
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    try:
        boxes, scores, lms = det.detect(img)
    except Exception as e:  # noqa: BLE001 - a detector failure is this image's result
        return FaceDetection("no_face", f"detector error: {type(e).__name__}: {e}",
                             size=(w, h), path=path)
    if len(boxes) == 0:
        return FaceDetection("no_face", "no face found", size=(w, h), path=path)
    if scale != 1.0:
        boxes = boxes / np.float32(scale)
        lms = None if lms is None else lms / np.float32(scale)
    order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")[:None if all_faces else 1]
    return FaceDetection("ok", "", boxes[order], scores[order],
                         None if lms is None else lms[order], (w, h), path)


def detect_faces(images, detector=None, all_faces=False, max_side=1024):
    """detect_image over paths (or arrays), one FaceDetection each, in order."""
    det = detector or _default_detector()
    return [detect_image(im, det, all_faces, max_side) for im in images]
