"""Training of the level-1 landmark ConvNet F1 (deepid2_core.nets.landmark) on
MTFL (training/mtfl.py), a task on the one loop (training/loop.py), and its
command, `deepid2 train-landmarks` (train_landmarks_main).

Face boxes (deepid2_core.face.box): "haar" (the rule: Haar, then Haar on the padded
image, then the central box) or "central". Training mixes the two: with probability
`fallback_share` a training sample uses the central box even where Haar found a face,
with a wider scale jitter (`central_scale`: the central box does not follow the face's
size), so the network is right on either kind of box (images Haar misses get the central
box at test time). Models record which engine found their boxes.

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
The best epoch is that of the lowest held-out NME (training/landmark_eval.py).
"""

import json
import math
import os
import time
from dataclasses import asdict

import cv2
import numpy as np

from ..face.box import haar_detector, resolve_detector
from ..face.landmarks import (CHECKPOINT_FORMAT, FLIP_ORDER, POINTS, LandmarkModel,
                              apply_affine, crop_matrix, flip_points, fold_target_stats,
                              load_landmark_model, save_model, standardise, warp)
from ..nets.landmark import LandmarkNet, LandmarkNetConfig, init_params, unit_rms_init
from ..progress import note
from .checkpoint import BEST, epoch_meta, load_checkpoint, save_checkpoint
from .landmark_configs import LandmarkTrainConfig
from .landmark_eval import evaluate, nme, summarise
from .lock import RunLock
from .loop import Group, Loop, Plan
from .mtfl import TEST_LIST, TRAIN_LIST, build_cache, file_sha256, read_mtfl

FINAL, EVAL = "landmarks.safetensors", "eval.json"
# what the loop draws of a run (loop.draw_curves), from the log's metrics
CURVES = (("training loss per epoch", [("train", "loss")], "loss (1/2 squared error, std units)",
           1.0),
          ("validation NME per epoch", [("val NME", "val_nme")],
           "NME (% of inter-ocular distance)", 100.0))


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


# -- training --------------------------------------------------------------------------------
def landmark_split(n, seed, val_fraction):
    """(train, val) rows of a cache of n images, the level-1 split; the cascade
    keeps it, so that its held-out images are unseen by every level."""
    order = np.random.default_rng([seed, 2**31]).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def nme_metrics(val):
    """The held-out metrics of a landmark task: summarise's NME and failure rate."""
    return dict(val_nme=val["nme"] if val else None,
                val_failure_rate=val["failure_rate"] if val else None)


class LandmarkTask:
    """The level-1 landmark net on a mtfl.LandmarkCache: a task on the one loop
    (training/loop.py). The best epoch: the lowest held-out NME (the lowest loss
    without held-out images)."""
    curves = CURVES

    def __init__(self, cache, run_dir, cfg, backend, net_cfg=None):
        self.cache, self.cfg, self.be = cache, cfg, backend
        self.net_cfg = net_cfg or LandmarkNetConfig()
        if cache.crop.shape[1:] != (self.net_cfg.size, self.net_cfg.size):
            raise ValueError(f"the cache holds {cache.crop.shape[1:]} crops, the network "
                             f"takes {self.net_cfg.size}x{self.net_cfg.size}")
        self.net = LandmarkNet(self.net_cfg, backend)
        self.train_idx, self.val_idx = landmark_split(len(cache), cfg.seed, cfg.val_fraction)
        if len(self.train_idx) < cfg.batch:
            raise ValueError(f"{len(self.train_idx)} training images, fewer than a batch "
                             f"({cfg.batch})")
        self.plan = Plan(os.fspath(run_dir), cfg.epochs, len(self.train_idx) // cfg.batch,
                         cfg.batch, cfg.lr)
        self.best = ("val_nme" if len(self.val_idx) else "loss", min)
        self.xbuf = np.empty((cfg.batch, 1, self.net_cfg.size, self.net_cfg.size), np.float32)

    def init_state(self, checkpoint=None):
        if checkpoint is not None:
            state, tensors, meta = load_checkpoint(
                checkpoint, CHECKPOINT_FORMAT, self.net_cfg.to_dict(), asdict(self.cfg),
                "landmark training")
            if meta.get("cache_key") != self.cache.meta["key"]:
                raise ValueError(f"cannot resume {checkpoint}: it was trained on other data or "
                                 f"boxes")
            return dict(state, target_mean=tensors["target/mean"],
                        target_std=tensors["target/std"])
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
                    target_std=np.float32([std]))

    def param_groups(self, state):
        cfg = self.cfg
        return [Group(state["params"], state["velocity"], cfg.momentum, cfg.weight_decay)]

    @staticmethod
    def model_params(state):
        """The trained parameters with the target standardisation folded into the output
        layer: the network then outputs the normalised coordinates themselves."""
        return fold_target_stats(state["params"], state["target_mean"], state["target_std"])

    # -- one batch: forward, loss, backward ------------------------------------
    def batch(self, epoch, step):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch, step])
        idx = rng.choice(self.train_idx, cfg.batch, replace=False)
        return make_batch(self.cache, idx, rng, cfg, self.net_cfg, out=self.xbuf)

    def loss_and_grads(self, state, batch, global_step, grads):
        x, target = batch
        target = (target - state["target_mean"]) / state["target_std"]  # standardised
        acts = self.net.forward(state["params"], x)
        loss, dout = self.be.regression_loss(acts["out"], target)
        self.net.backward(state["params"], acts, dout, grads)
        return dict(loss=float(loss))

    # -- an epoch ------------------------------------------------------------
    def evaluate(self, state):
        return nme_metrics(self.validate(self.model_params(state)))

    def validate(self, params, idx=None):
        idx = self.val_idx if idx is None else idx
        if len(idx) == 0:
            return None
        model = LandmarkModel(params, self.net_cfg, backend=self.be, flip_average=False)
        pred = model.predict_crops(self.cache.crop[idx], self.cache.crop_inv[idx])
        return summarise(nme(pred, self.cache.points[idx]))

    # -- files ---------------------------------------------------------------
    def save(self, state, path, what):
        """The "checkpoint" (to resume) or the "model" (face.landmarks.save_model)."""
        if what == "checkpoint":
            meta = {"format": CHECKPOINT_FORMAT,
                    "net": json.dumps(self.net_cfg.to_dict(), sort_keys=True),
                    "train": json.dumps(asdict(self.cfg), sort_keys=True),
                    "data": self.cache.meta.get("list_file", ""),
                    "cache_key": self.cache.meta["key"], **epoch_meta(state)}
            save_checkpoint(path, state, {"target/mean": state["target_mean"],
                                          "target/std": state["target_std"]}, meta)
            return
        meta = dict(train=json.dumps(asdict(self.cfg), sort_keys=True),
                    detector=self.cfg.detector, epoch=state["epoch"],
                    cache_key=self.cache.meta["key"])
        save_model(path, self.model_params(state), self.net_cfg, meta)


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
    command = command or "train_landmarks_main(" + ", ".join(
        f"{k}={v!r}" for k, v in dict(data_dir=os.fspath(data_dir), out_dir=os.fspath(out_dir),
                                      epochs=epochs, seed=seed, batch=batch, lr=lr,
                                      detector=detector, **augment).items()) + ")"
    read_mtfl(data_dir, TRAIN_LIST)  # a wrong --data is named before OUT is made
    with RunLock(out_dir):
        return _train_landmarks(data_dir, out_dir, cfg, be, resume, cache_dir, progress, log,
                                command, evaluate_test)


def _train_landmarks(data_dir, out_dir, cfg, be, resume, cache_dir, progress, log, command,
                     evaluate_test):
    """train_landmarks_main's work, under the lock on out_dir."""
    det, net_cfg = cfg.detector, LandmarkNetConfig()
    t0 = time.perf_counter()
    cache = build_cache(data_dir, TRAIN_LIST, cache_dir or os.path.join(out_dir, "cache"),
                        net_cfg, det, progress=progress, log=log)
    t_cache = time.perf_counter() - t0
    task = LandmarkTask(cache, out_dir, cfg, be, net_cfg)
    t1 = time.perf_counter()
    state = Loop(task, log=log, progress=progress).run(resume=resume)
    t_train = time.perf_counter() - t1
    best = load_landmark_model(os.path.join(out_dir, BEST), backend=be)
    extra = dict(command=command,
                 train_list_sha256=file_sha256(os.path.join(data_dir, TRAIN_LIST)),
                 train_images=len(task.train_idx), val_images=len(task.val_idx),
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
