"""Training of the facial point cascade's refinement levels (Sun, Wang, Tang, CVPR 2013,
levels 2 and 3; nets: deepid2_core.nets.refine, inference: deepid2_core.face.
landmark_cascade) on top of a level-1 model.

The defaults (DEFAULT_LEVELS, DEFAULT_DISPLACE; chosen on level 1's held-out training
images, never on the test list): level 2 two nets per point, patches of 1.25 r and
1.45 r, trained with displacements of std 0.12 r; level 3 one net per point (the paper
has two: one keeps the model file under 2 MB), patch 0.9 r, std 0.06 r.

Training (the paper's sampling): the frame and patch centres of a sample come from
a simulated estimate, the ground truth with every coordinate of every point moved
by a normal draw of std `displace * r` (clipped to +- `max_displace * r`); the
frame of that estimate is then turned by a uniform angle in +- `rotate` degrees and
its r scaled log-uniformly by 1 / (1 + scale) .. 1 + scale; half of the samples are
the mirror image (the left and right points swap, so each eye and mouth-corner net
sees both sides). Loss: regression_loss on the offsets standardised by their
std over 4,096 samples (folded into the output layer of the saved nets). Momentum
SGD, weight decay on weights, cosine learning rate; the batch of step s of epoch e
of level l is drawn from default_rng([seed, l, e, s]) and the ops are
deterministic, so a run is a pure function of data, config and seed; a checkpoint
after every epoch resumes exactly. Levels are trained one after the other, each
on the ground truth (not on the previous level's output), with the same split of
the training list as level 1 (its held-out images measure every level: their
starting points are level 1's flip-averaged predictions on Haar boxes); the saved
nets are those of the epoch with the lowest held-out NME.

`deepid2 train-landmark-cascade --data DIR --out OUT` writes a model file: the level-1
model file with the levels added, `cascade_*` metadata recording the command, training
configs, held-out and test results (`train_cascade_main`).
"""

import json
import math
import os
import time
from dataclasses import asdict

import numpy as np

from .. import safetensors
from ..face.box import resolve_detector
from ..face.landmark_cascade import (CASCADE_FORMAT, CascadeLevel, LandmarkCascade,
                                     cascade_from, level_patches, mirror_points, net_name,
                                     points_to_offsets, refine_flip_averaged, shape_frame)
from ..face.image import read_image
from ..face.landmarks import load_landmark_model, save_model
from ..nets.refine import RefineLevelConfig, RefineNet, init_refine_params, unit_rms_init
from ..progress import note
from .checkpoint import BEST, epoch_meta, load_checkpoint, save_checkpoint
from .landmark_configs import LandmarkTrainConfig, RefineTrainConfig
from .landmark_eval import evaluate, nme, summarise
from .landmarks import EVAL, FINAL, landmark_split, nme_metrics
from .lock import RunLock
from .loop import Group, Loop, Plan
from .mtfl import TEST_LIST, TRAIN_LIST, build_cache, read_mtfl

CHECKPOINT_FORMAT = "deepid2-landmark-cascade-checkpoint/1"


class TrainImages:
    """Grey images (M x H x W uint8, image i in its top-left hw[i]) with their points."""

    def __init__(self, images, hw, points):
        self.images = np.ascontiguousarray(images, np.uint8)
        self.hw = np.asarray(hw, np.int64).reshape(-1, 2)
        self.points = np.asarray(points, np.float64).reshape(-1, 5, 2)
        if not len(self.images) == len(self.hw) == len(self.points):
            raise ValueError("images, hw and points differ in length")

    @classmethod
    def read(cls, data_dir, rel_paths, points):
        imgs = []
        for rel in rel_paths:
            g = read_image(os.path.join(os.fspath(data_dir), rel), grey=True)[0]
            if g is None:
                raise ValueError(f"cannot read {rel}")
            imgs.append(g)
        h = max(g.shape[0] for g in imgs)
        w = max(g.shape[1] for g in imgs)
        out = np.zeros((len(imgs), h, w), np.uint8)
        for i, g in enumerate(imgs):
            out[i, :g.shape[0], :g.shape[1]] = g
        return cls(out, [g.shape for g in imgs], points)

    def __len__(self):
        return len(self.images)


def make_samples(data, idx, rng, cfg, level_cfg):
    """A training batch of a level: patches N x 5 x J x 1 x S x S and standardised-to-be
    targets (offsets in patch sides) N x 5 x J x 2, drawn as the module docstring says."""
    n = len(idx)
    flips = rng.random(n) < 0.5 if cfg.flip else np.zeros(n, bool)
    disp = np.clip(rng.standard_normal((n, 5, 2)) * cfg.displace, -cfg.max_displace,
                   cfg.max_displace)
    turn = np.radians(rng.uniform(-cfg.rotate, cfg.rotate, n))
    zoom = np.exp(rng.uniform(-1.0, 1.0, n) * math.log1p(cfg.scale))
    truth = data.points[idx]
    truth = np.where(flips[:, None, None], mirror_points(truth, data.hw[idx, 1]), truth)
    _, r_true = shape_frame(truth, False)
    est = truth + disp * r_true[:, None, None]
    a, r = shape_frame(est, level_cfg.rotate_frame)
    patches, a, r, side = level_patches(level_cfg, data.images, data.hw, idx, est, flips,
                                        angle=a + turn, radius=r * zoom)
    return patches, points_to_offsets(est, a, side, truth)


class CascadeTask:
    """The nets of one level (5 x len(patches)), all on the same batches: a task
    on the one loop (training/loop.py), in run_dir/levelL. The best epoch: the
    lowest held-out NME (the lowest loss without held-out images); no plot."""
    curves = None

    def __init__(self, data, train_idx, val_idx, val_start, run_dir, number, level_cfg, cfg,
                 backend):
        self.data, self.number, self.level_cfg, self.cfg, self.be = data, number, level_cfg, \
            cfg, backend
        self.train_idx, self.val_idx = np.asarray(train_idx), np.asarray(val_idx)
        self.val_start = np.asarray(val_start, np.float64).reshape(-1, 5, 2)
        if len(self.val_start) != len(self.val_idx):
            raise ValueError("val_start must hold one estimate per validation image")
        if len(self.train_idx) < cfg.batch:
            raise ValueError(f"{len(self.train_idx)} training images, fewer than a batch "
                             f"({cfg.batch})")
        self.plan = Plan(os.path.join(os.fspath(run_dir), f"level{number}"), cfg.epochs,
                         len(self.train_idx) // cfg.batch, cfg.batch, cfg.lr,
                         label=f"level {number} ")
        self.best = ("val_nme" if len(self.val_idx) else "loss", min)
        self.net = RefineNet(level_cfg, backend)
        self.nets = [(p, j) for p in range(5) for j in range(len(level_cfg.patches))]

    def init_state(self, checkpoint=None):
        cfg = self.cfg
        if checkpoint is not None:
            state, tensors, _ = load_checkpoint(
                checkpoint, CHECKPOINT_FORMAT, self.level_cfg.to_dict(), asdict(cfg),
                "landmark cascade training")
            return dict(state, target_std=tensors["target/std"])
        rng = np.random.default_rng([cfg.seed, self.number, 2**31 + 2])
        idx = np.sort(rng.choice(self.train_idx, min(4096, len(self.train_idx)), replace=False))
        _, t = make_samples(self.data, idx, rng, cfg, self.level_cfg)
        std = np.sqrt(np.mean(t ** 2, axis=(0, 1, 3))).astype(np.float32)  # per patch size
        rng = np.random.default_rng([cfg.seed, self.number, 2**31 + 1])
        probe = np.sort(rng.choice(self.train_idx, min(256, len(self.train_idx)),
                                   replace=False))
        patches, _ = make_samples(self.data, probe, rng, cfg, self.level_cfg)
        params = {}
        for p, j in self.nets:
            q = init_refine_params(self.level_cfg, np.random.default_rng(
                [cfg.seed, self.number, p, j]))
            unit_rms_init(self.net, q, np.ascontiguousarray(patches[:, p, j]))
            for k, v in q.items():
                params[net_name(self.number, p, j) + k] = v
        return dict(params=params, velocity={k: np.zeros_like(v) for k, v in params.items()},
                    target_std=std)

    def param_groups(self, state):
        cfg = self.cfg
        return [Group(state["params"], state["velocity"], cfg.momentum, cfg.weight_decay)]

    def net_params(self, params, p, j):
        pre = net_name(self.number, p, j)
        return {k[len(pre):]: v for k, v in params.items() if k.startswith(pre)}

    def model_level(self, state):
        """The trained level with the target std folded into the output layers."""
        out = {}
        for p, j in self.nets:
            q = dict(self.net_params(state["params"], p, j))
            std = state["target_std"][j]
            q["out.w"] = np.ascontiguousarray(q["out.w"] * std, np.float32)
            q["out.b"] = np.ascontiguousarray(q["out.b"] * std, np.float32)
            out[(p, j)] = q
        return CascadeLevel(self.number, self.level_cfg, out, self.be)

    # -- one batch: forward, loss, backward of every net ---------------------------
    def batch(self, epoch, step):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.number, epoch, step])
        idx = rng.choice(self.train_idx, cfg.batch, replace=False)
        return make_samples(self.data, idx, rng, cfg, self.level_cfg)

    def loss_and_grads(self, state, batch, global_step, grads):
        """The mean loss of the nets; each net's gradient into its part of grads
        (the nets share no parameter: one SGD step after all of them is the
        same as one after each)."""
        patches, target = batch
        target = (target / state["target_std"][None, None, :, None]).astype(np.float32)
        total = 0.0
        for p, j in self.nets:
            pre = net_name(self.number, p, j)
            q = self.net_params(state["params"], p, j)
            acts = self.net.forward(q, np.ascontiguousarray(patches[:, p, j]))
            loss, dout = self.be.regression_loss(acts["out"],
                                                 np.ascontiguousarray(target[:, p, j]))
            self.net.backward(q, acts, dout, {k: grads[pre + k] for k in q})
            total += float(loss)
        return dict(loss=total / len(self.nets))

    # -- an epoch ------------------------------------------------------------
    def evaluate(self, state):
        return nme_metrics(summarise(self.validate(self.model_level(state)))
                           if len(self.val_idx) else None)

    def validate(self, level, flip_average=True):
        """Held-out errors (N x 5 / inter-ocular distance) after this level."""
        pts = refine_flip_averaged(level, self.data.images, self.data.hw, self.val_idx,
                                   self.val_start, flip_average)
        return nme(pts, self.data.points[self.val_idx])

    # -- files ---------------------------------------------------------------
    def save(self, state, path, what):
        """The "checkpoint" (to resume) or the "model": the level alone, as a cascade."""
        train = json.dumps(asdict(self.cfg), sort_keys=True)
        if what == "checkpoint":
            save_checkpoint(path, state, {"target/std": state["target_std"]},
                            {"format": CHECKPOINT_FORMAT, "train": train,
                             "net": json.dumps(self.level_cfg.to_dict(), sort_keys=True),
                             "level": str(self.number), **epoch_meta(state)})
            return
        cas = LandmarkCascade([self.model_level(state)])
        safetensors.save(path, cas.tensors(), {**cas.meta_fields(), "format": CASCADE_FORMAT,
                                               "epoch": str(state["epoch"]), "train": train})


def load_level_file(path, backend):
    """The CascadeLevel of a trainer's best.safetensors."""
    tensors, meta = safetensors.load(path)
    cas, _ = cascade_from(tensors, meta, backend)
    return cas.levels[0], meta


# -- the command -----------------------------------------------------------------------------
DEFAULT_LEVELS = {2: dict(patches=(1.25, 1.45)), 3: dict(patches=(0.9,))}
DEFAULT_DISPLACE = {2: 0.12, 3: 0.06}


def params_sha256(params):
    """sha256 of named float32 arrays (names and bytes in sorted-name order)."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], np.float32).tobytes())
    return h.hexdigest()


def level1_split(n, model_meta):
    """(train, val) rows of a cache of n images: level 1's own split (its seed and
    val_fraction), so that the held-out images are unseen by every level."""
    train = {**asdict(LandmarkTrainConfig()), **json.loads(model_meta.get("train", "{}"))}
    return landmark_split(n, int(train["seed"]), float(train["val_fraction"]))


def train_cascade_main(data_dir, out_dir, level1=None, levels=(2,), epochs=30, seed=0, batch=64,
                       lr=0.02, displace=None, scale=None, rotate=None, patches=None,
                       rotate_frame=None, resume=False, cache_dir=None, backend="cpu",
                       progress=True, log=note, command=None, evaluate_test=True):
    """`deepid2 train-landmark-cascade --data DIR --out DIR [--level1 MODEL]`: train the
    refinement levels on DIR/new_training.txt on top of the level-1 model (default: the
    shipped one), write OUT/landmarks.safetensors (level 1 and the levels, with their configs,
    command and held-out/test results in its metadata), OUT/eval.json and per level
    OUT/levelL/{checkpoint,best}.safetensors and log.jsonl. displace: the training
    displacement std of each level (default DEFAULT_DISPLACE); patches: the patch sides of
    each level (default DEFAULT_LEVELS). backend: the cpu backend (the nets take numpy
    arrays). Returns a summary dict."""
    from ..backends import get_backend
    be = get_backend(backend) if isinstance(backend, str) else backend
    levels = [int(v) for v in levels]
    if not levels or sorted(levels) != levels or levels[0] != 2 or \
            levels != list(range(2, 2 + len(levels))):
        raise ValueError(f"levels must be 2, or 2 and 3, ...; got {levels}")
    displace = {int(k): float(v) for k, v in (displace or {}).items()}
    patches = {int(k): tuple(v) for k, v in (patches or {}).items()}
    level_cfgs, cfgs_of = {}, {}  # every level's settings checked before any work
    for number in levels:
        lc = dict(DEFAULT_LEVELS.get(number, DEFAULT_LEVELS[3]))
        if number in patches:
            lc["patches"] = tuple(patches[number])
        if rotate_frame is not None:
            lc["rotate_frame"] = bool(rotate_frame)
        level_cfgs[number] = RefineLevelConfig(**lc)
        d = displace.get(number, DEFAULT_DISPLACE.get(number, DEFAULT_DISPLACE[3]))
        cfgs_of[number] = RefineTrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed,
                                            displace=d, **{k: v for k, v in dict(
                                                scale=scale, rotate=rotate).items()
                                                if v is not None})
    read_mtfl(data_dir, TRAIN_LIST)  # a wrong --data is named before OUT is made
    base = load_landmark_model(level1, backend=be, levels=1)
    with RunLock(out_dir):
        return _train_cascade(data_dir, out_dir, base, be, levels, level_cfgs, cfgs_of,
                              resume, cache_dir, progress, log, command, evaluate_test,
                              dict(level1=level1, levels=levels, epochs=epochs, seed=seed,
                                   batch=batch, lr=lr, displace=displace, scale=scale,
                                   rotate=rotate, patches=patches, rotate_frame=rotate_frame))


def _train_cascade(data_dir, out_dir, base, be, levels, level_cfgs, cfgs_of, resume, cache_dir,
                   progress, log, command, evaluate_test, settings):
    """train_cascade_main's work, under the lock on out_dir."""
    det = resolve_detector(base.meta.get("detector", "haar"))
    t0 = time.perf_counter()
    cache = build_cache(data_dir, TRAIN_LIST, cache_dir or os.path.join(out_dir, "cache"),
                          base.cfg, det, progress=progress, log=log)
    data = TrainImages.read(data_dir, cache.paths, cache.points)
    train_idx, val_idx = level1_split(len(cache), base.meta)
    start_pts = base.predict_crops(cache.crop[val_idx], cache.crop_inv[val_idx])
    t_data = time.perf_counter() - t0
    val_rows = [summarise(nme(start_pts, data.points[val_idx]))]
    log(f"level 1 on the {len(val_idx)} held-out images: NME "
        f"{100 * val_rows[0]['nme']:.2f}%")
    trained, cfgs, times = [], {}, {}
    for number in levels:
        level_cfg, cfg = level_cfgs[number], cfgs_of[number]
        task = CascadeTask(data, train_idx, val_idx, start_pts, out_dir, number, level_cfg, cfg,
                           be)
        t1 = time.perf_counter()
        state = Loop(task, log=log, progress=progress).run(resume=resume)
        times[number] = round(time.perf_counter() - t1, 1)
        level, _ = load_level_file(os.path.join(task.plan.run_dir, BEST), be)
        start_pts = refine_flip_averaged(level, data.images, data.hw, val_idx, start_pts)
        val_rows.append(summarise(nme(start_pts, data.points[val_idx])))
        log(f"after level {number} (epoch {state['best_epoch']}): held-out NME "
            f"{100 * val_rows[-1]['nme']:.2f}%")
        trained.append(level)
        cfgs[number] = dict(train=asdict(cfg), best_epoch=state["best_epoch"],
                            train_seconds=times[number])
    cascade = LandmarkCascade(trained)
    meta = {k: v for k, v in base.meta.items() if k not in ("format", "net", "points")
            and not k.startswith("cascade")}
    meta.update(cascade_command=command or "train_cascade_main(" + ", ".join(
        f"{k}={v!r}" for k, v in dict(data_dir=os.fspath(data_dir), out_dir=os.fspath(out_dir),
                                      **settings).items()) + ")",
                cascade_train=json.dumps(cfgs, sort_keys=True),
                cascade_level1_params_sha256=params_sha256(base.params),
                cascade_val=json.dumps([dict(levels=i + 1, nme=r["nme"],
                                             failure_rate=r["failure_rate"], n=r["n"])
                                        for i, r in enumerate(val_rows)]),
                cascade_data_seconds=round(t_data, 1),
                cascade_threads=be.max_threads())
    summary = dict(val=val_rows, train_seconds=times)
    final = os.path.join(out_dir, FINAL)
    save_model(final, base.params, base.cfg, meta, cascade=cascade)
    if evaluate_test and os.path.isfile(os.path.join(data_dir, TEST_LIST)):
        t2 = time.perf_counter()
        # the file as inference runs it (in C++ on the cpu backend), then saved again with
        # the figure
        res = evaluate(load_landmark_model(final, backend=be), data_dir, TEST_LIST,
                       detector=det, progress=progress)
        with open(os.path.join(out_dir, EVAL), "w") as f:
            json.dump(res, f, indent=1)
        meta["cascade_test"] = json.dumps({k: v for k, v in res.items()
                                           if k not in ("errors", "skipped")}, sort_keys=True)
        summary["test"] = res
        log(f"test ({res['n']} images, {det} boxes, {time.perf_counter() - t2:.0f} s): NME "
            f"{100 * res['nme']:.2f}%, failure rate {100 * res['failure_rate']:.2f}%")
        save_model(final, base.params, base.cfg, meta, cascade=cascade)
    return summary
