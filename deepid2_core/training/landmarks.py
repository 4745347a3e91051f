"""Training and evaluation of the level-1 landmark ConvNet F1 (deepid2_core.nets.landmark)
on MTFL.

Face boxes (deepid2_core.face.box): "haar" (the rule: Haar, then Haar on the padded
image, then the central box) or "central". Training mixes the two: with probability
`fallback_share` a training sample uses the central box even where Haar found a face,
with a wider scale jitter (`central_scale`: the central box does not follow the face's
size), so the network is right on either kind of box (images Haar misses get the central
box at test time). Models record which engine found their boxes.

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

Evaluation: per-point error |p - g| / inter-ocular distance (between the
two ground-truth eye centres), the mean of those (NME), and the failure
rate: images whose mean error over the 5 points exceeds 10%.
"""

import hashlib
import json
import math
import os
import time
from dataclasses import asdict

import cv2
import numpy as np

from .. import safetensors
from ..face.box import CENTRAL_BOX, central_box, context_box, face_box, haar_detector, \
    resolve_detector, turn_box, unturn_points
from ..face.image import read_image
from ..face.native import pipeline as native_pipeline
from ..face.landmarks import (CHECKPOINT_FORMAT, FLIP_ORDER, POINTS, LandmarkModel,
                              apply_affine, crop_matrix, flip_points, fold_target_stats,
                              invert_affine, load_landmark_model, predict_landmarks, save_model,
                              standardise, warp)
from ..nets.landmark import LandmarkNet, LandmarkNetConfig, init_params, unit_rms_init
from ..plot import two_panels
from ..progress import Progress, note
from .lock import RunLock
from .landmark_configs import LandmarkTrainConfig
from .loop import Group, Loop, load_checkpoint, read_log, save_checkpoint

# /4: crops cut by the C++ warp (face.landmarks.warp), no longer cv2.warpAffine
CACHE_FORMAT = "deepid2-landmarks-cache/4"
CHECKPOINT, BEST, FINAL, LOG, PLOT, EVAL = ("checkpoint.safetensors", "best.safetensors",
                                            "landmarks.safetensors", "log.jsonl", "curves.png",
                                            "eval.json")
TRAIN_LIST, TEST_LIST = "new_training.txt", "new_testing.txt"
CONTEXT = 96   # training cache: the square around both boxes grown 2x, at CONTEXT x CONTEXT
FAILURE = 0.10


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
                log=note):
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



# -- evaluation ------------------------------------------------------------------------------
def evaluate(model, data_dir, list_file=TEST_LIST, detector="auto", limit=None, progress=False):
    """NME and failure rate of model on the first `limit` images of an MTFL list, boxes by
    the rule ("auto": Haar; "yunet": the C++ pipeline's YuNet boxes, mapped to Haar's, the
    central box where it finds none; "central": the central box). Returns a dict with nme,
    per_point, failure_rate, point_failure_rate, n, the detector, how often Haar found the
    face, and the per-image errors."""
    detector = resolve_detector(detector)
    rows = read_mtfl(data_dir, list_file)[:limit]
    errs, found, skipped = [], 0, []
    bar = Progress(len(rows), f"evaluating on {list_file}", enabled=progress)
    for rel, pts in rows:
        bar.update(1)
        path = os.path.join(os.fspath(data_dir), rel)
        if detector == "yunet":     # YuNet sees colour; the nets, as in the pipeline, grey
            img = read_image(path)[0]
            gray = None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            img = gray = read_image(path, grey=True)[0]
        if gray is None:
            skipped.append(rel)
            continue
        turn = 0
        if detector == "yunet":     # the pipeline's C++ detector, as `deepid2 align` runs it
            faces = native_pipeline(None).detect(img, "largest")
            box, hit = (faces[0][0].astype(np.float64), True) if faces else \
                (central_box(img.shape), False)
            turn = faces[0][3] if faces else 0
        else:
            box, hit = face_box(img, detector)
        found += hit
        if turn:                    # a face lying turned: the nets see it upright, as in the pipeline
            h, w = gray.shape
            upright = np.ascontiguousarray(np.rot90(gray, turn))
            pred = unturn_points(predict_landmarks(model, upright, turn_box(box, turn, w, h)),
                                 turn, w, h)
        else:
            pred = predict_landmarks(model, gray, box)
        errs.append(nme(pred, pts[None])[0])
    bar.close()
    res = summarise(errs)
    res.update(detector=detector, list_file=list_file,
               found=found if detector != "central" else None, skipped=skipped,
               errors=np.asarray(errs).tolist())
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
        img = read_image(os.path.join(os.fspath(data_dir), rel))[0]
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
def landmark_split(n, seed, val_fraction):
    """(train, val) rows of a cache of n images, the level-1 split; the cascade
    keeps it, so that its held-out images are unseen by every level."""
    order = np.random.default_rng([seed, 2**31]).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class LandmarkRegression:
    """What the landmark tasks (level 1 here, the cascade levels in cascade.py)
    share on the loop: one regression loss per step, NME validation, and the
    lowest held-out NME (else the lowest loss) as the best epoch; one SGD group
    of every net parameter."""

    def param_groups(self, state):
        cfg = self.cfg
        return [Group(state["params"], state["velocity"], cfg.momentum, cfg.weight_decay)]

    @staticmethod
    def step_loss(sums, groups):
        return sums[0] / groups

    @staticmethod
    def running_values(loss):
        return (loss,)

    @staticmethod
    def progress_text(sums, steps):
        return f"loss {sums[0] / steps:.5f}"

    @staticmethod
    def epoch_row(sums, k, val, state):
        return dict(loss=sums[0] / k, val_nme=val["nme"] if val else None,
                    val_failure_rate=val["failure_rate"] if val else None)

    @staticmethod
    def score(row, val, epoch):
        return row["val_nme"] if val else row["loss"]

    @staticmethod
    def improves(score, best):
        return score < best


class LandmarkTask(LandmarkRegression):
    """The level-1 landmark net on a LandmarkCache: a task on the one loop
    (training/loop.py)."""
    checkpoint_name, n_stats, label = CHECKPOINT, 1, ""
    device_keys = ()  # the batches are made on the host

    def __init__(self, cache, run_dir, cfg, backend, net_cfg=None, log=note, progress=True):
        self.cache, self.run_dir, self.cfg, self.be = cache, os.fspath(run_dir), cfg, backend
        self.net_cfg = net_cfg or LandmarkNetConfig()
        if cache.crop.shape[1:] != (self.net_cfg.size, self.net_cfg.size):
            raise ValueError(f"the cache holds {cache.crop.shape[1:]} crops, the network "
                             f"takes {self.net_cfg.size}x{self.net_cfg.size}")
        self.net = LandmarkNet(self.net_cfg, backend)
        self.log, self.progress = log, progress
        self.log_path = os.path.join(self.run_dir, LOG)
        self.train_idx, self.val_idx = landmark_split(len(cache), cfg.seed, cfg.val_fraction)
        if len(self.train_idx) < cfg.batch:
            raise ValueError(f"{len(self.train_idx)} training images, fewer than a batch "
                             f"({cfg.batch})")
        self.epochs, self.batch, self.lr = cfg.epochs, cfg.batch, cfg.lr
        self.steps_per_epoch = len(self.train_idx) // cfg.batch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.xbuf = np.empty((cfg.batch, 1, self.net_cfg.size, self.net_cfg.size), np.float32)
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
        return fold_target_stats(state["params"], state["target_mean"], state["target_std"])

    def meta(self, state):
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
                        self.meta(state))

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
                    history=read_log(self.log_path, epoch))

    # -- one batch: forward, loss, backward ------------------------------------
    def batches(self, epoch, step, parts):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch, step])
        idx = rng.choice(self.train_idx, cfg.batch, replace=False)
        return [make_batch(self.cache, idx, rng, cfg, self.net_cfg, out=self.xbuf)]

    def loss_and_grads(self, state, batch, global_step, grads):
        x, target = batch
        target = (target - state["target_mean"]) / state["target_std"]  # standardised
        acts = self.net.forward(state["params"], x)
        loss, dout = self.be.regression_loss(acts["out"], target)
        self.net.backward(state["params"], acts, dout, grads)
        return (float(loss),)

    # -- an epoch ------------------------------------------------------------
    def validation(self, state):
        return self.validate(self.model_params(state))

    def validate(self, params, idx=None):
        idx = self.val_idx if idx is None else idx
        if len(idx) == 0:
            return None
        model = LandmarkModel(params, self.net_cfg, backend=self.be, flip_average=False)
        pred = model.predict_crops(self.cache.crop[idx], self.cache.crop_inv[idx])
        return summarise(nme(pred, self.cache.points[idx]))

    @staticmethod
    def epoch_line(row):
        nme_ = row["val_nme"]
        return (f"epoch {row['epoch']}: loss {row['loss']:.5f} val NME "
                f"{nme_ if nme_ is None else round(100 * nme_, 2)}% "
                f"({row['images_per_s']:.0f} img/s)")

    # -- files ---------------------------------------------------------------
    def save_best(self, state):
        self.save_model(state, os.path.join(self.run_dir, BEST))

    def save_model(self, state, path, extra=None):
        meta = dict(train=json.dumps(asdict(self.cfg), sort_keys=True),
                    detector=self.cfg.detector, epoch=state["epoch"],
                    cache_key=self.cache.meta["key"], **(extra or {}))
        save_model(path, self.model_params(state), self.net_cfg, meta)

    def plot(self, history):
        plot_history(history, os.path.join(self.run_dir, PLOT))


class LandmarkTrainer(Loop):
    """The landmark task on the loop: LandmarkTrainer(cache, run_dir, cfg, backend).run()."""
    model_params = staticmethod(LandmarkTask.model_params)

    def __init__(self, cache, run_dir, cfg, backend, net_cfg=None, log=note, progress=True):
        task = LandmarkTask(cache, run_dir, cfg, backend, net_cfg, log, progress)
        super().__init__(task)
        self.cfg, self.net_cfg, self.net, self.run_dir = cfg, task.net_cfg, task.net, task.run_dir
        self.train_idx, self.val_idx = task.train_idx, task.val_idx
        self.steps_per_epoch = task.steps_per_epoch
        self.fresh_state = task.fresh_state
        self.validate, self.save_model = task.validate, task.save_model


def plot_history(history, path):
    get = lambda key: [h.get(key) for h in history]  # noqa: E731
    two_panels(path, ("training loss per epoch", [("train", get("loss"))],
                      "loss (1/2 squared error, std units)", 1.0),
               ("validation NME per epoch", [("val NME", get("val_nme"))],
                "NME (% of inter-ocular distance)", 100.0))


def train_landmarks_main(data_dir, out_dir, epochs=120, seed=0, batch=64, lr=0.02,
                         detector="auto", resume=False, cache_dir=None, backend="cpu",
                         progress=True, log=note, command=None, evaluate_test=True,
                         **augment):
    """`deepid2 train-landmarks --data DIR --out DIR`: train F1 on DIR/new_training.txt
    (MTFL), evaluate on DIR/new_testing.txt, write OUT/landmarks.safetensors (the best
    validation epoch, with its config, command and test results in its metadata), OUT/eval.json,
    checkpoint.safetensors (resumable), log.jsonl and curves.png. Returns a summary dict."""
    from ..backends import get_backend
    be = get_backend(backend) if isinstance(backend, str) else backend
    det = resolve_detector(detector)
    if detector == "auto" and det == "central":
        log(f"OpenCV {cv2.__version__} has no Haar cascade here: training on the central box "
            f"only (detector=central)")
    cfg = LandmarkTrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed, detector=det,
                              **{k: v for k, v in augment.items() if v is not None})
    read_mtfl(data_dir, TRAIN_LIST)  # a wrong --data is named before OUT is made
    with RunLock(out_dir):
        return _train_landmarks(data_dir, out_dir, cfg, be, det, resume, cache_dir, progress,
                                log, command, evaluate_test, epochs, seed, batch, lr, detector,
                                augment)


def _train_landmarks(data_dir, out_dir, cfg, be, det, resume, cache_dir, progress, log,
                     command, evaluate_test, epochs, seed, batch, lr, detector, augment):
    """train_landmarks_main's work, under the lock on out_dir."""
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
                 opencv=cv2.__version__, threads=be.max_threads(),
                 haar_engine=haar_detector().engine if det == "haar" else None)
    summary = dict(extra)
    if evaluate_test and os.path.isfile(os.path.join(data_dir, TEST_LIST)):
        res = evaluate(best, data_dir, TEST_LIST, detector=det, progress=progress)
        with open(os.path.join(out_dir, EVAL), "w") as f:
            json.dump(res, f, indent=1)
        extra["test"] = json.dumps({k: v for k, v in res.items()
                                    if k not in ("errors", "skipped")}, sort_keys=True)
        summary["test"] = res
        log(f"test ({res['n']} images, {det} boxes, a face found in {res['found']}): NME "
            f"{100 * res['nme']:.2f}%, failure rate {100 * res['failure_rate']:.2f}%")
    meta = dict(train=json.dumps(asdict(cfg), sort_keys=True), detector=det,
                epoch=state["best_epoch"], cache_key=cache.meta["key"], **extra)
    save_model(os.path.join(out_dir, FINAL), best.params, net_cfg, meta)
    return summary
