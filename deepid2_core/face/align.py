"""Similarity alignment on the two eye centres and the mouth-corner midpoint.

DeepID / DeepID2 align faces "by similarity transformation according to the
two eye centers and the mid-point of the two mouth corners". Here that is the
least-squares similarity (rotation + uniform scale + translation, never a
reflection) taking those 3 points onto canonical positions, in closed form:
with the points as complex numbers s_i, d_i and their means removed,
d ~ z s + t has z = sum(conj(s_i) d_i) / sum(|s_i|^2) (Umeyama's solution
restricted to det R = +1, which in 2-D is this complex regression).

Landmarks are 5 (x, y) rows in this order: left eye, right eye, nose tip,
left mouth corner, right mouth corner, left/right as seen in the image
(MTFL's order, and YuNet's). Pixel coordinates are pixel centres: pixel
(i, j) is at x = j, y = i, as OpenCV uses them.

The canonical face (`CANONICAL`, fractions of the aligned width / height; a
fraction f of a side n sits at pixel f * n - 0.5, so the geometry is the same
at any output size and mirror-symmetric about the vertical centre line):

* left eye (0.412, 0.45), right eye (0.588, 0.45), mouth midpoint (0.5, 0.626);
* at the default 250 x 250 size: eyes at x = 102.5 / 146.5, y = 112, mouth
  midpoint at (124.5, 156); inter-ocular distance 44 px = eye-to-mouth distance.

That is LFW's deep-funneled geometry (YuNet on 800 LFW images: eyes at
y = 112, x = 104 / 148, mouth corners at y = 155, median inter-ocular and
eye-to-mouth distances both 44 px), so an LFW image aligns to nearly itself,
faces keep LFW's native resolution, and the largest DeepID2 patch (the head at
scale 1.44, 190 x 222 px) still fits inside the frame. `MEAN_SHAPE` adds a
typical nose tip and mouth corners (from the same YuNet medians). For a
non-square size the fractions stretch the canonical triangle, which a
similarity cannot follow: the fit is then least-squares, eyes still level.
"""
import numpy as np

DEFAULT_SIZE = (250, 250)                        # (width, height)
CANONICAL = np.array([[0.412, 0.45], [0.588, 0.45], [0.5, 0.626]])
MEAN_SHAPE = np.array([[0.412, 0.45], [0.588, 0.45], [0.5, 0.55],
                       [0.425, 0.626], [0.575, 0.626]])
MIRROR_INDEX = (1, 0, 2, 4, 3)                   # landmark k <-> MIRROR_INDEX[k] in a mirror


def _points(p, n=None, what="points"):
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or (n is not None and p.shape[0] != n):
        raise ValueError(f"{what} must be an array of shape ({n or 'N'}, 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what} must be finite")
    return p


def to_pixels(fractions, size=DEFAULT_SIZE):
    """Fractions of (width, height) -> pixel-centre coordinates in that size."""
    return np.asarray(fractions, np.float64) * np.asarray(size, np.float64) - 0.5


def alignment_points(landmarks5):
    """5 landmarks -> the 3 points aligned on: left eye, right eye, mouth midpoint."""
    lm = _points(landmarks5, 5, "landmarks5")
    return np.stack([lm[0], lm[1], (lm[3] + lm[4]) / 2])


def similarity_transform(src, dst):
    """Least-squares similarity (no reflection) with dst ~ M @ [src, 1].
    src, dst: (N, 2), N >= 2, src not all equal. Returns M, float64 2 x 3
    [[a, -b, tx], [b, a, ty]] (scale = hypot(a, b), angle = atan2(b, a))."""
    src, dst = _points(src, what="src"), _points(dst, what="dst")
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"src and dst need the same number (>= 2) of points, "
                         f"got {len(src)} and {len(dst)}")
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sm, dm = s.mean(), d.mean()
    s0, d0 = s - sm, d - dm
    den = np.sum(np.abs(s0) ** 2)
    if den <= 1e-12 * max(1.0, np.max(np.abs(s)) ** 2):
        raise ValueError("src points coincide: no similarity is defined")
    z = np.sum(np.conj(s0) * d0) / den
    t = dm - z * sm
    return np.array([[z.real, -z.imag, t.real], [z.imag, z.real, t.imag]])


def transform_points(m, pts):
    """Apply a 2 x 3 affine matrix to (N, 2) points."""
    pts = _points(pts)
    return pts @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def alignment_matrix(landmarks5, size=DEFAULT_SIZE, canonical=CANONICAL):
    """The 2 x 3 similarity taking the image to the aligned face of `size`."""
    dst = to_pixels(_points(canonical, 3, "canonical"), size)
    return similarity_transform(alignment_points(landmarks5), dst)


def align_face(image, landmarks5, size=DEFAULT_SIZE):
    """Warp `image` so that its eyes and mouth midpoint land on CANONICAL
    (fractions of size = (width, height)). Returns (aligned image of
    height x width, the 5 landmarks in its coordinates, float64 (5, 2)).
    Bilinear interpolation in double precision, outside the image the border
    replicated: the C++ (cpp/src/face/geometry.cpp) the C++ pipeline aligns with.
    image: uint8 H x W x 3 (BGR) or H x W."""
    from .. import _cpu      # here, not at import: the geometry needs no build
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)))):
        raise ValueError("image must be a non-empty uint8 H x W x 3 (BGR) or H x W array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)} "
                         f"{getattr(image, 'shape', '')}")
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive (width, height), got {size}")
    lm = np.ascontiguousarray(_points(landmarks5, 5, "landmarks5"))
    return _cpu.align_face(np.ascontiguousarray(image), lm, w, h)


def mirror_landmarks(landmarks5, width):
    """Landmarks of the left-right mirrored image (x -> width - 1 - x), with
    left and right eyes and mouth corners swapped so the order still holds."""
    lm = _points(landmarks5, 5, "landmarks5")
    out = lm[list(MIRROR_INDEX)].copy()
    out[:, 0] = (width - 1) - out[:, 0]
    return out
