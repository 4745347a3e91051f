"""MTFL, the data of the landmark nets (training/landmarks.py, cascade.py):
its list files and the training cache of decoded, cut images.

MTFL lists: `path x1..x5 y1..y5` (pixels). MTFL80's net_7876 lines whose
five points have a mean y above the upper third of the image (mean y < 0.325
H: 2,347 of its 5,849 lines) carry y coordinates about 28 px too small (the
points sit on the forehead or above the head; measured against Haar boxes:
their offset is 28.1 px with the same 1.8 px scatter as the good lines), so
`build_cache` leaves them out (`known_bad_annotation`).
"""

import hashlib
import json
import os

import cv2
import numpy as np

from .. import safetensors
from ..face.box import CENTRAL_BOX, central_box, context_box, face_box
from ..face.image import read_image
from ..face.landmarks import apply_affine, crop_matrix, invert_affine, warp
from ..progress import Progress, note

# /4: crops cut by the C++ warp (face.landmarks.warp), no longer cv2.warpAffine
CACHE_FORMAT = "deepid2-landmarks-cache/4"
TRAIN_LIST, TEST_LIST = "new_training.txt", "new_testing.txt"
CONTEXT = 96   # training cache: the square around both boxes grown 2x, at CONTEXT x CONTEXT


def known_bad_annotation(rel_path, pts, hw):
    """MTFL80's net_7876 lines whose y coordinates are ~28 px too small (the module docstring)."""
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


def file_sha256(path):
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
                log=note):
    """The LandmarkCache of data_dir/list_file; reused while the list, the rule and the crop
    are unchanged. detector: "haar" or "central" (resolved)."""
    data_dir = os.fspath(data_dir)
    rows = read_mtfl(data_dir, list_file)
    key = json.dumps(dict(format=CACHE_FORMAT, list=file_sha256(os.path.join(data_dir, list_file)),
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
        gray = read_image(os.path.join(data_dir, rel), grey=True)[0]
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
