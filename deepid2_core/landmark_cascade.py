"""The refinement levels of the facial point cascade (Sun, Wang, Tang, CVPR 2013,
levels 2 and 3) on top of the level-1 network F1 of `deepid2_core.landmarks`.

Each level moves every one of the 5 points by what small ConvNets see in a patch
centred at the previous level's estimate of that point:

  input  15x15 grey patch (resampled), standardised (zero mean, unit std)
  conv1  4x4, 20 maps, ReLU     -> max-pool 2   (12 -> 6)
  conv2  3x3, 40 maps, ReLU     -> max-pool 2   (4 -> 2)
  fc     60, ReLU
  out    2, linear              = the true point's offset from the patch centre,
                                  in patch sides (x, y of the patch frame)

(the paper's level-2/3 net with ReLU for |tanh|, on the engine's lsconv, maxpool
and dense ops). A level has `len(patches)` nets per point, one per patch size, and
the point moves by the mean of their answers. The defaults (DEFAULT_LEVELS,
DEFAULT_DISPLACE; chosen on level 1's held-out training images, never on the test
list): level 2 two nets per point, patches of 1.25 r and 1.45 r, trained with
displacements of std 0.12 r; level 3 one net per point (the paper has two: one keeps
the model file under 2 MB), patch 0.9 r, std 0.06 r.

The patch frame of a level follows the estimate it refines (all points of a face
at once, from the same estimate): its scale is r, the root-mean-square distance of
the five points from their mean (about 0.64 of the inter-ocular distance on MTFL's
faces, and less sensitive to yaw than the inter-ocular distance itself), and, with
`rotate_frame`, it is turned by the angle of the line from the left to the right
eye, so that patches come upright. A patch of side `patches[j] * r` image pixels is
resampled to `size x size` (bilinear, border replicated; pixel centres at integer
coordinates, as in OpenCV).

Training (the paper's sampling): the frame and patch centres of a sample come from
a simulated estimate, the ground truth with every coordinate of every point moved
by a normal draw of std `displace * r` (clipped to +- `max_displace * r`); the
frame of that estimate is then turned by a uniform angle in +- `rotate` degrees and
its r scaled log-uniformly by 1 / (1 + scale) .. 1 + scale; half of the samples are
the mirror image (the left and right points swap, so each eye and mouth-corner net
sees both sides). Loss: regression_loss on the offsets standardised by their
std over 4,096 samples (folded into the output layer of the saved nets). Momentum
SGD, weight decay on weights, cosine learning rate; the batch of step s of epoch e
of level l is drawn from default_rng([seed, l, e, s]) and the ops are
deterministic, so a run is a pure function of data, config and seed; a checkpoint
after every epoch resumes exactly. Levels are trained one after the other, each
on the ground truth (not on the previous level's output), with the same split of
the training list as level 1 (its held-out images measure every level: their
starting points are level 1's flip-averaged predictions on Haar boxes); the saved
nets are those of the epoch with the lowest held-out NME.

Prediction (`LandmarkCascade.refine`): level by level, with `flip_average` the
mean of the refinement of the image and of its mirror image (points mapped back,
left/right swapped).

Model file: the level-1 model file (landmarks.MODEL_FORMAT) with the nets added as
tensors levelL/POINT/J/NAME (J: the patch size's index) and the levels' configs in
its metadata's "cascade"; `cascade_*` metadata records the command, training
configs, held-out and test results. `deepid2 train-landmark-cascade --data DIR --out
OUT` writes one (`train_cascade_main`).
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .loop import cosine_lr, load_checkpoint, read_log, save_checkpoint, sgd_step, start, \
    write_log
from .landmarks import init_weights, standardise
from .landmarks import unit_rms_init as rescale_to_unit_rms
from .progress import Progress

POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
FLIP_ORDER = (1, 0, 2, 4, 3)
CASCADE_FORMAT = "deepid2-landmark-cascade/1"
CHECKPOINT_FORMAT = "deepid2-landmark-cascade-checkpoint/1"
MIN_RADIUS = 1.0   # pixels: the frame of a degenerate estimate (all points together)


# -- the refinement network ----------------------------------------------------------------
@dataclass(frozen=True)
class RefineLevelConfig:
    """One level: `len(patches)` nets per point, patch sides in units of r."""
    patches: tuple = (1.25, 1.45)
    size: int = 15
    conv1: int = 20
    conv2: int = 40
    hidden: int = 60
    rotate_frame: bool = True

    def __post_init__(self):
        object.__setattr__(self, "patches", tuple(float(p) for p in self.patches))
        if not self.patches or not all(p > 0 for p in self.patches):
            raise ValueError(f"patches must be positive patch sides, got {self.patches}")
        if min(self.conv1, self.conv2, self.hidden) < 1:
            raise ValueError("conv1, conv2 and hidden must be at least 1")
        refine_shapes(self)  # raises for sizes too small

    def to_dict(self):
        d = asdict(self)
        d["patches"] = list(self.patches)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "patches": tuple(d["patches"])})


def refine_shapes(cfg):
    """(conv1 output, pool1 output, conv2 output, pool2 output) sizes of a size x size
    input."""
    c1 = cfg.size - 3
    p1 = c1 // 2
    c2 = p1 - 2
    p2 = c2 // 2
    if c1 < 2 or p2 < 1:
        raise ValueError(f"patch size {cfg.size} is too small: it needs at least 10")
    return c1, p1, c2, p2


def refine_param_shapes(cfg):
    _, _, _, p2 = refine_shapes(cfg)
    return {"conv1.w": (1, 1, cfg.conv1, 1, 4, 4), "conv1.b": (1, 1, cfg.conv1),
            "conv2.w": (1, 1, cfg.conv2, cfg.conv1, 3, 3), "conv2.b": (1, 1, cfg.conv2),
            "fc.w": (cfg.conv2 * p2 * p2, cfg.hidden), "fc.b": (cfg.hidden,),
            "out.w": (cfg.hidden, 2), "out.b": (2,)}


def init_refine_params(cfg, rng):
    """landmarks.init_weights of a refinement net."""
    return init_weights(refine_param_shapes(cfg), rng)


class RefineNet:
    """Forward and backward of one refinement net on a backend."""

    def __init__(self, cfg, backend):
        self.cfg, self.be = cfg, backend
        self.c1, _, self.c2, _ = refine_shapes(cfg)

    def forward(self, params, x):
        be, acts = self.be, {"x": x}
        h = be.lsconv_forward(x, params["conv1.w"], params["conv1.b"], (self.c1, self.c1))
        acts["conv1"] = h
        h, acts["pool1.argmax"] = be.maxpool_forward(h, 2)
        acts["pool1"] = h
        h = be.lsconv_forward(h, params["conv2.w"], params["conv2.b"], (self.c2, self.c2))
        acts["conv2"] = h
        h, acts["pool2.argmax"] = be.maxpool_forward(h, 2)
        acts["pool2"] = h
        acts["fc"] = be.dense_forward(h, params["fc.w"], params["fc.b"])
        acts["out"] = be.dense_forward(acts["fc"], params["out.w"], params["out.b"], relu=False)
        return acts

    def backward(self, params, acts, dout, grads):
        """Adds d loss / d params into grads, given dout = d loss / d out."""
        be = self.be
        dfc, _, _ = be.dense_backward(acts["fc"], params["out.w"], None, dout, relu=False,
                                      dw=grads["out.w"], db=grads["out.b"])
        dh, _, _ = be.dense_backward(acts["pool2"], params["fc.w"], acts["fc"], dfc[0],
                                     dw=grads["fc.w"], db=grads["fc.b"])
        dh = be.maxpool_backward(dh[0], acts["pool2.argmax"], (self.c2, self.c2), 2)
        dx, _, _ = be.lsconv_backward(acts["pool1"], params["conv2.w"], acts["conv2"], dh,
                                      (self.c2, self.c2), dw=grads["conv2.w"],
                                      db=grads["conv2.b"])
        dh = be.maxpool_backward(dx, acts["pool1.argmax"], (self.c1, self.c1), 2)
        be.lsconv_backward(acts["x"], params["conv1.w"], acts["conv1"], dh, (self.c1, self.c1),
                           need_dx=False, dw=grads["conv1.w"], db=grads["conv1.b"])
        return grads


def unit_rms_init(net, params, x):
    """conv1, conv2, fc rescaled in turn to an output rms of 1 on x (landmarks.unit_rms_init)."""
    return rescale_to_unit_rms(net, params, x, ("conv1", "conv2", "fc"))


# -- geometry: frames and patches ----------------------------------------------------------
def mirror_points(pts, width):
    """Points (..., 5, 2) of an image of this width -> those of its mirror image
    (x -> width - 1 - x; left and right eye and mouth corner swap)."""
    pts = np.asarray(pts, np.float64)
    out = pts[..., list(FLIP_ORDER), :].copy()
    out[..., 0] = (np.asarray(width, np.float64)[..., None] if np.ndim(width) else width) \
        - 1.0 - out[..., 0]
    return out


def shape_frame(pts, rotate_frame=True):
    """(angle in radians, r) of 5-point estimates (..., 5, 2): the angle of the line from
    the left to the right eye (0 without rotate_frame) and the RMS distance of the points
    from their mean (at least MIN_RADIUS)."""
    pts = np.asarray(pts, np.float64)
    d = pts[..., 1, :] - pts[..., 0, :]
    angle = np.arctan2(d[..., 1], d[..., 0]) if rotate_frame else np.zeros(pts.shape[:-2])
    r = np.sqrt(np.mean(np.sum((pts - pts.mean(-2, keepdims=True)) ** 2, -1), -1))
    return angle, np.maximum(r, MIN_RADIUS)


def patch_grid(centre, angle, side, size):
    """Image coordinates (x, y), each N x size x size, of the pixel centres of N patches:
    squares of `side` image pixels about `centre` (N x 2) turned by `angle` (N, radians;
    the patch's x axis points along (cos, sin))."""
    centre = np.asarray(centre, np.float64).reshape(-1, 2)
    g = (np.arange(size) - (size - 1) / 2.0)[None, :] * (np.asarray(side, np.float64)
                                                         .reshape(-1, 1) / size)
    c = np.cos(angle).reshape(-1, 1, 1)
    s = np.sin(angle).reshape(-1, 1, 1)
    gu, gv = g[:, None, :], g[:, :, None]          # u along columns, v along rows
    x = centre[:, 0, None, None] + c * gu - s * gv
    y = centre[:, 1, None, None] + s * gu + c * gv
    return x, y


def sample_patches(images, hw, index, x, y, flip=None):
    """Bilinear samples (float32 N x S x S) of images[index] (M x H x W uint8, image i
    valid in its top-left hw[i]) at (x, y), border replicated. flip: per patch, (x, y)
    are coordinates of the mirror image (x -> w - 1 - x)."""
    h = hw[index, 0].astype(np.float64)[:, None, None]
    w = hw[index, 1].astype(np.float64)[:, None, None]
    if flip is not None:
        x = np.where(np.asarray(flip)[:, None, None], w - 1.0 - x, x)
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1 = np.minimum(x0 + 1, w.astype(np.int64) - 1)
    y1 = np.minimum(y0 + 1, h.astype(np.int64) - 1)
    n = np.asarray(index)[:, None, None]
    v00 = images[n, y0, x0].astype(np.float64)
    v01 = images[n, y0, x1].astype(np.float64)
    v10 = images[n, y1, x0].astype(np.float64)
    v11 = images[n, y1, x1].astype(np.float64)
    top = v00 + fx * (v01 - v00)
    bot = v10 + fx * (v11 - v10)
    return (top + fy * (bot - top)).astype(np.float32)


def level_patches(cfg, images, hw, index, pts, flip=None, angle=None, radius=None):
    """The patches of a level for N estimates pts (N x 5 x 2, in mirror-image coordinates
    where flip): float32 N x 5 x J x 1 x S x S (J = len(cfg.patches)), with the frame
    (angle, r: N) and the patch sides (N x J) they were cut with. angle / radius: the
    frame, if not that of pts."""
    pts = np.asarray(pts, np.float64)
    n, s, J = len(pts), cfg.size, len(cfg.patches)
    a, r = shape_frame(pts, cfg.rotate_frame)
    a = a if angle is None else angle
    r = r if radius is None else radius
    side = r[:, None] * np.asarray(cfg.patches)[None, :]                   # N x J
    centre = np.broadcast_to(pts[:, :, None, :], (n, 5, J, 2)).reshape(-1, 2)
    aa = np.broadcast_to(a[:, None, None], (n, 5, J)).reshape(-1)
    ss = np.broadcast_to(side[:, None, :], (n, 5, J)).reshape(-1)
    x, y = patch_grid(centre, aa, ss, s)
    idx = np.repeat(np.asarray(index), 5 * J)
    fl = None if flip is None else np.repeat(np.asarray(flip, bool), 5 * J)
    p = standardise(sample_patches(images, hw, idx, x, y, fl))
    return p.reshape(n, 5, J, 1, s, s), a, r, side


def offsets_to_points(pts, angle, side, off):
    """Refined points from patch-frame offsets off (N x 5 x J x 2, in patch sides) of
    patches centred at pts (N x 5 x 2): N x 5 x J x 2."""
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    ox = off[..., 0] * side[:, None, :]
    oy = off[..., 1] * side[:, None, :]
    return np.stack([pts[:, :, None, 0] + c * ox - s * oy,
                     pts[:, :, None, 1] + s * ox + c * oy], -1)


def points_to_offsets(pts, angle, side, truth):
    """The inverse: the offsets (N x 5 x J x 2) of truth (N x 5 x 2) from patches at pts."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    d = truth - pts
    u = c * d[..., 0] + s * d[..., 1]
    v = -s * d[..., 0] + c * d[..., 1]
    return np.stack([u[:, :, None] / side[:, None, :], v[:, :, None] / side[:, None, :]], -1)


def net_name(level, point, j):
    return f"level{level}/{POINTS[point]}/{j}/"


# -- prediction ----------------------------------------------------------------------------
class CascadeLevel:
    """The nets of one level: params[(point, j)] -> that net's named arrays (outputs
    in patch sides)."""

    def __init__(self, number, cfg, params, backend):
        self.number, self.cfg, self.params, self.be = number, cfg, params, backend
        self.net = RefineNet(cfg, backend)
        want = refine_param_shapes(cfg)
        for p in range(5):
            for j in range(len(cfg.patches)):
                if (p, j) not in params:
                    raise ValueError(f"level {number}: the {POINTS[p]} net {j} is missing")
                got = {k: tuple(v.shape) for k, v in params[(p, j)].items()}
                if got != want:
                    raise ValueError(f"level {number}, {POINTS[p]} net {j}: parameters do "
                                     f"not fit the network: expected {want}, got {got}")

    def offsets(self, patches, batch=512):
        """N x 5 x J x 1 x S x S patches -> N x 5 x J x 2 offsets."""
        n, J = len(patches), len(self.cfg.patches)
        out = np.empty((n, 5, J, 2), np.float64)
        for p in range(5):
            for j in range(J):
                x = np.ascontiguousarray(patches[:, p, j])
                for i in range(0, n, batch):
                    out[i:i + batch, p, j] = self.net.forward(self.params[(p, j)],
                                                              x[i:i + batch])["out"]
        return out

    def refine(self, images, hw, index, pts, flip=None):
        """Refined N x 5 x 2 points (the mean over the level's nets)."""
        pts = np.asarray(pts, np.float64)
        if len(pts) == 0:
            return pts.copy()
        patches, a, _, side = level_patches(self.cfg, images, hw, index, pts, flip)
        return offsets_to_points(pts, a, side, self.offsets(patches)).mean(2)


def refine_flip_averaged(level, images, hw, index, pts, flip_average=True):
    """One level on the images and (flip_average) on their mirror images, averaged."""
    out = level.refine(images, hw, index, pts)
    if flip_average and len(pts):
        w = hw[np.asarray(index), 1]
        mp = mirror_points(pts, w)
        fl = np.ones(len(pts), bool)
        out = 0.5 * (out + mirror_points(level.refine(images, hw, index, mp, fl), w))
    return out


class LandmarkCascade:
    """Refinement levels 2, 3, ... applied to level-1 estimates of one image."""

    def __init__(self, levels, meta=None):
        self.levels = list(levels)
        self.meta = dict(meta or {})

    def refine(self, gray, pts, flip_average=True, levels=None):
        """gray: uint8 H x W; pts: n x 5 x 2 image pixels -> refined n x 5 x 2 (float64).
        levels: how many refinement levels to apply (default all)."""
        pts = np.asarray(pts, np.float64)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (5, 2):
            raise ValueError(f"points must be n x 5 x 2 (x, y), got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points must be finite")
        gray = np.asarray(gray)
        if gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
            raise ValueError(f"gray must be a non-empty uint8 H x W image, got "
                             f"{gray.dtype} {gray.shape}")
        images = np.ascontiguousarray(gray)[None]
        hw = np.array([gray.shape[:2]], np.int64)
        index = np.zeros(len(pts), np.int64)
        for level in self.levels[:levels]:
            pts = refine_flip_averaged(level, images, hw, index, pts, flip_average)
        return pts

    def tensors(self):
        out = {}
        for level in self.levels:
            for (p, j), params in level.params.items():
                for k, v in params.items():
                    out[net_name(level.number, p, j) + k] = v
        return out

    def meta_fields(self):
        return {"cascade": json.dumps(dict(format=CASCADE_FORMAT, levels=[
            dict(level=lv.number, **lv.cfg.to_dict()) for lv in self.levels]), sort_keys=True)}


def split_tensors(tensors):
    """(level-1 tensors, {level: {(point, j): params}}) of a model file's tensors."""
    base, levels = {}, {}
    for k, v in tensors.items():
        if k.startswith("level") and "/" in k:
            lv, point, j, name = k.split("/")
            levels.setdefault(int(lv[5:]), {}).setdefault(
                (POINTS.index(point), int(j)), {})[name] = np.ascontiguousarray(v, np.float32)
        else:
            base[k] = v
    return base, levels


def cascade_from(tensors, meta, backend):
    """The LandmarkCascade a model file holds (None if it holds level 1 only), and the
    level-1 tensors."""
    base, levels = split_tensors(tensors)
    if "cascade" not in meta:
        if levels:
            raise ValueError("the model file holds refinement nets but no cascade config")
        return None, base
    spec = json.loads(meta["cascade"])
    if spec.get("format") != CASCADE_FORMAT:
        raise ValueError(f"unknown cascade format {spec.get('format')!r}")
    out = []
    for d in spec["levels"]:
        d = dict(d)
        number = d.pop("level")
        if number not in levels:
            raise ValueError(f"the model file's cascade names level {number} but holds no "
                             f"nets for it")
        out.append(CascadeLevel(number, RefineLevelConfig.from_dict(d), levels[number],
                                backend))
    return LandmarkCascade(out, meta), base


# -- training ------------------------------------------------------------------------------
@dataclass
class RefineTrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    displace: float = 0.12        # std of each coordinate's displacement, units of r
    max_displace: float = 0.45    # displacements clipped to +- this, units of r
    scale: float = 0.1            # frame scale, log-uniform in [1 / (1 + s), 1 + s]
    rotate: float = 10.0          # frame angle, uniform in +- this many degrees
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch < 1:
            raise ValueError(f"epochs and batch must be at least 1, got {self.epochs}, "
                             f"{self.batch}")
        if self.displace < 0 or self.max_displace < 0 or self.scale < 0 or self.rotate < 0:
            raise ValueError("displace, max_displace, scale and rotate must be >= 0")


class TrainImages:
    """Grey images (M x H x W uint8, image i in its top-left hw[i]) with their points."""

    def __init__(self, images, hw, points):
        self.images = np.ascontiguousarray(images, np.uint8)
        self.hw = np.asarray(hw, np.int64).reshape(-1, 2)
        self.points = np.asarray(points, np.float64).reshape(-1, 5, 2)
        if not len(self.images) == len(self.hw) == len(self.points):
            raise ValueError("images, hw and points differ in length")

    @classmethod
    def read(cls, data_dir, rel_paths, points):
        imgs = []
        for rel in rel_paths:
            g = cv2.imread(os.path.join(os.fspath(data_dir), rel), cv2.IMREAD_GRAYSCALE)
            if g is None:
                raise ValueError(f"cannot read {rel}")
            imgs.append(g)
        h = max(g.shape[0] for g in imgs)
        w = max(g.shape[1] for g in imgs)
        out = np.zeros((len(imgs), h, w), np.uint8)
        for i, g in enumerate(imgs):
            out[i, :g.shape[0], :g.shape[1]] = g
        return cls(out, [g.shape for g in imgs], points)

    def __len__(self):
        return len(self.images)


def make_samples(data, idx, rng, cfg, level_cfg):
    """A training batch of a level: patches N x 5 x J x 1 x S x S and standardised-to-be
    targets (offsets in patch sides) N x 5 x J x 2, drawn as the module docstring says."""
    n = len(idx)
    flips = rng.random(n) < 0.5 if cfg.flip else np.zeros(n, bool)
    disp = np.clip(rng.standard_normal((n, 5, 2)) * cfg.displace, -cfg.max_displace,
                   cfg.max_displace)
    turn = np.radians(rng.uniform(-cfg.rotate, cfg.rotate, n))
    zoom = np.exp(rng.uniform(-1.0, 1.0, n) * math.log1p(cfg.scale))
    truth = data.points[idx]
    truth = np.where(flips[:, None, None], mirror_points(truth, data.hw[idx, 1]), truth)
    _, r_true = shape_frame(truth, False)
    est = truth + disp * r_true[:, None, None]
    a, r = shape_frame(est, level_cfg.rotate_frame)
    patches, a, r, side = level_patches(level_cfg, data.images, data.hw, idx, est, flips,
                                        angle=a + turn, radius=r * zoom)
    return patches, points_to_offsets(est, a, side, truth)


class CascadeTrainer:
    """Trains the nets of one level (5 x len(patches)), all on the same batches."""

    def __init__(self, data, train_idx, val_idx, val_start, run_dir, number, level_cfg, cfg,
                 backend, log=print, progress=True):
        self.data, self.number, self.level_cfg, self.cfg, self.be = data, number, level_cfg, \
            cfg, backend
        self.train_idx, self.val_idx = np.asarray(train_idx), np.asarray(val_idx)
        self.val_start = np.asarray(val_start, np.float64).reshape(-1, 5, 2)
        if len(self.val_start) != len(self.val_idx):
            raise ValueError("val_start must hold one estimate per validation image")
        if len(self.train_idx) < cfg.batch:
            raise ValueError(f"{len(self.train_idx)} training images, fewer than a batch "
                             f"({cfg.batch})")
        self.run_dir = os.path.join(os.fspath(run_dir), f"level{number}")
        os.makedirs(self.run_dir, exist_ok=True)
        self.net = RefineNet(level_cfg, backend)
        self.log, self.progress = log, progress
        self.nets = [(p, j) for p in range(5) for j in range(len(level_cfg.patches))]
        self.steps_per_epoch = len(self.train_idx) // cfg.batch
        self.total_steps = self.steps_per_epoch * cfg.epochs

    def fresh_state(self):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.number, 2**31 + 2])
        idx = np.sort(rng.choice(self.train_idx, min(4096, len(self.train_idx)), replace=False))
        _, t = make_samples(self.data, idx, rng, cfg, self.level_cfg)
        std = np.sqrt(np.mean(t ** 2, axis=(0, 1, 3))).astype(np.float32)  # per patch size
        rng = np.random.default_rng([cfg.seed, self.number, 2**31 + 1])
        probe = np.sort(rng.choice(self.train_idx, min(256, len(self.train_idx)),
                                   replace=False))
        patches, _ = make_samples(self.data, probe, rng, cfg, self.level_cfg)
        params = {}
        for p, j in self.nets:
            q = init_refine_params(self.level_cfg, np.random.default_rng(
                [cfg.seed, self.number, p, j]))
            unit_rms_init(self.net, q, np.ascontiguousarray(patches[:, p, j]))
            for k, v in q.items():
                params[net_name(self.number, p, j) + k] = v
        return dict(params=params, velocity={k: np.zeros_like(v) for k, v in params.items()},
                    target_std=std, epoch=0, best_epoch=-1, best_val=float("inf"), history=[])

    def net_params(self, params, p, j):
        pre = net_name(self.number, p, j)
        return {k[len(pre):]: v for k, v in params.items() if k.startswith(pre)}

    def model_level(self, state):
        """The trained level with the target std folded into the output layers."""
        out = {}
        for p, j in self.nets:
            q = dict(self.net_params(state["params"], p, j))
            std = state["target_std"][j]
            q["out.w"] = np.ascontiguousarray(q["out.w"] * std, np.float32)
            q["out.b"] = np.ascontiguousarray(q["out.b"] * std, np.float32)
            out[(p, j)] = q
        return CascadeLevel(self.number, self.level_cfg, out, self.be)

    def _meta(self, state):
        return {"format": CHECKPOINT_FORMAT, "net": json.dumps(self.level_cfg.to_dict(),
                                                               sort_keys=True),
                "train": json.dumps(asdict(self.cfg), sort_keys=True),
                "level": str(self.number), "epoch": str(state["epoch"]),
                "best_epoch": str(state["best_epoch"]), "best_val": repr(state["best_val"])}

    def save_checkpoint(self, state):
        save_checkpoint(os.path.join(self.run_dir, "checkpoint.safetensors"), state["params"],
                        state["velocity"], {"target/std": state["target_std"]},
                        self._meta(state))

    def load_checkpoint(self):
        path = os.path.join(self.run_dir, "checkpoint.safetensors")
        params, velocity, tensors, meta = load_checkpoint(
            path, CHECKPOINT_FORMAT, self.level_cfg.to_dict(), asdict(self.cfg),
            "landmark cascade training")
        epoch = int(meta["epoch"])
        return dict(params=params, velocity=velocity, target_std=tensors["target/std"],
                    epoch=epoch, best_epoch=int(meta["best_epoch"]),
                    best_val=float(meta["best_val"]),
                    history=read_log(os.path.join(self.run_dir, "log.jsonl"), epoch))

    def step(self, state, epoch, step):
        cfg, be, params = self.cfg, self.be, state["params"]
        rng = np.random.default_rng([cfg.seed, self.number, epoch, step])
        idx = rng.choice(self.train_idx, cfg.batch, replace=False)
        patches, target = make_samples(self.data, idx, rng, cfg, self.level_cfg)
        target = (target / state["target_std"][None, None, :, None]).astype(np.float32)
        lr = cosine_lr(cfg.lr, step + epoch * self.steps_per_epoch, self.total_steps)
        total = 0.0
        for p, j in self.nets:
            q = self.net_params(params, p, j)
            acts = self.net.forward(q, np.ascontiguousarray(patches[:, p, j]))
            loss, dout = be.regression_loss(acts["out"], np.ascontiguousarray(target[:, p, j]))
            grads = {k: np.zeros_like(v) for k, v in q.items()}
            self.net.backward(q, acts, dout, grads)
            sgd_step(be, q, grads, {k: state["velocity"][net_name(self.number, p, j) + k]
                                    for k in q}, lr, cfg.momentum, cfg.weight_decay)
            total += float(loss)
        return total / len(self.nets)

    def validate(self, level, flip_average=True):
        """Held-out errors (N x 5 / inter-ocular distance) after this level."""
        from .landmarks import nme
        pts = refine_flip_averaged(level, self.data.images, self.data.hw, self.val_idx,
                                   self.val_start, flip_average)
        return nme(pts, self.data.points[self.val_idx])

    def run(self, resume=False, on_epoch_end=None):
        from .landmarks import summarise
        state = start(self.run_dir, "checkpoint.safetensors", resume, self.load_checkpoint,
                      self.fresh_state, self.log)
        cfg = self.cfg
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            total = 0.0
            bar = Progress(self.steps_per_epoch, f"level {self.number} epoch {epoch + 1}/"
                                                 f"{cfg.epochs}", enabled=self.progress)
            for s in range(self.steps_per_epoch):
                loss = self.step(state, epoch, s)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1} step {s}:"
                                             f" lower the learning rate")
                total += loss
                bar.update(1, f"loss {total / (s + 1):.5f}")
            bar.close()
            secs = time.perf_counter() - t0
            val = summarise(self.validate(self.model_level(state))) if len(self.val_idx) \
                else None
            k = self.steps_per_epoch
            row = dict(epoch=epoch + 1, steps=k, loss=total / k,
                       val_nme=val["nme"] if val else None,
                       val_failure_rate=val["failure_rate"] if val else None,
                       lr=cosine_lr(cfg.lr, (epoch + 1) * k, self.total_steps), seconds=secs)
            state["epoch"] = epoch + 1
            state["history"].append(row)
            score = row["val_nme"] if val else row["loss"]
            if score < state["best_val"]:
                state["best_epoch"], state["best_val"] = epoch + 1, score
                self.save_level(state, os.path.join(self.run_dir, "best.safetensors"))
            self.save_checkpoint(state)
            write_log(os.path.join(self.run_dir, "log.jsonl"), state["history"])
            self.log(f"level {self.number} epoch {epoch + 1}: loss {row['loss']:.5f} val NME "
                     f"{'-' if val is None else round(100 * row['val_nme'], 2)}% "
                     f"({secs:.1f} s)")
            if on_epoch_end:
                on_epoch_end(state)
        return state

    def save_level(self, state, path):
        from . import safetensors
        lv = self.model_level(state)
        cas = LandmarkCascade([lv])
        safetensors.save(path, cas.tensors(), {**cas.meta_fields(),
                                               "format": CASCADE_FORMAT,
                                               "epoch": str(state["epoch"]),
                                               "train": json.dumps(asdict(self.cfg),
                                                                   sort_keys=True)})


def load_level_file(path, backend):
    """The CascadeLevel of a trainer's best.safetensors."""
    from . import safetensors
    tensors, meta = safetensors.load(path)
    cas, _ = cascade_from(tensors, meta, backend)
    return cas.levels[0], meta


# -- the command -----------------------------------------------------------------------------
DEFAULT_LEVELS = {2: dict(patches=(1.25, 1.45)), 3: dict(patches=(0.9,))}
DEFAULT_DISPLACE = {2: 0.12, 3: 0.06}


def params_sha256(params):
    """sha256 of named float32 arrays (names and bytes in sorted-name order)."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], np.float32).tobytes())
    return h.hexdigest()


def level1_split(n, model_meta):
    """(train, val) rows of a cache of n images: level 1's own split (its seed and
    val_fraction), so that the held-out images are unseen by every level."""
    train = json.loads(model_meta.get("train", "{}"))
    seed, frac = int(train.get("seed", 0)), float(train.get("val_fraction", 0.05))
    order = np.random.default_rng([seed, 2**31]).permutation(n)
    n_val = int(round(frac * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_cascade_main(data_dir, out_dir, level1=None, levels=(2,), epochs=30, seed=0, batch=64,
                       lr=0.02, displace=None, scale=None, rotate=None, patches=None,
                       rotate_frame=None, resume=False, cache_dir=None, backend="cpu",
                       progress=True, log=print, command=None, evaluate_test=True):
    """`deepid2 train-landmark-cascade --data DIR --out DIR [--level1 MODEL]`: train the
    refinement levels on DIR/new_training.txt on top of the level-1 model (default: the
    shipped one), write OUT/landmarks.safetensors (level 1 and the levels, with their configs,
    command and held-out/test results in its metadata), OUT/eval.json and per level
    OUT/levelL/{checkpoint,best}.safetensors and log.jsonl. displace: the training
    displacement std of each level (default DEFAULT_DISPLACE); patches: the patch sides of
    each level (default DEFAULT_LEVELS). backend: the cpu backend (the nets take numpy
    arrays). Returns a summary dict."""
    from . import landmarks as L
    from .backends import get_backend
    be = get_backend(backend) if isinstance(backend, str) else backend
    levels = [int(v) for v in levels]
    if not levels or sorted(levels) != levels or levels[0] != 2 or \
            levels != list(range(2, 2 + len(levels))):
        raise ValueError(f"levels must be 2, or 2 and 3, ...; got {levels}")
    displace = {int(k): float(v) for k, v in (displace or {}).items()}
    patches = {int(k): tuple(v) for k, v in (patches or {}).items()}
    base = L.load_landmark_model(level1, backend=be, levels=1)
    det = L.resolve_detector(base.meta.get("detector", "haar"))
    t0 = time.perf_counter()
    cache = L.build_cache(data_dir, L.TRAIN_LIST, cache_dir or os.path.join(out_dir, "cache"),
                          base.cfg, det, progress=progress, log=log)
    data = TrainImages.read(data_dir, cache.paths, cache.points)
    train_idx, val_idx = level1_split(len(cache), base.meta)
    start_pts = base.predict_crops(cache.crop[val_idx], cache.crop_inv[val_idx])
    t_data = time.perf_counter() - t0
    val_rows = [L.summarise(L.nme(start_pts, data.points[val_idx]))]
    log(f"level 1 on the {len(val_idx)} held-out images: NME "
        f"{100 * val_rows[0]['nme']:.2f}%")
    trained, cfgs, times = [], {}, {}
    for number in levels:
        lc = dict(DEFAULT_LEVELS.get(number, DEFAULT_LEVELS[3]))
        if number in patches:
            lc["patches"] = tuple(patches[number])
        if rotate_frame is not None:
            lc["rotate_frame"] = bool(rotate_frame)
        level_cfg = RefineLevelConfig(**lc)
        d = displace.get(number, DEFAULT_DISPLACE.get(number, DEFAULT_DISPLACE[3]))
        cfg = RefineTrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed, displace=d,
                                **{k: v for k, v in dict(scale=scale, rotate=rotate).items()
                                   if v is not None})
        tr = CascadeTrainer(data, train_idx, val_idx, start_pts, out_dir, number, level_cfg, cfg,
                            be, log=log, progress=progress)
        t1 = time.perf_counter()
        state = tr.run(resume=resume)
        times[number] = round(time.perf_counter() - t1, 1)
        level, _ = load_level_file(os.path.join(tr.run_dir, "best.safetensors"), be)
        start_pts = refine_flip_averaged(level, data.images, data.hw, val_idx, start_pts)
        val_rows.append(L.summarise(L.nme(start_pts, data.points[val_idx])))
        log(f"after level {number} (epoch {state['best_epoch']}): held-out NME "
            f"{100 * val_rows[-1]['nme']:.2f}%")
        trained.append(level)
        cfgs[number] = dict(train=asdict(cfg), best_epoch=state["best_epoch"],
                            train_seconds=times[number])
    cascade = LandmarkCascade(trained)
    meta = {k: v for k, v in base.meta.items() if k not in ("format", "net", "points")
            and not k.startswith("cascade")}
    meta.update(cascade_command=command or "train_cascade_main(" + ", ".join(
        f"{k}={v!r}" for k, v in dict(data_dir=os.fspath(data_dir), out_dir=os.fspath(out_dir),
                                      level1=level1, levels=levels, epochs=epochs, seed=seed,
                                      batch=batch, lr=lr, displace=displace, scale=scale,
                                      rotate=rotate, patches=patches,
                                      rotate_frame=rotate_frame).items()) + ")",
                cascade_train=json.dumps(cfgs, sort_keys=True),
                cascade_level1_params_sha256=params_sha256(base.params),
                cascade_val=json.dumps([dict(levels=i + 1, nme=r["nme"],
                                             failure_rate=r["failure_rate"], n=r["n"])
                                        for i, r in enumerate(val_rows)]),
                cascade_data_seconds=round(t_data, 1),
                cascade_threads=be.max_threads() if hasattr(be, "max_threads") else None)
    summary = dict(val=val_rows, train_seconds=times)
    model = L.LandmarkModel(base.params, base.cfg, meta, be, cascade=cascade)
    if evaluate_test and os.path.isfile(os.path.join(data_dir, L.TEST_LIST)):
        t2 = time.perf_counter()
        res = L.evaluate(model, data_dir, L.TEST_LIST, detector=det, progress=progress)
        with open(os.path.join(out_dir, L.EVAL), "w") as f:
            json.dump(res, f, indent=1)
        meta["cascade_test"] = json.dumps({k: v for k, v in res.items()
                                           if k not in ("errors", "skipped")}, sort_keys=True)
        summary["test"] = res
        log(f"test ({res['n']} images, {det} boxes, {time.perf_counter() - t2:.0f} s): NME "
            f"{100 * res['nme']:.2f}%, failure rate {100 * res['failure_rate']:.2f}%")
    L.save_model(os.path.join(out_dir, L.FINAL), base.params, base.cfg, meta, cascade=cascade)
    return summary
