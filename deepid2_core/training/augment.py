"""Training augmentation of cached patches, on the host, in batch assembly.

The patch cache holds each image's patch with a margin of its surround
(face.inputs.PatchSpec / LayoutPatch `margin`). For a batch, `draw` draws each
image's parameters from a numpy Generator in a fixed order, and `apply` turns
the (B, H', W', C) margin crops into the (B, H, W, C) patches:

1. geometry: one affine map about the crop's centre (translation by a
   fraction of the patch size, zoom, rotation), cv2.warpAffine, bilinear,
   border replicated, sampled onto the centre H x W;
2. lighting (the spec's "hist" / "clahe", data.normalise_lighting), when asked:
   a margin cache holds its crops before lighting;
3. contrast (gain about the image's mean), brightness (an offset), colour (a
   gain per channel, RGB only), in float32, rounded once back to uint8;
4. Gaussian blur of some images; 5. JPEG re-compression of some.

Identity parameters give exactly the centre crop. Every pixel of every step
is computed on its own, so the bytes do not depend on OpenCV's threads.
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import cv2
import numpy as np

from ..face.inputs import normalise_lighting

STREAM = 0x61756721   # the fourth seed word of the augmentation's own random stream


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentation (each drawn uniformly, both ways where signed)."""
    shift: float = 0.05             # translation, fraction of the patch's width / height
    scale: float = 0.1              # zoom from [1 - scale, 1 + scale]
    rotate: float = 10.0            # rotation, degrees
    brightness: float = 0.1         # offset, fraction of 255
    contrast: float = 0.1           # gain about the image's mean, from [1 - c, 1 + c]
    colour: float = 0.05            # per-channel gain (RGB), from [1 - c, 1 + c]
    blur_p: float = 0.1             # share of images blurred
    blur_sigma: tuple = (0.5, 1.0)  # its Gaussian sigma range, pixels
    jpeg_p: float = 0.1             # share of images JPEG re-compressed
    jpeg_quality: tuple = (60, 95)  # its quality range

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(f.default, tuple):
                try:
                    pair = tuple(float(x) for x in v)
                except (TypeError, ValueError):
                    pair = ()
                if len(pair) != 2:
                    raise ValueError(f"augment {f.name} must be a (low, high) pair, got {v!r}")
                v = pair
            else:
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"augment {f.name} must be a number, got {v!r}") from None
            object.__setattr__(self, f.name, v)
        for name, hi, closed in (("shift", 0.5, True), ("scale", 0.5, False),
                                 ("rotate", 45.0, True), ("brightness", 1.0, True),
                                 ("contrast", 1.0, False), ("colour", 1.0, False),
                                 ("blur_p", 1.0, True), ("jpeg_p", 1.0, True)):
            v = getattr(self, name)
            if not (0.0 <= v <= hi if closed else 0.0 <= v < hi):
                raise ValueError(f"augment {name} must be in [0, {hi:g}{']' if closed else ')'}, "
                                 f"got {v:g}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi <= 10.0:
            raise ValueError(f"augment blur_sigma must be 0 < low <= high <= 10, "
                             f"got {lo:g}, {hi:g}")
        lo, hi = self.jpeg_quality
        if not (lo == int(lo) and hi == int(hi) and 1 <= lo <= hi <= 100):
            raise ValueError(f"augment jpeg_quality must be whole numbers 1 <= low <= high <= 100, "
                             f"got {lo:g}, {hi:g}")
        object.__setattr__(self, "jpeg_quality", (int(lo), int(hi)))

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown augment setting {unknown[0]!r}")
        return cls(**d)

    def scaled(self, strength):
        """Every range and share times `strength` (the shares capped at 1; the blur
        sigma and JPEG quality ranges kept): 0 is no augmentation."""
        s = float(strength)
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"the augmentation strength must be a number >= 0, got {strength!r}")
        return AugmentConfig(self.shift * s, self.scale * s, self.rotate * s,
                             self.brightness * s, self.contrast * s, self.colour * s,
                             min(1.0, self.blur_p * s), self.blur_sigma,
                             min(1.0, self.jpeg_p * s), self.jpeg_quality)

    def margin(self, height, width):
        """The cache margin (data.margin_pad's fraction) that keeps every sample
        of a height x width patch inside the crop: the worst corner of the largest
        rotation at the smallest zoom, plus the largest shift; rounded up to 0.01."""
        r = math.radians(self.rotate)
        c, s, zoom = math.cos(r), math.sin(r), 1.0 - self.scale
        need = max(((width * c + height * s) / (2 * zoom) + self.shift * width) / width,
                   ((height * c + width * s) / (2 * zoom) + self.shift * height) / height) - 0.5
        return math.ceil(round(need * 100, 6)) / 100


class AugmentParams(NamedTuple):
    """Per-image parameters (arrays of length B)."""
    shift: np.ndarray        # (B, 2): x, y, fractions of the patch's width, height
    zoom: np.ndarray         # (B,)
    angle: np.ndarray        # (B,) degrees
    brightness: np.ndarray   # (B,) fraction of 255
    contrast: np.ndarray     # (B,)
    gain: np.ndarray         # (B, 3); ones for grey patches
    blur_sigma: np.ndarray   # (B,) 0: not blurred
    jpeg_quality: np.ndarray  # (B,) int, 0: not re-compressed

    def take(self, rows):
        """The parameters of these images (a micro-batch's rows)."""
        return AugmentParams(*(a[rows] for a in self))

    @classmethod
    def identity(cls, n):
        return cls(np.zeros((n, 2)), np.ones(n), np.zeros(n), np.zeros(n), np.ones(n),
                   np.ones((n, 3)), np.zeros(n), np.zeros(n, np.int64))


def draw(rng, n, cfg, channels):
    """AugmentParams of n images from the Generator rng; always the same draws in the
    same order (whatever the channels or ranges), so a stream stays aligned."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    shift = rng.uniform(-cfg.shift, cfg.shift, (n, 2))
    zoom = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale, n)
    angle = rng.uniform(-cfg.rotate, cfg.rotate, n)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness, n)
    contrast = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast, n)
    gain = rng.uniform(1.0 - cfg.colour, 1.0 + cfg.colour, (n, 3))
    blurred = rng.random(n) < cfg.blur_p
    sigma = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n)
    jpeg = rng.random(n) < cfg.jpeg_p
    quality = rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, n)
    if channels == 1:
        gain = np.ones((n, 3))
    return AugmentParams(shift, zoom, angle, brightness, contrast, gain,
                         np.where(blurred, sigma, 0.0), np.where(jpeg, quality, 0))


def _check_batch(big, out_hw):
    if not (isinstance(big, np.ndarray) and big.dtype == np.uint8 and big.ndim == 4
            and big.shape[3] in (1, 3)):
        raise ValueError("crops must be a uint8 array B x H' x W' x C (C 1 or 3)")
    h, w = (int(v) for v in out_hw)
    dy, dx = big.shape[1] - h, big.shape[2] - w
    if h < 1 or w < 1 or dy < 0 or dx < 0 or dy % 2 or dx % 2:
        raise ValueError(f"a {h}x{w} patch must sit in the centre of the {big.shape[1]}x"
                         f"{big.shape[2]} crops (an even margin each way)")
    return h, w


def centre(big, out_hw):
    """The centre out_hw of each crop (B, H', W', C): the plain patches."""
    h, w = _check_batch(big, out_hw)
    py, px = (big.shape[1] - h) // 2, (big.shape[2] - w) // 2
    return np.ascontiguousarray(big[:, py:py + h, px:px + w])


def light(patches, mode):
    """Each patch of (B, H, W, C) with data.normalise_lighting (mode "none": as is)."""
    if mode == "none":
        return patches
    return np.stack([normalise_lighting(np.ascontiguousarray(p), mode) for p in patches])


def _matrix(params, i, big_hw, out_hw):
    """The 2 x 3 map from output pixel to crop pixel: about both centres, the crop
    pixel = centre + rotation / zoom of the offset + shift."""
    (hb, wb), (h, w) = big_hw, out_hw
    a = math.radians(float(params.angle[i]))
    z = float(params.zoom[i])
    c, s = math.cos(a) / z, math.sin(a) / z
    cxo, cyo, cxb, cyb = (w - 1) / 2, (h - 1) / 2, (wb - 1) / 2, (hb - 1) / 2
    tx, ty = float(params.shift[i, 0]) * w, float(params.shift[i, 1]) * h
    return np.array([[c, -s, cxb + tx - c * cxo + s * cyo],
                     [s, c, cyb + ty - s * cxo - c * cyo]], np.float64)


def apply(big, params, out_hw, lighting="none"):
    """(B, H', W', C) uint8 margin crops -> (B, H, W, C) uint8 augmented patches
    (the module docstring's steps, in its order)."""
    h, w = _check_batch(big, out_hw)
    b, hb, wb, ch = big.shape
    if any(len(a) != b for a in params):
        raise ValueError(f"augmentation parameters for {len(params.zoom)} images, crops for {b}")
    out = np.empty((b, h, w, ch), np.uint8)
    for i in range(b):
        m = _matrix(params, i, (hb, wb), (h, w))
        warped = cv2.warpAffine(big[i], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        out[i] = warped.reshape(h, w, ch)
    out = light(out, lighting)
    x = out.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = ((x - mean) * params.contrast.astype(np.float32)[:, None, None, None] + mean
         + (params.brightness * 255.0).astype(np.float32)[:, None, None, None])
    if ch == 3:
        x *= params.gain.astype(np.float32)[:, None, None, :]
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    for i in np.nonzero(params.blur_sigma > 0)[0]:
        sigma = float(params.blur_sigma[i])
        out[i] = cv2.GaussianBlur(out[i], (0, 0), sigma).reshape(h, w, ch)
    for i in np.nonzero(params.jpeg_quality > 0)[0]:
        out[i] = _jpeg(out[i], int(params.jpeg_quality[i]))
    return out


def _jpeg(patch, quality):
    """One H x W x C RGB or grey patch through JPEG at this quality and back."""
    grey = patch.shape[2] == 1
    img = patch[:, :, 0] if grey else cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding of a patch failed")
    back = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    return back[:, :, None] if grey else cv2.cvtColor(back, cv2.COLOR_BGR2RGB)
