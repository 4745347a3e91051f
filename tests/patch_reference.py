"""The numpy patch cutting that deepid2_core/face/patches.py used before the C++
(cpp/src/face/patches.cpp) replaced it, kept as the reference the C++ must match bit
for bit (tests/cpp/test_geometry.py). Moved here unchanged: the same order of
operations, so the same roundings."""
import numpy as np

from deepid2_core.face.patches import flip_partner, region_box

_GREY = np.array([0.299, 0.587, 0.114])                # R, G, B weights (OpenCV's)
_GRID = 1024.0                                          # sub-pixel snapping


def _taps(centre, length, n_out, n_src, pad=0):
    """Per output pixel: source indices (clamped: border replicated) and
    triangle-filter weights. Centres and radius are snapped to 1/1024 px, so
    the weights are integers (in 1/1024 px) and every sum below is exact: a
    mirrored region gives bit-for-bit mirrored values. pad: that many more
    output pixels on each side, on the same grid (a margin crop)."""
    step = length / n_out
    radius = np.round(max(1.0, step) * _GRID)
    off = (np.arange(-pad, n_out + pad) + 0.5 - n_out / 2) * step  # symmetric about 0
    c = np.round((centre + off) * _GRID)
    lo = np.floor((c - radius) / _GRID).astype(np.int64) + 1
    idx = lo[:, None] + np.arange(int(np.ceil(2 * radius / _GRID)) + 1)
    wts = np.maximum(0.0, radius - np.abs(idx * _GRID - c[:, None]))
    return np.clip(idx, 0, n_src - 1), wts


def _sample(img, box, ph, pw, pad=(0, 0)):
    """BGR image, region (cx, cy, w, h) -> float64 ph x pw x 3, RGB order
    (with pad = (py, px): (ph + 2 py) x (pw + 2 px), the region's surround)."""
    cx, cy, w, h = box
    ix, wx = _taps(cx, w, pw, img.shape[1], pad[1])              # (pw, taps)
    iy, wy = _taps(cy, h, ph, img.shape[0], pad[0])              # (ph, taps)
    x0, y0 = ix.min(), iy.min()
    src = img[y0:iy.max() + 1, x0:ix.max() + 1].astype(np.float64)
    rows = np.einsum("yt,ytxc->yxc", wy, src[iy - y0])           # ph x nx x 3, exact
    out = np.einsum("xt,yxtc->yxc", wx, rows[:, ix - x0])        # ph x pw x 3, exact
    out /= (wy.sum(1)[:, None] * wx.sum(1)[None, :])[:, :, None]
    return out[:, :, ::-1]                                        # BGR -> RGB


def _finish(rgb, colour):
    if colour == "gray":
        rgb = (rgb @ _GREY)[:, :, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def cut_patch(aligned, landmarks, layout, index, pad=(0, 0)):
    """patches.cut_patch as numpy computed it."""
    ph, pw, _ = layout.patch_shape(index)
    box = region_box(layout, index, landmarks, (aligned.shape[1], aligned.shape[0]))
    return _finish(_sample(aligned, box, ph, pw, pad), layout.patch(index)[2])


def cut_flipped(aligned, landmarks, layout, index, pad=(0, 0)):
    """patches.cut_flipped as numpy computed it."""
    return np.ascontiguousarray(cut_patch(aligned, landmarks, layout,
                                          flip_partner(layout, index), pad)[:, ::-1])
