"""What one network sees, and cutting it from a face: `PatchSpec` (the fixed crop
of the whole face, `deepid2 train`'s default; its flipped counterpart is its mirror
image) or `LayoutPatch` (one patch of a multi-patch layout of face.patches, cut from
faces aligned by `deepid2 align`, with landmark-centred regions on the face's
landmarks or the canonical mean shape). A layout patch's flipped counterpart is not
always its mirror image (one eye's patch flips into the other eye's), so it is cut
too (patches.cut_flipped). A verifier's networks each see one of these
(verifier.features.PatchInputs); the patch cache (data.py) holds them for training.

Lighting (both): "none", "hist" (histogram equalisation) or "clahe" (contrast-limited
adaptive histogram equalisation, clip 2, 4 x 4 tiles) of the patch's luminance (Y of
YCrCb for RGB patches, the grey value for grey ones), after the patch is cut.

Margin (both, for training augmentation, training/augment.py): with margin m > 0 the
cut is the (H + 2 py) x (W + 2 px) crop, py = round(m H), px = round(m W), of the patch
and its surround, before lighting (the patch the network sees is equalised, not its
surround: training applies lighting to each patch it takes from the crop). A
LayoutPatch's margin crop is the same sampling grid extended, so its centre H x W is
the plain patch bit for bit (the flipped counterpart's too). A PatchSpec's plain cut
is cv2's INTER_AREA resize of the crop, not an affine map: its margin crop is the same
area-averaging grid extended by py rows and px columns each side (computed in numpy,
the image border replicated), so its centre equals the plain patch on almost every
pixel and differs by at most one grey level (float rounding). The C++ pipeline cuts
layout patches only (cpp/src/face/patches.cpp, through patches.cut_patch); the fixed
crop and the lighting are OpenCV's.
"""
import math
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

from .align import MEAN_SHAPE, to_pixels
from .patches import cut_flipped, get_layout, patch_name, resolve_patch
from .patches import cut_patch as cut_region

LIGHTING = ("none", "hist", "clahe")


def margin_pad(height, width, margin):
    """(py, px): the pixels a margin crop adds on each side of a height x width patch."""
    return int(np.floor(margin * height + 0.5)), int(np.floor(margin * width + 0.5))


def _check_margin(margin):
    try:
        m = float(margin)
    except (TypeError, ValueError):
        m = math.nan
    if not 0 <= m <= 1:
        raise ValueError(f"the patch margin must be a number in [0, 1], got {margin!r}")
    return m


def _check_lighting(mode):
    if mode not in LIGHTING:
        raise ValueError(f"lighting must be one of {', '.join(LIGHTING)}, got {mode!r}")


class _Margined:
    """What both inputs derive from their height, width, channels and margin."""

    @property
    def pad(self):
        return margin_pad(self.height, self.width, self.margin)

    @property
    def cache_shape(self):
        """(rows, cols, channels) of one cut with its margin: what the cache holds."""
        py, px = self.pad
        return self.height + 2 * py, self.width + 2 * px, self.channels

    def plain(self):
        """This input without its margin: the patch the network sees."""
        return replace(self, margin=0.0)


@dataclass(frozen=True)
class PatchSpec(_Margined):
    """The fixed patch: `crop` = (y0, x0, y1, x1) as fractions of the image,
    resized to height x width; channels 3 = RGB, 1 = grey.

    The default crop is the face of LFW's deep-funneled 250x250 images: YuNet
    landmarks on 600 of them put the eyes at y=112, x=104/148 and the mouth at
    y=155 (medians), and rows 71..189 x cols 75..175 hold brows to chin and
    cheek to cheek. Its aspect (1.175) matches 55x47 so faces are not
    stretched. The synthetic faces (synth.py) are drawn at the same place."""
    height: int = 55
    width: int = 47
    channels: int = 3
    crop: tuple = (0.285, 0.30, 0.755, 0.70)
    lighting: str = "none"
    margin: float = 0.0     # the cache's surround, for augmentation (module docstring)

    def __post_init__(self):
        object.__setattr__(self, "crop", tuple(float(c) for c in self.crop))
        object.__setattr__(self, "margin", _check_margin(self.margin))
        y0, x0, y1, x1 = self.crop
        if self.height < 1 or self.width < 1 or self.channels not in (1, 3):
            raise ValueError(f"PatchSpec needs height, width >= 1 and channels 1 or 3, got {self}")
        if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
            raise ValueError("PatchSpec.crop must be 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, "
                             f"got {self.crop}")
        _check_lighting(self.lighting)

    def to_dict(self):
        d = {**asdict(self), "crop": list(self.crop)}
        if self.lighting == "none":  # the dict (and every key made from it) as before lighting
            del d["lighting"]
        if self.margin == 0:         # likewise as before margins
            del d["margin"]
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["height"]), int(d["width"]), int(d["channels"]), tuple(d["crop"]),
                   d.get("lighting", "none"), d.get("margin", 0.0))


@dataclass(frozen=True)
class LayoutPatch(_Margined):
    """Patch `index` of the layout named `layout` ("deepid2" or "deepid",
    face.patches) of faces aligned by `deepid2 align`.
    landmarks: "csv" (the aligned landmarks of the dataset's landmarks.csv; faces
    it does not list get the mean shape), "mean" (the canonical MEAN_SHAPE for
    every face, as the verifier uses by default) or "auto" (csv where the file
    exists; data.build_cache resolves it)."""
    layout: str
    index: int
    landmarks: str = "auto"
    lighting: str = "none"
    margin: float = 0.0     # the cache's surround, for augmentation (module docstring)

    def __post_init__(self):
        object.__setattr__(self, "index", resolve_patch(get_layout(self.layout), self.index))
        if self.landmarks not in ("auto", "csv", "mean"):
            raise ValueError(f"landmarks must be auto, csv or mean, got {self.landmarks!r}")
        _check_lighting(self.lighting)
        object.__setattr__(self, "margin", _check_margin(self.margin))

    @property
    def layout_obj(self):
        return get_layout(self.layout)

    @property
    def shape(self):
        return self.layout_obj.patch_shape(self.index)

    height = property(lambda self: self.shape[0])
    width = property(lambda self: self.shape[1])
    channels = property(lambda self: self.shape[2])

    @property
    def name(self):
        return patch_name(self.layout_obj, self.index)

    def to_dict(self):
        d = dict(kind="layout", layout=self.layout, index=self.index, name=self.name,
                 landmarks=self.landmarks, lighting=self.lighting, height=self.height,
                 width=self.width, channels=self.channels)
        if self.margin:              # the dict as before margins when there is none
            d["margin"] = self.margin
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(d["layout"], int(d["index"]), d.get("landmarks", "auto"),
                   d.get("lighting", "none"), d.get("margin", 0.0))


def spec_from_dict(d):
    """PatchSpec or LayoutPatch from its to_dict()."""
    return LayoutPatch.from_dict(d) if d.get("kind") == "layout" else PatchSpec.from_dict(d)


def normalise_lighting(patch, mode):
    """uint8 h x w x C patch (RGB or grey) with its luminance equalised ("hist" or
    "clahe"); "none" returns it as it is."""
    if mode == "none":
        return patch
    eq = (cv2.equalizeHist if mode == "hist"
          else cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply)
    if patch.shape[2] == 1:
        return eq(np.ascontiguousarray(patch[:, :, 0]))[..., None]
    ycc = cv2.cvtColor(patch, cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = eq(np.ascontiguousarray(ycc[:, :, 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def cut_fixed_patch(img, spec):
    """PatchSpec `spec` of a BGR uint8 image (as cv2.imread gives) -> height x width x
    channels uint8 (RGB or grey); with a margin, the larger crop before lighting
    (module docstring)."""
    h, w = img.shape[:2]
    y0, x0, y1, x1 = (int(round(f * n)) for f, n in zip(spec.crop, (h, w, h, w)))
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise ValueError(f"image of {w}x{h} is too small for the crop {spec.crop}")
    if spec.margin:
        py, px = spec.pad
        wy = _area_weights(y0, y1 - y0, spec.height, py, h)
        wx = _area_weights(x0, x1 - x0, spec.width, px, w)
        p = np.einsum("yi,ixc,jx->yjc", wy, img.astype(np.float64), wx, optimize=True)
        p = np.clip(np.rint(p), 0, 255).astype(np.uint8)
    else:
        p = cv2.resize(img[y0:y1, x0:x1], (spec.width, spec.height),
                       interpolation=cv2.INTER_AREA)
    if spec.channels == 1:
        p = cv2.cvtColor(p, cv2.COLOR_BGR2GRAY)[..., None]
    else:
        p = cv2.cvtColor(p, cv2.COLOR_BGR2RGB)
    return p if spec.margin else normalise_lighting(p, spec.lighting)


def _area_weights(start, n_src, n_out, pad, n_img):
    """(n_out + 2 pad) x n_img weights of INTER_AREA's grid for n_src source pixels from
    `start` onto n_out, extended by pad outputs each side: output d averages source
    [start + d s, start + (d + 1) s), s = n_src / n_out, the image border replicated."""
    s = n_src / n_out
    lo = start + np.arange(-pad, n_out + pad) * s
    j = np.arange(int(np.floor(lo[0])), int(np.ceil(lo[-1] + s)) + 1)
    overlap = np.clip(np.minimum(j + 1, lo[:, None] + s) - np.maximum(j, lo[:, None]), 0, None)
    out = np.zeros((len(lo), n_img))
    np.add.at(out, (slice(None), np.clip(j, 0, n_img - 1)), overlap / s)
    return out


def cut_layout_patch(img, spec, landmarks=None):
    """(patch, flipped counterpart) of LayoutPatch `spec` from an aligned BGR face; the
    counterpart is already mirrored (patches.cut_flipped). landmarks: 5 x 2 pixels of the
    aligned face, default the canonical mean shape."""
    if landmarks is None:
        landmarks = to_pixels(MEAN_SHAPE, (img.shape[1], img.shape[0]))
    layout, pad = spec.layout_obj, spec.pad
    lighting = "none" if spec.margin else spec.lighting   # a margin crop is kept before lighting
    return (normalise_lighting(cut_region(img, landmarks, layout, spec.index, pad), lighting),
            normalise_lighting(cut_flipped(img, landmarks, layout, spec.index, pad), lighting))
