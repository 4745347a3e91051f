"""Inference of the facial point cascade's refinement levels (Sun, Wang, Tang, CVPR 2013,
levels 2 and 3) on top of level 1's points (deepid2_core.face.landmarks).

Each level moves every one of the 5 points by what small ConvNets
(deepid2_core.nets.refine) see in a patch centred at the previous level's estimate of
that point. A level has `len(patches)` nets per point, one per patch size, and the point
moves by the mean of their answers.

The patch frame of a level follows the estimate it refines (all points of a face
at once, from the same estimate): its scale is r, the root-mean-square distance of
the five points from their mean (about 0.64 of the inter-ocular distance on MTFL's
faces, and less sensitive to yaw than the inter-ocular distance itself), and, with
`rotate_frame`, it is turned by the angle of the line from the left to the right
eye, so that patches come upright. A patch of side `patches[j] * r` image pixels is
resampled to `size x size` (bilinear, border replicated; pixel centres at integer
coordinates, as in OpenCV).

Prediction (`LandmarkCascade.refine`): level by level, with `flip_average` the
mean of the refinement of the image and of its mirror image (points mapped back,
left/right swapped).

Model file: the level-1 model file (face.landmarks.MODEL_FORMAT) with the nets added as
tensors levelL/POINT/J/NAME (J: the patch size's index) and the levels' configs in
its metadata's "cascade" (`cascade_from` reads them); `cascade_*` metadata records the
command, training configs, held-out and test results (deepid2_core.training.cascade).
"""

import json

import numpy as np

from ..nets.landmark import FLIP_ORDER, POINTS, standardise
from ..nets.refine import RefineLevelConfig, RefineNet, refine_param_shapes

CASCADE_FORMAT = "deepid2-landmark-cascade/1"
MIN_RADIUS = 1.0   # pixels: the frame of a degenerate estimate (all points together)


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

