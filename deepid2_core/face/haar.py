"""Viola-Jones Haar cascade detection in numba, reading OpenCV's cascade files.

Why this exists: opencv-python 5 (what ``pip install`` picks for setup.py's
``opencv-python>=4.8``) has neither ``cv2.CascadeClassifier`` nor the
``cv2.data`` cascade files. So the project carries OpenCV's
``haarcascade_frontalface_default.xml`` as compressed arrays
(models/haarcascade_frontalface_default.npz, its Intel licence notice in
models/LICENSE-haarcascade; `save_cascade` wrote it) and evaluates it the
way OpenCV 4's ``detectMultiScale`` does (identical boxes and neighbour
counts on 400 of 400 LFW / CelebA images against opencv-python 4.14):

* grey image (``cv2.COLOR_BGR2GRAY``), resized (``INTER_LINEAR_EXACT``) by
  1 / factor for factor = 1, scale_factor, scale_factor^2, ... while the
  24x24 window fits; windows stepped by 2 px (1 px once factor >= 2) on the
  resized image, and the next window skipped after a stage-0 rejection;
* each window is normalised by the standard deviation of its inner
  (w-2) x (h-2) pixels, and windows whose std is <= 10 grey levels are
  skipped (OpenCV's HaarEvaluator::setWindow); a stage rejects when the sum
  (in double) of its stump outputs is below its threshold - 1e-5;
* hits become boxes (x * factor, y * factor, 24 * factor), computed in float
  and rounded half-to-even, merged by `group_rectangles` (OpenCV's
  groupRectangles, eps 0.2): a group survives with more than
  ``min_neighbors`` members, and its member count is the box's score.

Only stump-based, upright HAAR cascades in OpenCV's new XML format are read
(`cascade_from_xml`); that covers the frontal-face cascades OpenCV ships.
"""
import os
import xml.etree.ElementTree as ET

import cv2
import numba
import numpy as np

THRESHOLD_EPS = 1e-5        # OpenCV subtracts this from every stage threshold
GROUP_EPS = 0.2             # OpenCV's groupRectangles eps in detectMultiScale
DEFAULT_CASCADE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "models", "haarcascade_frontalface_default.npz")
_KEYS = ("window", "stage_threshold", "stage_first", "feature", "node_threshold",
         "leaf", "rects", "weights")


def cascade_from_xml(path):
    """OpenCV cascade XML (new format, BOOST + HAAR, stumps) -> dict of arrays:
    window (w, h); stage_threshold (S,); stage_first (S+1,) offsets into the
    weak classifiers; feature, node_threshold (T,); leaf (T, 2) [below, above];
    rects (F, 3, 4) int x, y, w, h; weights (F, 3) (0 for an unused 3rd rect)."""
    root = ET.parse(path).getroot().find("cascade")
    if root is None or root.findtext("featureType", "").strip() != "HAAR":
        raise ValueError(f"{path}: not a new-format OpenCV HAAR cascade")
    stage_thr, first, feat, node_thr, leaf = [], [0], [], [], []
    for st in root.find("stages"):
        stage_thr.append(float(st.findtext("stageThreshold")))
        for wc in st.find("weakClassifiers"):
            nodes = wc.findtext("internalNodes").split()
            if len(nodes) != 4:
                raise ValueError(f"{path}: only stump (one-node) weak classifiers are supported")
            feat.append(int(nodes[2]))
            node_thr.append(float(nodes[3]))
            leaf.append([float(v) for v in wc.findtext("leafValues").split()])
        first.append(len(feat))
    rects = []
    for f in root.find("features"):
        if f.findtext("tilted", "0").strip() not in ("0", ""):
            raise ValueError(f"{path}: tilted features are not supported")
        rs = [[float(v) for v in r.text.split()] for r in f.find("rects")]
        rects.append((rs + [[0, 0, 0, 0, 0.0]] * 3)[:3])
    r = np.array(rects, np.float64)
    window = [int(root.findtext("width")), int(root.findtext("height"))]
    return dict(window=np.array(window, np.int32),
                stage_threshold=np.array(stage_thr, np.float32),
                stage_first=np.array(first, np.int32), feature=np.array(feat, np.int32),
                node_threshold=np.array(node_thr, np.float32), leaf=np.array(leaf, np.float32),
                rects=r[:, :, :4].astype(np.int32), weights=r[:, :, 4].astype(np.float32))


def save_cascade(c, path):
    """Cascade arrays -> a compressed .npz file, as the package carries them."""
    arrays = {k: c[k] for k in _KEYS}
    if arrays["rects"].min() >= 0 and arrays["rects"].max() < 256:
        arrays["rects"] = arrays["rects"].astype(np.uint8)     # 24x24 window: bytes suffice
    np.savez_compressed(path, **arrays)


def load_cascade(path):
    with np.load(path, allow_pickle=False) as z:
        c = {k: z[k] for k in _KEYS}
    c["rects"] = c["rects"].astype(np.int32)
    return c


def default_cascade():
    """OpenCV's haarcascade_frontalface_default (carried in this package)."""
    return load_cascade(DEFAULT_CASCADE)


@numba.njit(cache=True, nogil=True)
def _scan(ii, sq, win_w, win_h, step, stage_thr, stage_first, feature, node_thr,
          leaf, rects, weights, out):
    """Run the cascade on every window of one scale; hits' (x, y) go to out.
    Each stump's rectangle corners become offsets into the flat integral
    image once per scale (as OpenCV's OptFeature does)."""
    h_n, w_n = ii.shape[0] - 1, ii.shape[1] - 1
    stride = ii.shape[1]
    flat, flat_sq = ii.ravel(), sq.ravel()
    n_t = feature.shape[0]
    ofs = np.empty((n_t, 3, 4), np.int64)
    wts = np.zeros((n_t, 3), np.float32)
    for t in range(n_t):
        f = feature[t]
        for k in range(3):
            x, y, w, h = rects[f, k, 0], rects[f, k, 1], rects[f, k, 2], rects[f, k, 3]
            ofs[t, k, 0] = y * stride + x
            ofs[t, k, 1] = y * stride + x + w
            ofs[t, k, 2] = (y + h) * stride + x
            ofs[t, k, 3] = (y + h) * stride + x + w
            wts[t, k] = weights[f, k]
    a0, a1 = stride + 1, stride + win_w - 1                 # inner (w-2) x (h-2) window
    a2, a3 = (win_h - 1) * stride + 1, (win_h - 1) * stride + win_w - 1
    area = (win_w - 2) * (win_h - 2)
    n = 0
    for y in range(0, h_n - win_h + 1, step):
        x = -step
        while x + step <= w_n - win_w:
            x += step
            p = y * stride + x
            s = flat[p + a3] - flat[p + a1] - flat[p + a2] + flat[p + a0]
            q = flat_sq[p + a3] - flat_sq[p + a1] - flat_sq[p + a2] + flat_sq[p + a0]
            nf = area * q - float(s) * float(s)
            if nf <= 0.0:
                continue                    # flat window
            inv = np.float32(1.0 / np.sqrt(nf))
            if area * inv >= 0.1:
                continue                    # std <= 10 grey levels: OpenCV skips it
            passed = True
            for st in range(stage_thr.shape[0]):
                acc = 0.0                   # double, as OpenCV sums a stage
                for t in range(stage_first[st], stage_first[st + 1]):
                    v = np.float32(0.0)
                    for k in range(3):
                        if wts[t, k] != 0.0:
                            r = (flat[p + ofs[t, k, 3]] - flat[p + ofs[t, k, 1]]
                                 - flat[p + ofs[t, k, 2]] + flat[p + ofs[t, k, 0]])
                            v += wts[t, k] * np.float32(r)
                    acc += leaf[t, 0] if v * inv < node_thr[t] else leaf[t, 1]
                if acc < stage_thr[st]:
                    passed = False
                    if st == 0:
                        x += step           # OpenCV skips the next window after a stage-0 reject
                    break
            if passed:
                out[n, 0] = x
                out[n, 1] = y
                n += 1
    return n


def _similar(a, b, eps):
    d = eps * (min(a[2], b[2]) + min(a[3], b[3])) * 0.5
    return (abs(a[0] - b[0]) <= d and abs(a[1] - b[1]) <= d
            and abs(a[0] + a[2] - b[0] - b[2]) <= d and abs(a[1] + a[3] - b[1] - b[3]) <= d)


def group_rectangles(rects, min_neighbors, eps=GROUP_EPS):
    """OpenCV's groupRectangles: cluster similar boxes (transitively), average
    each cluster, keep clusters with > min_neighbors members that are not
    inside a stronger cluster. Returns (boxes int (n, 4), counts (n,))."""
    rects = [tuple(int(v) for v in r) for r in rects]
    if min_neighbors <= 0 or not rects:
        return np.array(rects, np.int32).reshape(-1, 4), np.ones(len(rects), np.int32)
    parent = list(range(len(rects)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i in range(len(rects)):
        for j in range(i):
            if _similar(rects[i], rects[j], eps):
                parent[root(i)] = root(j)
    labels = {}
    for i in range(len(rects)):
        labels.setdefault(root(i), []).append(rects[i])
    groups = []
    for members in labels.values():     # cluster order = order of first member, as OpenCV
        inv = np.float32(1.0) / np.float32(len(members))      # float, as OpenCV averages
        avg = tuple(int(np.rint(np.float32(v) * inv)) for v in np.sum(members, axis=0))
        groups.append((avg, len(members)))
    keep = []
    for i, (r1, n1) in enumerate(groups):
        if n1 <= min_neighbors:
            continue
        inside = False
        for j, (r2, n2) in enumerate(groups):
            if j == i or n2 <= min_neighbors:
                continue
            dx, dy = int(round(r2[2] * eps)), int(round(r2[3] * eps))
            if (r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy
                    and r1[0] + r1[2] <= r2[0] + r2[2] + dx
                    and r1[1] + r1[3] <= r2[1] + r2[3] + dy and (n2 > max(3, n1) or n1 < 3)):
                inside = True
                break
        if not inside:
            keep.append((r1, n1))
    boxes = np.array([k[0] for k in keep], np.int32).reshape(-1, 4)
    return boxes, np.array([k[1] for k in keep], np.int32)


def detect_multiscale(gray, cascade, scale_factor=1.1, min_neighbors=3, min_size=None,
                      max_size=None):
    """Grey uint8 image -> (boxes int32 (n, 4) as x, y, w, h; neighbour counts)."""
    if scale_factor <= 1:
        raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
    gray = np.ascontiguousarray(gray, np.uint8)
    h, w = gray.shape
    win_w, win_h = (int(v) for v in cascade["window"])
    min_w, min_h = min_size or (0, 0)
    max_w, max_h = max_size or (w, h)
    raw = []
    factor = 1.0
    while True:
        ww, wh = int(round(win_w * factor)), int(round(win_h * factor))
        if ww > max_w or wh > max_h:
            break
        sw, sh = int(round(w / factor)), int(round(h / factor))
        if sw < win_w or sh < win_h:
            break
        if ww >= min_w and wh >= min_h:
            img = gray if (sw, sh) == (w, h) else cv2.resize(gray, (sw, sh),
                                                            interpolation=cv2.INTER_LINEAR_EXACT)
            ii, sq = cv2.integral2(img, sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F)
            out = np.empty((max(sw * sh, 1), 2), np.int32)
            n = _scan(ii, sq, win_w, win_h, 1 if factor >= 2 else 2, cascade["stage_threshold"]
                      - np.float32(THRESHOLD_EPS), cascade["stage_first"], cascade["feature"],
                      cascade["node_threshold"], cascade["leaf"], cascade["rects"],
                      cascade["weights"], out)
            f32 = np.float32(factor)        # boxes in float and rounded half-to-even, as OpenCV
            bw, bh = int(np.rint(win_w * f32)), int(np.rint(win_h * f32))
            xy = np.rint(out[:n].astype(np.float32) * f32).astype(np.int64)
            raw += [(int(x), int(y), bw, bh) for x, y in xy]
        factor *= scale_factor
    return group_rectangles(raw, min_neighbors)
