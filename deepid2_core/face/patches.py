"""Multi-patch layouts as data, and cutting patches from an aligned face.

A `PatchLayout` is a named list of `Region`s, a list of scales and a list of
colours ("rgb": 3 channels in RGB order; "gray": 1 channel). Patch index k
is region r, scale s, colour c with k = (r * n_scales + s) * n_colours + c.
A region has a shape, "rect" (patches of rect_size, 55 x 47 h x w) or
"square" (47 x 47), a width at scale 1 as a fraction of the aligned face's
width (its height follows from the patch's aspect, so nothing is stretched),
and a centre: fractions (fx, fy) of the aligned face (pixel fx * W - 0.5,
as in align.py), or, when `landmark` is set, that landmark of the aligned face
plus (fx * W, fy * H) as an offset. Scale s multiplies the width about the
same centre. Layouts are JSON-friendly (`to_dict` / `from_dict`).

Flipping (DeepID2): the horizontally flipped counterpart of patch k is the
mirror image of its partner `flip_partner(layout, k)`: the patch of the
mirror-symmetric region (left <-> right eye, left <-> right mouth corner, a
left-half region <-> the right half), same scale and colour; a symmetric
region is its own partner. So `cut_flipped(face, lm, L, k)` equals patch k
cut from the mirrored face. Every region's mirror must be in the layout.

Sampling (cpp/src/face/patches.cpp; the C++ pipeline cuts with the same
code): each output pixel is a triangle-filtered (bilinear, antialiased by
widening the filter when shrinking) weighted mean of source pixels, the border
replicated outside the image, then rounded half to even. Filter centres and
radius are snapped to 1/1024 px, so the weights are integers and every sum is
exact: the filter is mirror-symmetric and patches of mirrored faces are exact
mirror images. Grey is 0.299 R + 0.587 G + 0.114 B of the filtered colour
patch. tests/patch_reference.py is the numpy version it matches bit for bit.

The layouts, in units of the canonical inter-ocular distance d (0.176 of the
aligned width, 44 px at 250 x 250); centres relative to the eye midpoint,
x to the right, y down:

DeepID2 (NIPS 2014), 20 regions x 5 scales (1.2^-2 .. 1.2^2) x {RGB, grey}
= 200 patches. The paper shows 25 of its patches (fig. 3) and says they vary
in position, scale and colour around 21 SDM landmarks; with 5 landmarks the
20 regions chosen here are 10 global ones (head, face, inner face, upper face,
lower face, eyes, nose and mouth, brows and forehead, left and right half
face) and 10 centred on landmarks (each eye, each eye with its cheek, nose,
wide nose, each mouth corner, each mouth corner with the chin).
DeepID (CVPR 2014), 10 regions x 3 scales (0.8, 1, 1.25) x {RGB, grey} = 60:
as its fig. 3, 5 global regions (head, face, inner face, upper face, lower
face) and 5 regions centred on the 5 landmarks. Its patches were 39 x 31 and
31 x 31; both layouts here use 55 x 47 and 47 x 47 (``deepid_layout(rect=(39,
31), square=(31, 31))`` gives the paper's). At the canonical landmarks every
region of both layouts lies inside the 250 x 250 aligned face at every scale.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .align import CANONICAL, MIRROR_INDEX

COLOURS = ("rgb", "gray")
SHAPES = ("rect", "square")
_TOL = 1e-6


@dataclass(frozen=True)
class Region:
    name: str
    shape: str                      # "rect" | "square"
    centre: tuple                   # (fx, fy), or the offset from `landmark`
    width: float                    # fraction of the aligned face's width, at scale 1
    landmark: Optional[int] = None  # 0..4: centred on that landmark

    def __post_init__(self):
        object.__setattr__(self, "centre", tuple(float(v) for v in self.centre))
        object.__setattr__(self, "width", float(self.width))
        if self.shape not in SHAPES or len(self.centre) != 2 or not self.width > 0:
            raise ValueError(f"bad region {self}: shape rect|square, centre (fx, fy), width > 0")
        if self.landmark is not None and self.landmark not in range(5):
            raise ValueError(f"region {self.name!r}: landmark must be 0..4, got {self.landmark}")

    def mirrored_as(self, other):
        """Whether `other` is this region mirrored left-right."""
        if self.shape != other.shape or abs(self.width - other.width) > _TOL:
            return False
        if self.landmark is None:
            cx = 1.0 - self.centre[0]
            ok = other.landmark is None
        else:
            cx = -self.centre[0]
            ok = other.landmark == MIRROR_INDEX[self.landmark]
        return (ok and abs(other.centre[0] - cx) < _TOL
                and abs(other.centre[1] - self.centre[1]) < _TOL)


@dataclass(frozen=True)
class PatchLayout:
    name: str
    regions: tuple
    scales: tuple
    colours: tuple = COLOURS
    rect_size: tuple = (55, 47)     # (height, width)
    square_size: tuple = (47, 47)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "regions", tuple(self.regions))
        set_(self, "scales", tuple(float(s) for s in self.scales))
        set_(self, "colours", tuple(self.colours))
        set_(self, "rect_size", tuple(int(v) for v in self.rect_size))
        set_(self, "square_size", tuple(int(v) for v in self.square_size))
        if not self.regions or not self.scales or not all(s > 0 for s in self.scales):
            raise ValueError("a layout needs regions and positive scales")
        if not self.colours or any(c not in COLOURS for c in self.colours):
            raise ValueError(f"colours must be from {COLOURS}, got {self.colours}")
        if len({r.name for r in self.regions}) != len(self.regions):
            raise ValueError("region names must be unique")
        partners = []
        for r in self.regions:
            hits = [j for j, o in enumerate(self.regions) if r.mirrored_as(o)]
            if len(hits) != 1:
                raise ValueError(f"region {r.name!r} needs exactly one mirror-image region in "
                                 f"the layout, found {len(hits)}")
            partners.append(hits[0])
        set_(self, "_partners", tuple(partners))

    def __len__(self):
        return len(self.regions) * len(self.scales) * len(self.colours)

    def patch(self, index):
        """index -> (region index, scale index, colour)."""
        if not 0 <= index < len(self):
            raise IndexError(f"patch index {index} out of range 0..{len(self) - 1}")
        rs, c = divmod(int(index), len(self.colours))
        r, s = divmod(rs, len(self.scales))
        return r, s, self.colours[c]

    def index(self, region, scale, colour):
        r = region if isinstance(region, int) else [g.name for g in self.regions].index(region)
        return (r * len(self.scales) + scale) * len(self.colours) + self.colours.index(colour)

    def patch_shape(self, index):
        """(height, width, channels) of patch `index`."""
        r, _, c = self.patch(index)
        h, w = self.rect_size if self.regions[r].shape == "rect" else self.square_size
        return h, w, 3 if c == "rgb" else 1

    def region_partner(self, r):
        return self._partners[r]

    def to_dict(self):
        return dict(name=self.name, scales=list(self.scales), colours=list(self.colours),
                    rect_size=list(self.rect_size), square_size=list(self.square_size),
                    regions=[dict(name=r.name, shape=r.shape, centre=list(r.centre),
                                  width=r.width, landmark=r.landmark) for r in self.regions])

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], tuple(Region(**r) for r in d["regions"]), tuple(d["scales"]),
                   tuple(d["colours"]), tuple(d["rect_size"]), tuple(d["square_size"]))


def flip_partner(layout, index):
    """The patch whose mirror image is patch `index`'s flipped counterpart."""
    r, s, c = layout.patch(index)
    return layout.index(layout.region_partner(r), s, c)


def region_box(layout, index, landmarks, size):
    """Patch `index`'s region in a face of size (W, H): (cx, cy, w, h) pixels."""
    r, s, _ = layout.patch(index)
    reg = layout.regions[r]
    w_img, h_img = size
    ph, pw, _ = layout.patch_shape(index)
    fx, fy = reg.centre
    if reg.landmark is None:
        cx, cy = fx * w_img - 0.5, fy * h_img - 0.5
    else:
        if landmarks is None:
            raise ValueError(f"region {reg.name!r} is centred on a landmark: landmarks needed")
        lx, ly = np.asarray(landmarks, np.float64).reshape(5, 2)[reg.landmark]
        if not (np.isfinite(lx) and np.isfinite(ly)):
            raise ValueError(f"landmark {reg.landmark} is not finite: {(lx, ly)}")
        cx, cy = lx + fx * w_img, ly + fy * h_img
    w = reg.width * layout.scales[s] * w_img
    return cx, cy, w, w * ph / pw


def _check(aligned):
    if not (isinstance(aligned, np.ndarray) and aligned.dtype == np.uint8 and aligned.ndim == 3
            and aligned.shape[2] == 3 and aligned.shape[0] > 0 and aligned.shape[1] > 0):
        raise ValueError("aligned must be a uint8 H x W x 3 BGR image (as align_face gives)")


def _cut(aligned, landmarks, layout, index, mirror, pad):
    """Patch `index` cut by the C++ (cpp/src/face/patches.cpp), its columns
    reversed when mirror."""
    from .. import _cpu      # here, not at import: the layouts need no build
    _check(aligned)
    r, s, colour = layout.patch(index)
    reg = layout.regions[r]
    ph, pw, _ = layout.patch_shape(index)
    if landmarks is not None:
        landmarks = np.ascontiguousarray(np.asarray(landmarks, np.float64).reshape(5, 2))
    return _cpu.cut_region_patch(
        np.ascontiguousarray(aligned), landmarks, reg.centre, reg.width,
        -1 if reg.landmark is None else reg.landmark, layout.scales[s], (ph, pw),
        colour == "gray", mirror, (int(pad[0]), int(pad[1])))


def cut_patch(aligned, landmarks, layout, index, pad=(0, 0)):
    """Patch `index` of the aligned BGR face -> uint8 h x w x C (RGB or grey).
    pad = (py, px) pixels: the (h + 2 py) x (w + 2 px) crop around it on the same
    sampling grid, whose centre h x w is the patch bit for bit (a margin cache)."""
    return _cut(aligned, landmarks, layout, index, False, pad)


def cut_flipped(aligned, landmarks, layout, index, pad=(0, 0)):
    """The horizontally flipped counterpart of patch `index`: the mirror image
    of patch flip_partner(layout, index) (pad: as cut_patch)."""
    return _cut(aligned, landmarks, layout, flip_partner(layout, index), True, pad)


def cut_all(aligned, landmarks, layout, flipped=False):
    """Every patch of the layout, in index order. flipped=True gives the
    flipped counterparts."""
    cut = cut_flipped if flipped else cut_patch
    return [cut(aligned, landmarks, layout, k) for k in range(len(layout))]


def _layout(name, table, scales, rect, square):
    """Build a layout from rows (name, shape, (dx, dy), width, landmark) in
    units of the canonical inter-ocular distance, centres relative to the eye
    midpoint (global regions) or to the landmark (offsets)."""
    eye_mid = CANONICAL[:2].mean(0)
    d = CANONICAL[1, 0] - CANONICAL[0, 0]          # as fractions of the width (and height)
    regions = []
    for nm, shape, (dx, dy), w, lm in table:
        base = np.zeros(2) if lm is not None else eye_mid
        c = np.round(base + np.array([dx, dy]) * d, 6)
        regions.append(Region(nm, shape, (float(c[0]), float(c[1])), round(w * d, 6), lm))
    return PatchLayout(name, tuple(regions), scales, COLOURS, rect, square)


_GLOBAL = {   # name: (shape, centre, width)
    "head": ("rect", (0, 0.45), 3.0), "face": ("rect", (0, 0.6), 2.5),
    "inner_face": ("square", (0, 0.5), 2.0), "upper_face": ("square", (0, -0.1), 2.2),
    "lower_face": ("square", (0, 1.2), 2.0), "eyes": ("square", (0, 0), 1.7),
    "nose_mouth": ("rect", (0, 0.85), 1.3), "brows_forehead": ("square", (0, -0.7), 1.6),
    "left_half": ("rect", (-0.55, 0.55), 1.5), "right_half": ("rect", (0.55, 0.55), 1.5),
}


def deepid2_layout(rect=(55, 47), square=(47, 47)):
    """DeepID2's 20 regions x 5 scales x {RGB, grey} = 200 patches."""
    table = [(n, s, c, w, None) for n, (s, c, w) in _GLOBAL.items()] + [
        ("left_eye", "square", (0, 0), 1.0, 0), ("right_eye", "square", (0, 0), 1.0, 1),
        ("left_eye_cheek", "rect", (-0.1, 0.35), 1.3, 0),
        ("right_eye_cheek", "rect", (0.1, 0.35), 1.3, 1),
        ("nose", "rect", (0, 0), 1.2, 2), ("nose_wide", "square", (0, 0), 1.8, 2),
        ("left_mouth", "square", (0, 0), 1.0, 3), ("right_mouth", "square", (0, 0), 1.0, 4),
        ("left_mouth_chin", "rect", (0, 0.2), 1.3, 3),
        ("right_mouth_chin", "rect", (0, 0.2), 1.3, 4)]
    return _layout("deepid2", table, tuple(1.2 ** e for e in (-2, -1, 0, 1, 2)), rect, square)


def deepid_layout(rect=(55, 47), square=(47, 47)):
    """DeepID's 10 regions x 3 scales x {RGB, grey} = 60 patches."""
    table = [(n, *_GLOBAL[n], None) for n in
             ("head", "face", "inner_face", "upper_face", "lower_face")] + [
        ("left_eye", "square", (0, 0), 1.3, 0), ("right_eye", "square", (0, 0), 1.3, 1),
        ("nose", "rect", (0, 0), 1.3, 2),
        ("left_mouth", "square", (0, 0), 1.3, 3), ("right_mouth", "square", (0, 0), 1.3, 4)]
    return _layout("deepid", table, (0.8, 1.0, 1.25), rect, square)


DEEPID2 = deepid2_layout()
DEEPID = deepid_layout()


LAYOUTS = {"deepid2": DEEPID2, "deepid": DEEPID}


def get_layout(name):
    """A layout by name: "deepid2" (200 patches) or "deepid" (60)."""
    if isinstance(name, PatchLayout):
        return name
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown patch layout {name!r}: choose from "
                         f"{', '.join(sorted(LAYOUTS))}") from None


def patch_name(layout, index):
    """"region@scale/colour", e.g. "left_eye@1/gray" (the verifier's patch names)."""
    r, s, colour = layout.patch(index)
    return f"{layout.regions[r].name}@{layout.scales[s]:.4g}/{colour}"


def resolve_patch(layout, key):
    """A patch index from an index (int or digits) or a name as `patch_name` gives."""
    if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.strip().isdigit()):
        k = int(key)
        if not 0 <= k < len(layout):
            raise ValueError(f"patch index {k} out of range 0..{len(layout) - 1} of layout "
                             f"{layout.name!r}")
        return k
    names = [patch_name(layout, k) for k in range(len(layout))]
    if key in names:
        return names.index(key)
    raise ValueError(f"layout {layout.name!r} has no patch {key!r}: give an index "
                     f"0..{len(layout) - 1} or a name such as {names[0]!r}, "
                     f"{names[-1]!r} (region@scale/colour)")
