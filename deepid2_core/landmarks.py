"""5-point facial landmarks: a level-1 ConvNet of the facial point cascade
(Sun, Wang, Tang, "Deep Convolutional Network Cascade for Facial Point
Detection", CVPR 2013, network F1), written on this engine's ops.

Points, in this order (left/right as seen in the image, as in MTFL):
left eye centre, right eye centre, nose tip, left mouth corner, right mouth
corner. Output: their (x, y), normalised to [0, 1] within the crop.

Network (F1; every layer ReLU except the last -- the paper uses |tanh|; ReLU
is what the engine's lsconv and dense ops fuse):
  input 39x39 grey crop of the face box
  conv1 4x4, 20 maps             -> max-pool 2   (36 -> 18)
  conv2 3x3, 40 maps             -> max-pool 2   (16 -> 8)
  conv3 3x3, 60 maps, weights shared within each cell of a 2x2 grid of
        regions (lsconv)         -> max-pool 2   (6 -> 3)
  conv4 2x2, 80 maps, locally connected (no sharing; 2x2 output)
  fc    120, ReLU
  out   10, linear                = (x1, y1, ..., x5, y5)

The crop: the face box (x, y, w, h in image pixels, e.g. from OpenCV's Haar
cascade) grown `box_scale` times about its centre and resampled to 39x39
(bilinear, border replicated), then standardised (zero mean, unit std per
crop). Pixel centres are at integer coordinates, as in OpenCV; a target t
in [0, 1] is the crop coordinate (t * 39 - 0.5) mapped back to the image.

Face boxes for training and evaluation (the box rule, `detector`):
  "haar":    the largest detection of OpenCV's frontal-face Haar cascade
             (haarcascade_frontalface_default.xml, detectMultiScale with its
             defaults: scaleFactor 1.1, minNeighbors 3) on the grey image;
             where it finds nothing, the largest on the image padded by 25%
             of its smaller side (border replicated: faces cut by the image
             edge); where that finds nothing too, the fixed central box below.
  "central": the fixed central box always: a square of side 0.56 x
             min(H, W) centred at (0.5 W, 0.47 H) -- the median Haar box of
             the MTFL training images (9,324 detections on 10,000 images).
Training mixes the two: with probability `fallback_share` a training sample
uses the central box even where Haar found a face, with a wider scale jitter
(`central_scale`: the central box does not follow the face's size), so the
network is right on either kind of box (images Haar misses get the central
box at test time).
OpenCV 5 (opencv-python 5.x) no longer ships the Haar cascade; the package
carries it and runs it through a numba port of detectMultiScale that gives
OpenCV 4's boxes (deepid2_core.face.haar), so "haar" works everywhere; "auto"
means "haar". Models record which engine found their boxes.

Data: MTFL lists (`path x1..x5 y1..y5`, pixels). MTFL80's net_7876 lines
whose five points have a mean y above the upper third of the image (mean
y < 0.325 H: 2,347 of its 5,849 lines) carry y coordinates about 28 px too
small (the points sit on the forehead or above the head; measured against
Haar boxes: their offset is 28.1 px with the same 1.8 px scatter as the good
lines), so `build_cache` leaves them out (`known_bad_annotation`).

Training: momentum SGD with weight decay on weights (not biases), cosine
learning rate from `lr` to 0, loss `regression_loss` (1/2 squared error,
mean over the batch) on the standardised coordinates (t - mean) / std (mean
per coordinate, one pooled std; `target_stats`: "augmented" takes them from
4,096 augmented training samples, i.e. from what the network is asked to
output, "crops" from the plain crops -- about 0.05 of the crop, too small once
the jitter is wide: with shift 0.1 / rotation 20 the loss then starts near 17
and the network never leaves the mean); the saved model
has mean and std folded into its output layer, so it outputs t itself.
Standardising is what lets plain momentum SGD train the network: on the raw
coordinates the output layer's curvature caps the learning rate far below
what the lower layers need, and they learn next to nothing. Weights start
He-normal, then each ReLU layer is rescaled to an output rms of 1 on 256
training crops (`unit_rms_init`). Augmentation per sample:
horizontal flip (the mirror image, with left/right eyes and mouth corners
swapped), box shift, scale and rotation. The batch of step s of epoch e is
drawn from np.random.default_rng([seed, e, s]) and the ops are
deterministic, so a run is a pure function of its data, config and seed; a
checkpoint is written after every epoch and a resumed run continues exactly.

Prediction (`LandmarkModel`, `flip_average=True` by default) averages the
points of the crop and of its mirror image (mapped back, left/right swapped);
the validation during training does not.

The cascade (deepid2_core.landmark_cascade, levels 2 and 3 of the paper): a model
file may also hold refinement nets -- per point, small ConvNets on patches centred at
the previous level's estimate that regress the true point's offset from the patch
centre -- trained by `deepid2 train-landmark-cascade` on top of a level-1 model.
`load_landmark_model` loads them (`levels=1`: level 1 alone) and `predict_landmarks`
(hence `evaluate` and the face pipeline) applies them after level 1, flip-averaged
like level 1 when `flip_average` is set.

Evaluation: per-point error |p - g| / inter-ocular distance (between the
two ground-truth eye centres), the mean of those (NME), and the failure
rate: images whose mean error over the 5 points exceeds 10%.
"""

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from . import safetensors
from .loop import (cosine_lr, load_checkpoint, read_log, save_checkpoint, sgd_step, start,
                   write_log)
from .nets.deepid2 import LAYERS, stack_backward, stack_forward, stack_shapes
from .plot import _panel
from .progress import Progress

POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
FLIP_ORDER = (1, 0, 2, 4, 3)  # a mirrored face: left <-> right eye and mouth corner
MODEL_FORMAT = "deepid2-landmarks-model/1"
CHECKPOINT_FORMAT = "deepid2-landmarks-checkpoint/1"
CACHE_FORMAT = "deepid2-landmarks-cache/3"
CHECKPOINT, BEST, FINAL, LOG, PLOT, EVAL = ("checkpoint.safetensors", "best.safetensors",
                                            "landmarks.safetensors", "log.jsonl", "curves.png",
                                            "eval.json")
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models",
                             "landmarks.safetensors")
TRAIN_LIST, TEST_LIST = "new_training.txt", "new_testing.txt"
CENTRAL_BOX = (0.5, 0.47, 0.56)  # centre x, centre y (fractions of W, H), side / min(H, W)
HAAR_PAD = 0.25  # second Haar try: the image padded by this share of its smaller side
CONTEXT = 96   # training cache: the square around both boxes grown 2x, at CONTEXT x CONTEXT
FAILURE = 0.10


# -- the network ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LandmarkNetConfig:
    size: int = 39               # input crop, size x size grey
    conv3_grid: tuple = (2, 2)   # conv3 weights shared within a grid of this many regions
    hidden: int = 120
    n_points: int = 5
    box_scale: float = 1.2       # the crop is the face box grown this much about its centre

    def __post_init__(self):
        object.__setattr__(self, "conv3_grid", tuple(int(g) for g in self.conv3_grid))
        if self.n_points != len(POINTS):
            raise ValueError(f"n_points must be {len(POINTS)} ({', '.join(POINTS)})")
        if not self.box_scale > 0:
            raise ValueError(f"box_scale must be positive, got {self.box_scale}")
        conv_shapes(self)  # raises for sizes too small

    def to_dict(self):
        d = asdict(self)
        d["conv3_grid"] = list(self.conv3_grid)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "conv3_grid": tuple(d["conv3_grid"])})


def conv_shapes(cfg):
    """The four convolutions' input shapes and regions (DeepID2's stack, gray input)."""
    return stack_shapes(LAYERS, 1, cfg.size, cfg.size, cfg.conv3_grid)


def param_shapes(cfg):
    s = conv_shapes(cfg)
    out = {}
    for cs in s:
        ry, rx = cs.grid
        out[cs.name + ".w"] = (ry, rx, cs.k, cs.c, cs.kernel, cs.kernel)
        out[cs.name + ".b"] = (ry, rx, cs.k)
    oh, ow = s[3].out_hw
    out["fc.w"] = (s[3].k * oh * ow, cfg.hidden)
    out["fc.b"] = (cfg.hidden,)
    out["out.w"] = (cfg.hidden, 2 * cfg.n_points)
    out["out.b"] = (2 * cfg.n_points,)
    return out


def init_weights(shapes, rng):
    """He-normal weights (std sqrt(2 / fan_in)) for the ReLU layers and 0.1 sqrt(1 / fan_in)
    for the linear output "out.w" (the first predictions sit near out.b), drawn in
    sorted-name order from rng; biases 0."""
    params = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith(".b"):
            params[name] = np.zeros(shape, np.float32)
            continue
        fan_in = int(np.prod(shape[3:])) if len(shape) == 6 else shape[0]
        std = 0.1 * np.sqrt(1.0 / fan_in) if name == "out.w" else np.sqrt(2.0 / fan_in)
        params[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def init_params(cfg, seed, mean_target=None):
    """`init_weights` from default_rng(seed), except out.b = mean_target (the mean
    training target). Training then rescales them with `unit_rms_init`."""
    params = init_weights(param_shapes(cfg), np.random.default_rng(seed))
    if mean_target is not None:
        params["out.b"][:] = np.asarray(mean_target, np.float32).reshape(-1)
    return params


def unit_rms_init(net, params, x, layers=None):
    """Rescales conv1..conv4 and fc weights, in order, so that each layer's output has an
    rms of 1 on the batch x (ReLU layers are positively homogeneous: one factor per layer
    does it). He-normal weights alone leave fc at an rms of about 4 (each max-pool raises
    the scale), and regression on such large, all-positive features is ill-conditioned:
    momentum SGD diverges above lr ~ 0.005 and learns nothing below it. layers: the
    names to rescale, default F1's conv1..conv4 and fc."""
    for name in layers or [cs.name for cs in net.convs] + ["fc"]:
        out = net.forward(params, x)[name]
        rms = float(np.sqrt(np.mean(np.square(out, dtype=np.float64))))
        if rms > 0:
            params[name + ".w"] /= np.float32(rms)
    return params


class LandmarkNet:
    """Forward and backward of F1 on a backend, layer by layer (like net.DeepID2)."""

    def __init__(self, cfg, backend):
        self.cfg, self.be = cfg, backend
        self.convs = conv_shapes(cfg)

    def forward(self, params, x):
        be, acts = self.be, {}
        h = stack_forward(be, self.convs, params, x, acts)
        acts["fc"] = be.dense_forward(h, params["fc.w"], params["fc.b"])
        acts["out"] = be.dense_forward(acts["fc"], params["out.w"], params["out.b"], relu=False)
        return acts

    def backward(self, params, acts, dout, grads):
        """Adds d loss / d params into grads, given dout = d loss / d out."""
        be = self.be
        dfc, _, _ = be.dense_backward(acts["fc"], params["out.w"], None, dout, relu=False,
                                      dw=grads["out.w"], db=grads["out.b"])
        dh, _, _ = be.dense_backward(acts["conv4"], params["fc.w"], acts["fc"], dfc[0],
                                     dw=grads["fc.w"], db=grads["fc.b"])
        return stack_backward(be, self.convs, params, acts, dh[0], grads)


# -- geometry: boxes, crops, flips -----------------------------------------------------------
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


def standardise(crops):
    """uint8 N x S x S crops -> float32 N x 1 x S x S, zero mean and unit std per crop."""
    x = crops.astype(np.float32).reshape(len(crops), -1)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.maximum(x.std(axis=1, keepdims=True), np.float32(4.0))
    return np.ascontiguousarray(x.reshape(len(crops), 1, *crops.shape[1:]))


def warp(gray, m, size):
    return cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


# -- face boxes ------------------------------------------------------------------------------
_HAAR = []


def haar_detector():
    """The frontal-face Haar cascade with detectMultiScale's defaults
    (scale 1.1, 3 neighbours): OpenCV's own where it has one (4.x), else the
    package's identical numba port (deepid2_core.face.haar; OpenCV 5 dropped it)."""
    if not _HAAR:
        from .face.detect import HaarDetector
        _HAAR.append(HaarDetector(scale_factor=1.1, min_neighbors=3, min_size=(24, 24)))
    return _HAAR[0]


def resolve_detector(detector):
    if detector not in ("auto", "haar", "central"):
        raise ValueError(f"detector must be auto, haar or central, got {detector!r}")
    return "haar" if detector == "auto" else detector


def detect_faces(gray):
    """Haar detections (n x 4 int, x y w h), largest first."""
    g = to_gray(gray)
    r, _, _ = haar_detector().detect(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
    r = np.asarray(np.round(r), np.int64).reshape(-1, 4)
    return r[np.argsort(-(r[:, 2] * r[:, 3]), kind="stable")]


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


def face_box(gray, detector):
    """(box, found): the box rule of the module docstring; detector "haar" or "central"."""
    if detector == "haar":
        r = detect_faces(gray)
        if not len(r):  # faces that touch the border: a second try with room around them
            p = int(round(HAAR_PAD * min(gray.shape[:2])))
            r = detect_faces(cv2.copyMakeBorder(to_gray(gray), p, p, p, p,
                                                cv2.BORDER_REPLICATE)) - [p, p, 0, 0]
        if len(r):
            return r[0].astype(np.float64), True
    elif detector != "central":
        raise ValueError(f"detector must be haar or central here, got {detector!r}")
    return central_box(gray.shape), False


# -- data ------------------------------------------------------------------------------------
def known_bad_annotation(rel_path, pts, hw):
    """MTFL80's net_7876 lines whose y coordinates are ~28 px too small (module docstring)."""
    return rel_path.replace("\\", "/").startswith("net_7876/") and \
        float(np.mean(pts[:, 1])) < 0.325 * hw[0]


def read_mtfl(data_dir, list_file):
    """[(relative path, 5 x 2 float64 points)] of an MTFL list file."""
    path = os.path.join(os.fspath(data_dir), list_file)
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: --data must be the MTFL folder holding {list_file}")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 11:
                raise ValueError(f"{path}:{n}: expected 'path x1..x5 y1..y5', got {len(parts)} "
                                 f"fields")
            v = np.array(parts[1:], np.float64)
            rows.append((parts[0].replace("\\", "/"), np.stack([v[:5], v[5:]], axis=1)))
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


class LandmarkCache:
    """Decoded, cut once (uint8), kept in one safetensors file per list and box rule.

    ctx: CONTEXT x CONTEXT crops of the square around the rule and the central box, each
    grown 2x (what training augments from), with
    ctx_points and ctx_boxes ([rule box, central box] in ctx pixels); crop: the plain
    size x size network crop of the rule box and crop_inv (crop -> image pixels); points:
    ground truth in image pixels; found: Haar found a face (else the central box); box_ok:
    the rule box's crop holds all 5 points (training uses the central box where it does not:
    a Haar detection of something else teaches nothing but noise)."""

    def __init__(self, tensors, meta):
        self.__dict__.update(tensors)
        self.meta = meta
        self.paths = json.loads(meta["paths"])
        self.skipped = json.loads(meta["skipped"])
        self.detector = meta["detector"]

    def __len__(self):
        return len(self.paths)


def build_cache(data_dir, list_file, cache_dir, net_cfg, detector, drop_bad=True, progress=True,
                log=print):
    """The LandmarkCache of data_dir/list_file; reused while the list, the rule and the crop
    are unchanged. detector: "haar" or "central" (resolved)."""
    data_dir = os.fspath(data_dir)
    rows = read_mtfl(data_dir, list_file)
    key = json.dumps(dict(format=CACHE_FORMAT, list=_sha256(os.path.join(data_dir, list_file)),
                          detector=detector, central=CENTRAL_BOX, net=net_cfg.to_dict(),
                          context=CONTEXT, drop_bad=drop_bad,
                          opencv=cv2.__version__ if detector == "haar" else None),
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{os.path.splitext(list_file)[0]}-{detector}-{digest}"
                                   f".safetensors")
    if os.path.exists(path):
        tensors, meta = safetensors.load(path)
        if meta.get("key") == key:
            return LandmarkCache(tensors, meta)
    s = net_cfg.size
    keep, skipped, dropped = [], [], 0
    out = {k: [] for k in ("ctx", "ctx_points", "ctx_boxes", "found", "box_ok", "crop",
                           "crop_inv", "points")}
    bar = Progress(len(rows), f"caching {list_file} ({detector} boxes)", enabled=progress)
    for rel, pts in rows:
        bar.update(1)
        gray = cv2.imread(os.path.join(data_dir, rel), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            skipped.append(rel)
            continue
        if drop_bad and known_bad_annotation(rel, pts, gray.shape):
            dropped += 1
            continue
        box, found = face_box(gray, detector)
        cbox = central_box(gray.shape)
        mc = crop_matrix(context_box(box, cbox), CONTEXT)
        boxes = []
        for b in (box, cbox):  # axis-aligned: a box maps to a box
            (x0, y0), (x1, y1) = apply_affine(mc, [[b[0] - 0.5, b[1] - 0.5],
                                                    [b[0] + b[2] - 0.5, b[1] + b[3] - 0.5]])
            boxes.append([x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0])
        m = crop_matrix(box, s, net_cfg.box_scale)
        u = (apply_affine(m, pts) + 0.5) / s
        out["box_ok"].append(bool(np.all((u >= 0) & (u <= 1))))
        out["ctx"].append(warp(gray, mc, CONTEXT))
        out["ctx_points"].append(apply_affine(mc, pts))
        out["ctx_boxes"].append(boxes)
        out["found"].append(found)
        out["crop"].append(warp(gray, m, s))
        out["crop_inv"].append(invert_affine(m))
        out["points"].append(pts)
        keep.append(rel)
    bar.close()
    if not keep:
        raise ValueError(f"no readable images in {os.path.join(data_dir, list_file)}")
    dt = {"ctx": np.uint8, "ctx_points": np.float32, "ctx_boxes": np.float32, "found": np.uint8,
          "box_ok": np.uint8, "crop": np.uint8, "crop_inv": np.float64, "points": np.float64}
    tensors = {k: np.asarray(v, dt[k]) for k, v in out.items()}
    meta = dict(format=CACHE_FORMAT, key=key, detector=detector, paths=json.dumps(keep),
                skipped=json.dumps(skipped), dropped_bad=str(dropped), list_file=list_file)
    safetensors.save(path, tensors, meta)
    log(f"cached {len(keep)} images of {list_file} ({detector} boxes, Haar found "
        f"{int(tensors['found'].sum())}, {int((tensors['found'] & (1 - tensors['box_ok'])).sum())} "
        f"of them not around the points; {dropped} mis-annotated left out, {len(skipped)} "
        f"unreadable) in {path}")
    return LandmarkCache(tensors, meta)


def make_batch(cache, idx, rng, cfg, net_cfg, out=None):
    """Augmented float32 batch and targets (N x 10 in [0, 1]) for cache rows idx."""
    n, s = len(idx), net_cfg.size
    flips = rng.random(n) < 0.5 if cfg.flip else np.zeros(n, bool)
    central = (rng.random(n) < cfg.fallback_share) | (cache.box_ok[idx] == 0)
    shifts = rng.uniform(-cfg.shift, cfg.shift, (n, 2))
    scales = np.exp(rng.uniform(-1.0, 1.0, n)
                    * np.where(central, math.log1p(cfg.central_scale), math.log1p(cfg.scale)))
    angles = rng.uniform(-cfg.rotate, cfg.rotate, n)
    crops = np.empty((n, s, s), np.uint8)
    targets = np.empty((n, len(POINTS), 2), np.float64)
    for j, i in enumerate(idx):
        box = cache.ctx_boxes[i, 1 if central[j] else 0]
        m = crop_matrix(box, s, net_cfg.box_scale, shifts[j], scales[j], angles[j], flips[j])
        crops[j] = warp(cache.ctx[i], m, s)
        t = (apply_affine(m, cache.ctx_points[i]) + 0.5) / s
        targets[j] = t[list(FLIP_ORDER)] if flips[j] else t
    x = standardise(crops)
    if out is not None:
        out[...] = x
        x = out
    return x, np.ascontiguousarray(targets.reshape(n, -1), np.float32)


def nme(pred, gt):
    """Per-image, per-point errors / inter-ocular distance: (N x 5)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    iod = np.linalg.norm(gt[:, 1] - gt[:, 0], axis=1)
    if np.any(iod <= 0):
        raise ValueError("ground truth with coincident eyes: no inter-ocular distance")
    return np.linalg.norm(pred - gt, axis=2) / iod[:, None]


def summarise(errors):
    """{nme, per_point, failure_rate, point_failure_rate, n} of N x 5 normalised errors."""
    e = np.asarray(errors, np.float64).reshape(-1, len(POINTS))
    if len(e) == 0:
        return dict(n=0, nme=None, per_point=None, failure_rate=None, point_failure_rate=None)
    return dict(n=int(len(e)), nme=float(e.mean()),
                per_point={p: float(v) for p, v in zip(POINTS, e.mean(0))},
                failure_rate=float((e.mean(1) > FAILURE).mean()),
                point_failure_rate={p: float(v) for p, v in zip(POINTS, (e > FAILURE).mean(0))})


# -- the model: load, predict ----------------------------------------------------------------
class LandmarkModel:
    """flip_average: predict on the crop and on its mirror image (points mapped back,
    left/right swapped) and average the two; training's validation does not.
    cascade: the refinement levels (landmark_cascade.LandmarkCascade) that
    `predict_landmarks` applies after level 1, or None (level 1 alone)."""

    def __init__(self, params, cfg, meta=None, backend="cpu", flip_average=True, cascade=None):
        from .backends import get_backend
        self.params, self.cfg, self.meta = params, cfg, dict(meta or {})
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
    from .landmark_cascade import cascade_from
    from .backends import get_backend
    if levels is not None and (int(levels) != levels or levels < 1):
        raise ValueError(f"levels must be a positive whole number, got {levels!r}")
    be = get_backend(backend) if isinstance(backend, str) else backend
    path = os.fspath(path) if path is not None else DEFAULT_MODEL
    if not os.path.isfile(path):
        raise ValueError(f"landmark model {path!r} not found")
    tensors, meta = safetensors.load(path)
    cascade = None
    if meta.get("format") == CHECKPOINT_FORMAT:
        tensors = LandmarkTrainer.model_params(dict(
            params={k[6:]: v for k, v in tensors.items() if k.startswith("param/")},
            target_mean=tensors["target/mean"], target_std=tensors["target/std"]))
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
    return LandmarkModel(params, cfg, meta, be, flip_average, cascade)


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


# -- evaluation ------------------------------------------------------------------------------
def evaluate(model, data_dir, list_file=TEST_LIST, detector="auto", limit=None, progress=False):
    """NME and failure rate of model on the first `limit` images of an MTFL list, boxes by
    the rule ("auto": Haar where available, else the central box). Returns a dict with nme,
    per_point, failure_rate, point_failure_rate, n, the detector, how often Haar found the
    face, and the per-image errors."""
    detector = resolve_detector(detector)
    rows = read_mtfl(data_dir, list_file)[:limit]
    errs, found, skipped = [], 0, []
    bar = Progress(len(rows), f"evaluating on {list_file}", enabled=progress)
    for rel, pts in rows:
        bar.update(1)
        gray = cv2.imread(os.path.join(os.fspath(data_dir), rel), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            skipped.append(rel)
            continue
        box, hit = face_box(gray, detector)
        found += hit
        errs.append(nme(predict_landmarks(model, gray, box), pts[None])[0])
    bar.close()
    res = summarise(errs)
    res.update(detector=detector, list_file=list_file, haar_found=found if detector == "haar"
               else None, skipped=skipped, errors=np.asarray(errs).tolist())
    return res


def evaluate_yunet(data_dir, onnx_path, list_file=TEST_LIST, limit=None, score_threshold=0.9):
    """YuNet (cv2.FaceDetectorYN) on the same images, for comparison only (the pipeline
    does not depend on it). Rule: the highest-scoring face at the image's own size; if none,
    on the image upscaled 2x; if none, on that padded by 40 px (border replicated). Images
    with no face at all are misses: left out of the NME, counted as failures in
    failure_rate_with_misses. YuNet's points are right eye, left eye, nose, right and left
    mouth corner of the person, i.e. image-left first: the same order as POINTS."""
    rows = read_mtfl(data_dir, list_file)[:limit]
    det = cv2.FaceDetectorYN.create(os.fspath(onnx_path), "", (80, 80), score_threshold, 0.3,
                                    5000)
    errs, how, missed = [], {"native": 0, "upscaled": 0, "padded": 0}, []
    for rel, pts in rows:
        img = cv2.imread(os.path.join(os.fspath(data_dir), rel))
        if img is None:
            missed.append(rel)
            continue
        tries = [("native", img, 1.0, 0)]
        up = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        tries.append(("upscaled", up, 2.0, 0))
        tries.append(("padded", cv2.copyMakeBorder(up, 40, 40, 40, 40, cv2.BORDER_REPLICATE),
                      2.0, 40))
        for name, im, k, pad in tries:
            det.setInputSize((im.shape[1], im.shape[0]))
            _, faces = det.detect(im)
            if faces is not None and len(faces):
                f = faces[np.argmax(faces[:, -1])]
                p = (f[4:14].reshape(5, 2).astype(np.float64) - pad + 0.5) / k - 0.5
                errs.append(nme(p[None], pts[None])[0])
                how[name] += 1
                break
        else:
            missed.append(rel)
    res = summarise(errs)
    n = len(rows)
    res.update(images=n, detected=len(errs), detection_rate=len(errs) / n, found_by=how,
               missed=missed, errors=np.asarray(errs).tolist(),
               failure_rate_with_misses=float(sum(np.mean(e) > FAILURE for e in errs)
                                              + len(missed)) / n,
               score_threshold=score_threshold)
    return res


# -- training --------------------------------------------------------------------------------
@dataclass
class LandmarkTrainConfig:
    epochs: int = 120
    batch: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    shift: float = 0.05           # box centre shift, uniform in +- this fraction of the box
    scale: float = 0.1            # box scale, log-uniform in [1 / (1 + s), 1 + s]
    rotate: float = 10.0          # degrees, uniform in +- this
    fallback_share: float = 0.25  # samples that use the central box instead of Haar's
    central_scale: float = 0.4    # their scale jitter, log-uniform in [1 / (1 + s), 1 + s]
    val_fraction: float = 0.05
    target_stats: str = "crops"   # standardise targets by the plain crops' mean/std (the
    #                               shipped model), or "augmented": by augmented samples'
    detector: str = "haar"        # the resolved box rule
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch < 1:
            raise ValueError(f"epochs and batch must be at least 1, got {self.epochs}, "
                             f"{self.batch}")
        if not 0.0 <= self.fallback_share <= 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("fallback_share must be in [0, 1] and val_fraction in [0, 1)")
        if self.target_stats not in ("augmented", "crops"):
            raise ValueError(f"target_stats must be augmented or crops, got "
                             f"{self.target_stats!r}")
        if self.detector not in ("haar", "central"):
            raise ValueError(f"detector must be haar or central, got {self.detector!r}")


def lr_at(cfg, step, total):
    return cosine_lr(cfg.lr, step, total)


class LandmarkTrainer:
    def __init__(self, cache, run_dir, cfg, backend, net_cfg=None, log=print, progress=True):
        self.cache, self.run_dir, self.cfg, self.be = cache, os.fspath(run_dir), cfg, backend
        self.net_cfg = net_cfg or LandmarkNetConfig()
        if cache.crop.shape[1:] != (self.net_cfg.size, self.net_cfg.size):
            raise ValueError(f"the cache holds {cache.crop.shape[1:]} crops, the network "
                             f"takes {self.net_cfg.size}x{self.net_cfg.size}")
        self.net = LandmarkNet(self.net_cfg, backend)
        if hasattr(backend, "keep_freed_memory"):
            backend.keep_freed_memory()
        self.log, self.progress = log, progress
        n = len(cache)
        order = np.random.default_rng([cfg.seed, 2**31]).permutation(n)
        n_val = int(round(cfg.val_fraction * n))
        self.val_idx, self.train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        if len(self.train_idx) < cfg.batch:
            raise ValueError(f"{len(self.train_idx)} training images, fewer than a batch "
                             f"({cfg.batch})")
        self.steps_per_epoch = len(self.train_idx) // cfg.batch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        os.makedirs(self.run_dir, exist_ok=True)

    def fresh_state(self):
        s = self.net_cfg.size
        t = np.stack([apply_affine(crop_matrix(self.cache.ctx_boxes[i, 0 if self.cache.box_ok[i]
                                                                    else 1], s,
                                               self.net_cfg.box_scale),
                                   self.cache.ctx_points[i]) for i in self.train_idx])
        t = (t + 0.5) / s
        if self.cfg.target_stats == "augmented":  # what the network is asked to output
            rng = np.random.default_rng([self.cfg.seed, 2**31 + 2])
            idx = np.sort(rng.choice(self.train_idx, min(4096, len(self.train_idx)),
                                     replace=False))
            t = make_batch(self.cache, idx, rng, self.cfg, self.net_cfg)[1].reshape(-1, 5, 2)
        mean = 0.5 * (t.mean(0) + flip_points(t.mean(0))) if self.cfg.flip else t.mean(0)
        std = float(np.sqrt(np.mean((t - mean) ** 2)))
        params = init_params(self.net_cfg, self.cfg.seed)
        probe = np.sort(np.random.default_rng([self.cfg.seed, 2**31 + 1]).choice(
            self.train_idx, min(256, len(self.train_idx)), replace=False))
        unit_rms_init(self.net, params, standardise(self.cache.crop[probe]))
        return dict(params=params, velocity={k: np.zeros_like(v) for k, v in params.items()},
                    target_mean=mean.reshape(-1).astype(np.float32),
                    target_std=np.float32([std]), epoch=0, best_epoch=-1,
                    best_val=float("inf"), history=[])

    @staticmethod
    def model_params(state):
        """The trained parameters with the target standardisation folded into the output
        layer: the network then outputs the normalised coordinates themselves."""
        p = dict(state["params"])
        std, mean = state["target_std"][0], state["target_mean"]
        p["out.w"] = np.ascontiguousarray(p["out.w"] * std, np.float32)
        p["out.b"] = np.ascontiguousarray(mean + p["out.b"] * std, np.float32)
        return p

    def _meta(self, state):
        return {"format": CHECKPOINT_FORMAT, "net": json.dumps(self.net_cfg.to_dict(),
                                                               sort_keys=True),
                "train": json.dumps(asdict(self.cfg), sort_keys=True),
                "data": self.cache.meta.get("list_file", ""), "cache_key": self.cache.meta["key"],
                "epoch": str(state["epoch"]), "best_epoch": str(state["best_epoch"]),
                "best_val": repr(state["best_val"])}

    def save_checkpoint(self, state):
        save_checkpoint(os.path.join(self.run_dir, CHECKPOINT), state["params"],
                        state["velocity"], {"target/mean": state["target_mean"],
                                            "target/std": state["target_std"]},
                        self._meta(state))

    def load_checkpoint(self):
        path = os.path.join(self.run_dir, CHECKPOINT)
        params, velocity, tensors, meta = load_checkpoint(
            path, CHECKPOINT_FORMAT, self.net_cfg.to_dict(), asdict(self.cfg),
            "landmark training")
        if meta.get("cache_key") != self.cache.meta["key"]:
            raise ValueError(f"cannot resume {path}: it was trained on other data or boxes")
        epoch = int(meta["epoch"])
        return dict(params=params, velocity=velocity, target_mean=tensors["target/mean"],
                    target_std=tensors["target/std"], epoch=epoch,
                    best_epoch=int(meta["best_epoch"]), best_val=float(meta["best_val"]),
                    history=read_log(os.path.join(self.run_dir, LOG), epoch))

    def step(self, state, epoch, step, xbuf):
        cfg, be, p = self.cfg, self.be, state["params"]
        rng = np.random.default_rng([cfg.seed, epoch, step])
        idx = rng.choice(self.train_idx, cfg.batch, replace=False)
        x, target = make_batch(self.cache, idx, rng, cfg, self.net_cfg, out=xbuf)
        target = (target - state["target_mean"]) / state["target_std"]  # standardised
        acts = self.net.forward(p, x)
        loss, dout = be.regression_loss(acts["out"], target)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        self.net.backward(p, acts, dout, grads)
        lr = lr_at(cfg, step + epoch * self.steps_per_epoch, self.total_steps)
        sgd_step(be, p, grads, state["velocity"], lr, cfg.momentum, cfg.weight_decay)
        return float(loss)

    def validate(self, params, idx=None):
        idx = self.val_idx if idx is None else idx
        if len(idx) == 0:
            return None
        model = LandmarkModel(params, self.net_cfg, backend=self.be, flip_average=False)
        pred = model.predict_crops(self.cache.crop[idx], self.cache.crop_inv[idx])
        return summarise(nme(pred, self.cache.points[idx]))

    def run(self, resume=False, on_epoch_end=None):
        state = start(self.run_dir, CHECKPOINT, resume, self.load_checkpoint, self.fresh_state,
                      self.log)
        self._write_log(state["history"])
        cfg = self.cfg
        xbuf = np.empty((cfg.batch, 1, self.net_cfg.size, self.net_cfg.size), np.float32)
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            total = 0.0
            bar = Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=self.progress)
            for s in range(self.steps_per_epoch):
                loss = self.step(state, epoch, s, xbuf)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1} step {s}: "
                                             f"lower the learning rate")
                total += loss
                bar.update(1, f"loss {total / (s + 1):.5f}")
            bar.close()
            secs = time.perf_counter() - t0
            val = self.validate(self.model_params(state))
            k = self.steps_per_epoch
            row = dict(epoch=epoch + 1, steps=k, loss=total / k,
                       val_nme=val["nme"] if val else None,
                       val_failure_rate=val["failure_rate"] if val else None,
                       lr=lr_at(cfg, (epoch + 1) * k, self.total_steps), seconds=secs,
                       images_per_s=k * cfg.batch / secs)
            state["epoch"] = epoch + 1
            state["history"].append(row)
            score = row["val_nme"] if val else row["loss"]
            if score < state["best_val"]:
                state["best_epoch"], state["best_val"] = epoch + 1, score
                self.save_model(state, os.path.join(self.run_dir, BEST))
            self.save_checkpoint(state)
            self._write_log(state["history"])
            self.log(f"epoch {epoch + 1}: loss {row['loss']:.5f} val NME "
                     f"{row['val_nme'] if val is None else round(100 * row['val_nme'], 2)}% "
                     f"({row['images_per_s']:.0f} img/s)")
            if on_epoch_end:
                on_epoch_end(state)
        plot_history(state["history"], os.path.join(self.run_dir, PLOT))
        return state

    def save_model(self, state, path, extra=None):
        meta = dict(train=json.dumps(asdict(self.cfg), sort_keys=True),
                    detector=self.cfg.detector, epoch=state["epoch"],
                    cache_key=self.cache.meta["key"], **(extra or {}))
        save_model(path, self.model_params(state), self.net_cfg, meta)

    def _write_log(self, history):
        write_log(os.path.join(self.run_dir, LOG), history)


def plot_history(history, path):
    img = np.full((360, 900, 3), 255, np.uint8)
    get = lambda key: [h.get(key) for h in history]  # noqa: E731
    _panel(img, 60, 30, 360, 290, "training loss per epoch", [("train", get("loss"))])
    _panel(img, 510, 30, 360, 290, "validation NME per epoch", [("val NME", get("val_nme"))])
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write the plot to {path}")


def train_landmarks_main(data_dir, out_dir, epochs=120, seed=0, batch=64, lr=0.02,
                         detector="auto", resume=False, cache_dir=None, backend="cpu",
                         progress=True, log=print, command=None, evaluate_test=True,
                         **augment):
    """`deepid2 train-landmarks --data DIR --out DIR`: train F1 on DIR/new_training.txt
    (MTFL), evaluate on DIR/new_testing.txt, write OUT/landmarks.safetensors (the best
    validation epoch, with its config, command and test results in its metadata), OUT/eval.json,
    checkpoint.safetensors (resumable), log.jsonl and curves.png. Returns a summary dict."""
    from .backends import get_backend
    be = get_backend(backend) if isinstance(backend, str) else backend
    det = resolve_detector(detector)
    if detector == "auto" and det == "central":
        log(f"OpenCV {cv2.__version__} has no Haar cascade here: training on the central box "
            f"only (detector=central)")
    cfg = LandmarkTrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed, detector=det,
                              **{k: v for k, v in augment.items() if v is not None})
    net_cfg = LandmarkNetConfig()
    t0 = time.perf_counter()
    cache = build_cache(data_dir, TRAIN_LIST, cache_dir or os.path.join(out_dir, "cache"),
                        net_cfg, det, progress=progress, log=log)
    t_cache = time.perf_counter() - t0
    trainer = LandmarkTrainer(cache, out_dir, cfg, be, net_cfg, log=log, progress=progress)
    t1 = time.perf_counter()
    state = trainer.run(resume=resume)
    t_train = time.perf_counter() - t1
    best = load_landmark_model(os.path.join(out_dir, BEST), backend=be)
    extra = dict(command=command or "train_landmarks_main(" + ", ".join(
        f"{k}={v!r}" for k, v in dict(data_dir=os.fspath(data_dir), out_dir=os.fspath(out_dir),
                                      epochs=epochs, seed=seed, batch=batch, lr=lr,
                                      detector=detector, **augment).items()) + ")",
                 train_list_sha256=_sha256(os.path.join(data_dir, TRAIN_LIST)),
                 train_images=len(trainer.train_idx), val_images=len(trainer.val_idx),
                 haar_found=int(cache.found.sum()), dropped_bad=cache.meta["dropped_bad"],
                 best_epoch=state["best_epoch"], val_nme=state["best_val"],
                 train_seconds=round(t_train, 1), cache_seconds=round(t_cache, 1),
                 opencv=cv2.__version__, threads=be.max_threads() if hasattr(be, "max_threads")
                 else None, haar_engine=haar_detector().engine if det == "haar" else None)
    summary = dict(extra)
    if evaluate_test and os.path.isfile(os.path.join(data_dir, TEST_LIST)):
        res = evaluate(best, data_dir, TEST_LIST, detector=det, progress=progress)
        with open(os.path.join(out_dir, EVAL), "w") as f:
            json.dump(res, f, indent=1)
        extra["test"] = json.dumps({k: v for k, v in res.items()
                                    if k not in ("errors", "skipped")}, sort_keys=True)
        summary["test"] = res
        log(f"test ({res['n']} images, {det} boxes, Haar found {res['haar_found']}): NME "
            f"{100 * res['nme']:.2f}%, failure rate {100 * res['failure_rate']:.2f}%")
    meta = dict(train=json.dumps(asdict(cfg), sort_keys=True), detector=det,
                epoch=state["best_epoch"], cache_key=cache.meta["key"], **extra)
    save_model(os.path.join(out_dir, FINAL), best.params, net_cfg, meta)
    return summary


def cascade_arguments(c):
    """The options of `deepid2 train-landmark-cascade` (and of `python -m
    deepid2_core.landmarks cascade`)."""
    c.add_argument("--data", required=True,
                   help="folder with new_training.txt / new_testing.txt (MTFL)")
    c.add_argument("--out", required=True)
    c.add_argument("--level1", help="the level-1 model (default: the shipped one); its "
                   "held-out split is kept")
    c.add_argument("--levels", type=int, default=3, choices=[2, 3],
                   help="the last level to train: 3 (levels 2 and 3, default) or 2")
    c.add_argument("--epochs", type=int, default=30)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch", type=int, default=64)
    c.add_argument("--lr", type=float, default=0.02)
    c.add_argument("--displace", type=float, nargs="+", metavar="S",
                   help="training displacement std of each level, in units of r "
                        "(default 0.12 for level 2, 0.06 for level 3)")
    c.add_argument("--scale", type=float, help="frame scale jitter (log-uniform 1/(1+s)..1+s)")
    c.add_argument("--rotate", type=float, help="frame rotation jitter in degrees")
    c.add_argument("--cache", help="where level 1's training cache is kept (default "
                   "OUT/cache)")
    c.add_argument("--resume", action="store_true")


def cascade_command(a, command):
    from .landmark_cascade import train_cascade_main
    levels = list(range(2, a.levels + 1))
    if a.displace and len(a.displace) != len(levels):
        raise ValueError(f"--displace needs one value per level ({len(levels)})")
    displace = dict(zip(levels, a.displace)) if a.displace else None
    try:
        s = train_cascade_main(a.data, a.out, level1=a.level1, levels=levels, epochs=a.epochs,
                               seed=a.seed, batch=a.batch, lr=a.lr, displace=displace,
                               scale=a.scale, rotate=a.rotate, resume=a.resume,
                               cache_dir=a.cache, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume", file=sys.stderr)
        return 130
    line = (f"model {os.path.join(a.out, FINAL)}; held-out NME " + " -> ".join(
        f"{100 * r['nme']:.2f}%" for r in s["val"]))
    if "test" in s:
        line += f"; test NME {100 * s['test']['nme']:.2f}%"
    print(line)
    return 0


def main(argv=None):
    """python -m deepid2_core.landmarks train|cascade|eval ... (until the CLI wires it)."""
    p = argparse.ArgumentParser(prog="python -m deepid2_core.landmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=120)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.02)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--detector", default="auto", choices=["auto", "haar", "central"])
    t.add_argument("--cache")
    t.add_argument("--resume", action="store_true")
    for k in ("shift", "scale", "rotate", "fallback_share", "central_scale"):
        t.add_argument("--" + k.replace("_", "-"), type=float)
    t.add_argument("--target-stats", choices=["crops", "augmented"])
    c = sub.add_parser("cascade", help="train the refinement levels on top of a level-1 model")
    cascade_arguments(c)
    e = sub.add_parser("eval")
    e.add_argument("--data", required=True)
    e.add_argument("--model")
    e.add_argument("--detector", default="auto", choices=["auto", "haar", "central"])
    e.add_argument("--limit", type=int)
    e.add_argument("--yunet", help="also evaluate this YuNet ONNX model on the same images "
                   "(and ours on the images YuNet finds)")
    e.add_argument("--no-flip-average", action="store_true",
                   help="one pass on the crop, not the mean of the crop and its mirror")
    e.add_argument("--levels", type=int, help="use the first N levels of the model's cascade "
                   "(1: level 1 alone; default: all it holds)")
    e.add_argument("--json")
    a = p.parse_args(argv)
    if a.cmd == "cascade":
        return cascade_command(a, "python -m deepid2_core.landmarks " + " ".join(
            shlex.quote(v) for v in (argv or sys.argv[1:])))
    if a.cmd == "train":
        cmd = "python -m deepid2_core.landmarks " + " ".join(shlex.quote(v) for v in
                                                              (argv or sys.argv[1:]))
        s = train_landmarks_main(a.data, a.out, epochs=a.epochs, seed=a.seed, batch=a.batch,
                                 lr=a.lr, detector=a.detector, resume=a.resume,
                                 cache_dir=a.cache, command=cmd,
                                 **{k: getattr(a, k) for k in ("shift", "scale", "rotate",
                                                               "fallback_share",
                                                               "central_scale",
                                                               "target_stats")})
        print(json.dumps({k: v for k, v in s.items() if k != "test"}, indent=1))
        return 0
    model = load_landmark_model(a.model, flip_average=not a.no_flip_average, levels=a.levels)
    res = {"ours": evaluate(model, a.data, detector=a.detector, limit=a.limit, progress=True)}
    if a.yunet:
        res["yunet"] = evaluate_yunet(a.data, a.yunet, limit=a.limit)
        # ours on the same images as YuNet's figure: those it found a face in
        missed = set(res["yunet"]["missed"]) | set(res["ours"]["skipped"])
        rels = [rel for rel, _ in read_mtfl(a.data, TEST_LIST)[:a.limit]
                if rel not in res["ours"]["skipped"]]
        res["ours_on_yunet_images"] = summarise(
            [e for rel, e in zip(rels, res["ours"]["errors"]) if rel not in missed])
    for name, r in res.items():
        print(name, json.dumps({k: v for k, v in r.items()
                                if k not in ("errors", "missed", "skipped")}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
