"""Landmark inference: the 5 points of a face box by the level-1 ConvNet F1
(deepid2_core.nets.landmark), refined by the cascade's levels 2 and 3 where the model
file holds them (deepid2_core.face.landmark_cascade).

The crop: the face box (x, y, w, h in image pixels, by the rule of
deepid2_core.face.box) grown `box_scale` times about its centre and resampled to 39x39
(bilinear, border replicated), then standardised (zero mean, unit std per crop). Pixel
centres are at integer coordinates, as in OpenCV; a target t in [0, 1] is the crop
coordinate (t * 39 - 0.5) mapped back to the image.

Prediction (`LandmarkModel`, `flip_average=True` by default) averages the points of the
crop and of its mirror image (mapped back, left/right swapped); the validation during
training does not. `load_landmark_model` loads a model file's refinement levels too
(`levels=1`: level 1 alone) and `predict_landmarks` applies them after level 1,
flip-averaged like level 1 when `flip_average` is set. For a model read from a file on
the cpu backend, `predict_landmarks` runs the file in C++ (cpp/src/face/landmarks.h, the
code the C++ pipeline runs); crops for training are cut by the same C++ warp (`warp`).

Model file (`save_model`, MODEL_FORMAT): F1's parameters, with the training targets'
mean and std folded into its output layer (`fold_target_stats`: it outputs t itself),
its config and training record in the metadata, and the cascade's nets as tensors
levelL/POINT/J/NAME with their configs in the metadata's "cascade". A level-1 training
checkpoint (CHECKPOINT_FORMAT) loads as a model too.
"""

import json
import math
import os

import cv2
import numpy as np

from .. import safetensors
from ..nets.landmark import (FLIP_ORDER, POINTS, LandmarkNet, LandmarkNetConfig, param_shapes,
                             standardise)
from .landmark_cascade import cascade_from

MODEL_FORMAT = "deepid2-landmarks-model/1"
CHECKPOINT_FORMAT = "deepid2-landmarks-checkpoint/1"
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "models", "landmarks.safetensors")


# -- geometry: crops, flips ------------------------------------------------------------------
def crop_matrix(box, size, box_scale=1.0, shift=(0.0, 0.0), scale=1.0, angle=0.0, flip=False):
    """2x3 affine map from image pixels to crop pixels (size x size) for box (x, y, w, h).

    The crop covers the box grown box_scale times about its centre; shift (fractions of
    the box), scale (> 1 zooms out) and angle (degrees) perturb it; flip mirrors the crop.
    """
    x, y, w, h = (float(v) for v in box)
    cx = x + 0.5 * w - 0.5 + shift[0] * w  # the box covers pixels x .. x + w - 1
    cy = y + 0.5 * h - 0.5 + shift[1] * h
    kx, ky = size / (w * box_scale * scale), size / (h * box_scale * scale)
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    lin = np.array([[ca * kx, sa * ky], [-sa * kx, ca * ky]])
    c = (size - 1) / 2.0
    m = np.zeros((2, 3))
    m[:, :2] = lin
    m[:, 2] = c - lin @ np.array([cx, cy])
    if flip:
        m[0] = -m[0]
        m[0, 2] += size - 1
    return m


def apply_affine(m, pts):
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def invert_affine(m):
    inv = np.linalg.inv(m[:, :2])
    return np.concatenate([inv, -(inv @ m[:, 2])[:, None]], axis=1)


def flip_points(t):
    """Targets (..., 5, 2) in [0, 1] of a crop -> those of the mirrored crop."""
    t = np.asarray(t)
    out = t[..., list(FLIP_ORDER), :].copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def to_gray(image):
    """A 2-D uint8 grey image from a grey (H x W or H x W x 1) or BGR/BGRA uint8 image."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (grey or BGR as cv2.imread gives), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3
                            else cv2.COLOR_BGRA2GRAY)
    else:
        raise ValueError(f"image must be H x W (grey) or H x W x 3 (BGR), got shape {image.shape}")
    if gray.shape[0] < 1 or gray.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(gray)


def warp(gray, m, size):
    """The size x size crop of gray by the 2x3 map m (image -> crop): the C++ warp the
    C++ model crops with (cpp/src/face/image.h: bilinear in double precision, border
    replicated), so that training crops are cut as inference cuts them. It differs from
    cv2.warpAffine (1/32-pixel fixed-point interpolation) by at most 1 grey level."""
    return _native().warp_affine(np.ascontiguousarray(gray),
                                 np.ascontiguousarray(m, np.float64), size, size)


def _native():
    """The C++ extension (imported through the cpu backend, which says how to build it)."""
    from ..backends.cpu import extension
    return extension()


def fold_target_stats(params, target_mean, target_std):
    """The trained parameters with the target standardisation folded into the output
    layer: the network then outputs the normalised coordinates themselves."""
    p = dict(params)
    std, mean = target_std[0], target_mean
    p["out.w"] = np.ascontiguousarray(p["out.w"] * std, np.float32)
    p["out.b"] = np.ascontiguousarray(mean + p["out.b"] * std, np.float32)
    return p


# -- the model: load, predict ----------------------------------------------------------------
class LandmarkModel:
    """flip_average: predict on the crop and on its mirror image (points mapped back,
    left/right swapped) and average the two; training's validation does not.
    cascade: the refinement levels (face.landmark_cascade.LandmarkCascade) that
    `predict_landmarks` applies after level 1, or None (level 1 alone)."""

    def __init__(self, params, cfg, meta=None, backend="cpu", flip_average=True, cascade=None):
        from ..backends import get_backend
        self.params, self.cfg, self.meta = params, cfg, dict(meta or {})
        self.path = None  # the file load_landmark_model read: predict_landmarks runs it in C++
        self.flip_average = bool(flip_average)
        self.cascade = cascade
        self.be = get_backend(backend) if isinstance(backend, str) else backend
        self.net = LandmarkNet(cfg, self.be)
        expected = param_shapes(cfg)
        got = {k: tuple(v.shape) for k, v in params.items()}
        if got != expected:
            raise ValueError(f"parameters do not fit the network: expected {expected}, got {got}")

    def predict_normalised(self, x, batch=256):
        out = [self.net.forward(self.params, x[i:i + batch])["out"]
               for i in range(0, len(x), batch)]
        return np.concatenate(out).reshape(len(x), len(POINTS), 2)

    def predict_crops(self, crops, crop_inv):
        """uint8 N x S x S crops and their crop -> image maps: N x 5 x 2 image pixels."""
        t = self.predict_normalised(standardise(crops)).astype(np.float64)
        if self.flip_average:
            tf = self.predict_normalised(standardise(np.ascontiguousarray(crops[:, :, ::-1])))
            t = 0.5 * (t + flip_points(tf.astype(np.float64)))
        u = t * self.cfg.size - 0.5
        return np.einsum("nij,npj->npi", crop_inv[:, :, :2], u) + crop_inv[:, None, :, 2]


def save_model(path, params, net_cfg, meta, cascade=None):
    """Level 1's params (and the refinement levels of `cascade`, tensors named
    levelL/POINT/J/NAME, configs in the metadata's "cascade") with meta."""
    meta = {**{k: str(v) for k, v in meta.items()}, "format": MODEL_FORMAT,
            "net": json.dumps(net_cfg.to_dict(), sort_keys=True), "points": json.dumps(POINTS)}
    meta.pop("cascade", None)
    tensors = dict(params)
    if cascade is not None:
        meta.update(cascade.meta_fields())
        tensors.update(cascade.tensors())
    safetensors.save(path, tensors, meta)


def load_landmark_model(path=None, backend="cpu", flip_average=True, levels=None):
    """A LandmarkModel from a model file (default: the shipped deepid2_core/models/
    landmarks.safetensors) or from a training checkpoint. levels: how many levels of the
    cascade to use (1: level 1 alone; default: all the file holds)."""
    from ..backends import get_backend
    if levels is not None and (int(levels) != levels or levels < 1):
        raise ValueError(f"levels must be a positive whole number, got {levels!r}")
    be = get_backend(backend) if isinstance(backend, str) else backend
    path = os.fspath(path) if path is not None else DEFAULT_MODEL
    if not os.path.isfile(path):
        raise ValueError(f"landmark model {path!r} not found")
    tensors, meta = safetensors.load(path)
    cascade = None
    if meta.get("format") == CHECKPOINT_FORMAT:
        tensors = fold_target_stats(
            {k[6:]: v for k, v in tensors.items() if k.startswith("param/")},
            tensors["target/mean"], tensors["target/std"])
    elif meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a deepid2 landmark model (format "
                         f"{meta.get('format')!r})")
    else:
        cascade, tensors = cascade_from(tensors, meta, be)
        if cascade is not None and levels is not None:
            cascade.levels = cascade.levels[:levels - 1]
        if cascade is not None and not cascade.levels:
            cascade = None
    cfg = LandmarkNetConfig.from_dict(json.loads(meta["net"]))
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    model = LandmarkModel(params, cfg, meta, be, flip_average, cascade)
    model.path = os.path.abspath(path)
    return model


def _check_boxes(boxes, hw):
    try:
        b = np.asarray(boxes, np.float64)
    except (TypeError, ValueError):
        raise TypeError("boxes must be numbers: an n x 4 array of (x, y, w, h)") from None
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim == 1 and b.shape == (4,):
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be n x 4 (x, y, w, h), got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes must be finite")
    bad = np.nonzero((b[:, 2] <= 0) | (b[:, 3] <= 0))[0]
    if len(bad):
        raise ValueError(f"box {int(bad[0])} has a non-positive width or height: {b[bad[0]]}")
    h, w = hw
    out = np.nonzero((b[:, 0] >= w) | (b[:, 1] >= h) | (b[:, 0] + b[:, 2] <= 0)
                     | (b[:, 1] + b[:, 3] <= 0))[0]
    if len(out):
        raise ValueError(f"box {int(out[0])} {b[out[0]].tolist()} lies outside the "
                         f"{w}x{h} image")
    return b


def predict_landmarks(model, image, boxes):
    """The 5 points in each box: float32 n x 5 x 2 (x, y) in image pixels, in POINTS order.

    image: uint8 grey (H x W) or BGR (H x W x 3) as cv2.imread gives; boxes: n x 4
    (x, y, w, h) face boxes, as OpenCV's Haar cascade gives (the model was trained on them
    and on the central box; other detectors' boxes should be mapped to those first).
    """
    if not isinstance(model, LandmarkModel):
        raise TypeError(f"model must be a LandmarkModel (load_landmark_model()), got "
                        f"{type(model).__name__}")
    gray = to_gray(image)
    b = _check_boxes(boxes, gray.shape)
    s = model.cfg.size
    if len(b) == 0:
        return np.zeros((0, len(POINTS), 2), np.float32)
    if _runs_in_cpp(model):
        return _native().landmarks_predict(model.path, gray, np.ascontiguousarray(b),
                                          _levels(model)).astype(np.float32)
    crops = np.empty((len(b), s, s), np.uint8)
    inv = np.empty((len(b), 2, 3))
    for j, box in enumerate(b):
        m = crop_matrix(box, s, model.cfg.box_scale)
        crops[j] = warp(gray, m, s)
        inv[j] = invert_affine(m)
    pts = model.predict_crops(crops, inv)
    if model.cascade is not None:
        pts = model.cascade.refine(gray, pts, model.flip_average)
    return pts.astype(np.float32)


def _runs_in_cpp(model):
    """Whether predict_landmarks runs the model file in C++ (cpp/src/face/landmarks.h, the
    code the C++ pipeline runs): a model load_landmark_model read, flip-averaged, on the
    cpu backend. The Python forward remains for models made in memory (training), for
    flip_average=False and for the gpu backend; on the same crops both give the same
    points to float rounding (tests/cpp/test_landmarks.py)."""
    return (model.path is not None and model.flip_average
            and model.be.name == "cpu")


def _levels(model):
    """The levels the model runs: level 1 and the cascade's (load_landmark_model's levels)."""
    return 1 + (len(model.cascade.levels) if model.cascade is not None else 0)
