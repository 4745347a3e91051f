"""Algorithm 1 of DeepID2: joint identification-verification training.

Every mini-batch is made of image pairs: images [a_0 .. a_{P-1}, b_0 ..
b_{P-1}] with pairs (a_i, b_i), a share `same_share` of them of one identity.
The loss is ident_weight * ident (softmax cross-entropy on every image) +
lambda * verif (on the pairs); ident_weight is 1 by default (the paper's loss),
0 gives the verification loss alone. The first `warmup_steps` steps train the
ident term alone.

Reproducibility: the batch of step s of epoch e is drawn from
np.random.default_rng([seed, e, s]), and every op is deterministic, so a run
is a pure function of its seed, data and config. A checkpoint is written
after every epoch; resuming from it continues exactly (bit for bit on the CPU).

Margin: fixed by default. With learn_margin, m follows its gradient, which
always points down (a smaller margin only lowers the loss of different
pairs), so left alone m collapses to 0 and the verification signal with it.
Safeguard: m is clamped to at least margin_min.

Learning rate: cosine decay from lr to 0 over the whole run. Weight decay
applies to weights (.w), not biases.

Backends: on the cpu backend everything is numpy. On the gpu backend the
patch cache is copied to the device once, and parameters, velocities and
batches stay there for the whole run: the host only draws the batch indices
(the same rng as on the cpu) and reads back the loss. Checkpoints and models
are written from host copies, so files do not depend on the backend.
"""

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import safetensors
from .data import assemble_batch, split_train_val
from .loop import (cosine_lr, load_checkpoint, read_log, save_checkpoint, sgd_step, start,
                   write_log)
from .nets.deepid2 import DeepID2, NetConfig, init_params
from .plot import plot_history
from .progress import Progress

CHECKPOINT, BEST, LOG, PLOT = "checkpoint.safetensors", "best.safetensors", "log.jsonl", "curves.png"
FORMAT = "deepid2-checkpoint/1"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lam: float = 0.05
    ident_weight: float = 1.0    # weight of the identification term; 0: verification alone
    verif: str = "l2"
    margin: float = 1.0          # l2/l2_pos/l1: m; cosine: initial w (b starts at 0)
    learn_margin: bool = False
    margin_min: float = 0.1
    same_share: float = 0.5
    warmup_steps: int = 0
    val_fraction: float = 0.1
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.batch < 2:
            raise ValueError(f"batch must be at least 2 (one pair), got {self.batch}")
        if self.verif not in ("l2", "l2_pos", "l1", "cosine"):
            raise ValueError(f"verif must be l2, l2_pos, l1 or cosine, got {self.verif!r}")
        if not 0.0 <= self.same_share <= 1.0:
            raise ValueError(f"same_share must be in [0, 1], got {self.same_share}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not self.ident_weight >= 0.0:
            raise ValueError(f"ident_weight must be at least 0, got {self.ident_weight}")
        if self.ident_weight == 0.0 and self.lam == 0.0:
            raise ValueError("ident_weight 0 and lambda 0 leave no loss to train")
        if self.ident_weight == 0.0 and self.warmup_steps > 0:
            raise ValueError("warmup steps train the ident term alone: none with ident_weight 0")

    # fields added after checkpoints were first written, with the value that
    # reproduces the older runs: left out of the stored dict at that value, so
    # such a run's files are byte-identical to before and old checkpoints resume
    LATER_FIELDS = {"ident_weight": 1.0}

    def to_dict(self):
        """The config as stored in checkpoints and models."""
        d = asdict(self)
        for k, v in self.LATER_FIELDS.items():
            if d[k] == v:
                del d[k]
        return d


def weigh_ident(loss, ident_weight):
    """loss (a backend's JointLoss, ident + lam * verif) as ident_weight *
    ident + lam * verif: dlogits, which only the ident term reaches, and total
    scaled. 1.0 returns loss itself, untouched."""
    if ident_weight == 1.0:
        return loss
    w = np.float32(ident_weight)
    return loss._replace(total=loss.total - (1.0 - ident_weight) * loss.ident,
                         dlogits=loss.dlogits * w)  # numpy and CuPy alike


class PairSampler:
    """Draws pair batches from the training images, by identity."""

    def __init__(self, labels, train_idx):
        self.idx = np.asarray(train_idx, np.int64)
        lab = labels[self.idx]
        order = np.argsort(lab, kind="stable")
        self.by_label = self.idx[order]
        self.lab_sorted = lab[order]
        ids, starts, counts = np.unique(self.lab_sorted, return_index=True, return_counts=True)
        self.start = dict(zip(ids.tolist(), starts.tolist()))
        self.count = dict(zip(ids.tolist(), counts.tolist()))
        self.labels = labels
        if len(ids) < 2:
            raise ValueError("training needs at least 2 identities with images")

    def batch(self, rng, size, same_share):
        p = size // 2
        a = rng.choice(self.idx, p)
        want_same = rng.random(p) < same_share
        b = rng.choice(self.idx, p)
        for i in range(p):
            la = int(self.labels[a[i]])
            n = self.count[la]
            if want_same[i] and n >= 2:  # another image of the same identity
                k = int(rng.integers(n - 1))
                cand = self.by_label[self.start[la] + k]
                b[i] = cand if cand != a[i] else self.by_label[self.start[la] + n - 1]
            else:
                while self.labels[b[i]] == la:
                    b[i] = rng.choice(self.idx)
        extra = rng.choice(self.idx, size - 2 * p)
        images = np.concatenate([a, b, extra])
        pair_y = np.where(self.labels[a] == self.labels[b], 1, -1).astype(np.int32)
        return images, np.arange(p, dtype=np.int32), np.arange(p, 2 * p, dtype=np.int32), pair_y


def lr_at(cfg, step, total_steps):
    return cosine_lr(cfg.lr, step, total_steps)


def initial_verif_params(cfg):
    return np.array([cfg.margin, 0.0] if cfg.verif == "cosine" else [cfg.margin], np.float32)


class Trainer:
    def __init__(self, cache, run_dir, train_cfg, backend, net_cfg=None, log=print,
                 progress=True):
        self.cache, self.run_dir, self.cfg, self.be = cache, str(run_dir), train_cfg, backend
        h, w, c = cache.patches.shape[1:]
        self.net_cfg = net_cfg or NetConfig(n_classes=len(cache.identities), height=h, width=w,
                                            channels=c)
        if (self.net_cfg.height, self.net_cfg.width, self.net_cfg.channels) != (h, w, c):
            raise ValueError(f"the cache holds {h}x{w}x{c} patches, the network expects "
                             f"{self.net_cfg.height}x{self.net_cfg.width}x{self.net_cfg.channels}")
        self.net = DeepID2(self.net_cfg, backend)
        self.xp = getattr(backend, "xp", np)
        self.on_device = self.xp is not np
        # a layout patch's flipped counterpart is cut, not mirrored (data.LayoutPatch)
        self.flipped = getattr(cache, "flipped", None)
        if self.on_device:  # the whole cache, once; later batches are cut on the device
            self.dev_patches = self.xp.asarray(np.ascontiguousarray(cache.patches))
            if self.flipped is not None:
                self.dev_flipped = self.xp.asarray(np.ascontiguousarray(self.flipped))
            self.dev_labels = self.xp.asarray(np.asarray(cache.labels, np.int32))
        if hasattr(backend, "keep_freed_memory"):
            backend.keep_freed_memory()  # reuse activation buffers between steps
        self.log, self.progress = log, progress
        labels = np.asarray(cache.labels)
        self.train_idx, self.val_idx = split_train_val(labels, train_cfg.val_fraction,
                                                       train_cfg.seed)
        self.sampler = PairSampler(labels, self.train_idx)
        self.steps_per_epoch = max(1, len(self.train_idx) // train_cfg.batch)
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        os.makedirs(self.run_dir, exist_ok=True)

    # -- state -------------------------------------------------------------
    def fresh_state(self):
        params = init_params(self.net_cfg, self.cfg.seed)
        return dict(params=params, velocity={k: np.zeros_like(v) for k, v in params.items()},
                    verif=initial_verif_params(self.cfg), epoch=0, best_epoch=-1, best_val=-1.0,
                    history=[])

    def _meta(self, state):
        meta = {"format": FORMAT, "net": json.dumps(self.net_cfg.to_dict(), sort_keys=True),
                "train": json.dumps(self.cfg.to_dict(), sort_keys=True),
                "identities": json.dumps(list(self.cache.identities)),
                "epoch": str(state["epoch"]), "best_epoch": str(state["best_epoch"]),
                "best_val": repr(state["best_val"])}
        spec = getattr(self.cache, "spec", None)
        if spec is not None and spec.to_dict().get("kind") == "layout" \
                or getattr(spec, "lighting", "none") != "none":
            meta["input"] = json.dumps(spec.to_dict(), sort_keys=True)  # the patch trained on
        return meta

    def save_checkpoint(self, state):
        save_checkpoint(os.path.join(self.run_dir, CHECKPOINT), state["params"],
                        state["velocity"], {"verif/params": state["verif"]}, self._meta(state))

    def load_checkpoint(self):
        params, velocity, tensors, meta = load_checkpoint(
            os.path.join(self.run_dir, CHECKPOINT), FORMAT, self.net_cfg.to_dict(),
            asdict(self.cfg), "training", defaults=TrainConfig.LATER_FIELDS)
        epoch = int(meta["epoch"])
        return dict(params=params, velocity=velocity, verif=tensors["verif/params"], epoch=epoch,
                    best_epoch=int(meta["best_epoch"]), best_val=float(meta["best_val"]),
                    history=read_log(os.path.join(self.run_dir, LOG), epoch))

    # -- training ----------------------------------------------------------
    def step(self, state, epoch, step, xbuf):
        cfg, be, p = self.cfg, self.be, state["params"]
        rng = np.random.default_rng([cfg.seed, epoch, step])
        images, pa, pb, py = self.sampler.batch(rng, cfg.batch, cfg.same_share)
        flips = rng.random(len(images)) < 0.5 if cfg.flip else np.zeros(len(images), bool)
        if self.flipped is not None:
            x = self._assemble_pairs(images, flips, xbuf)
            labels = np.asarray(self.cache.labels)[images].astype(np.int32)
            if self.on_device:
                xp = self.xp
                labels, pa, pb, py = (xp.asarray(labels), xp.asarray(pa), xp.asarray(pb),
                                      xp.asarray(py))
        elif self.on_device:
            xp = self.xp
            x = be.assemble_batch(self.dev_patches, images, flips, out=xbuf)
            labels = self.dev_labels[xp.asarray(images)]
            pa, pb, py = xp.asarray(pa), xp.asarray(pb), xp.asarray(py)
        else:
            x = assemble_batch(self.cache.patches, images, flips, out=xbuf)
            labels = np.asarray(self.cache.labels)[images].astype(np.int32)
        acts = self.net.forward(p, x)
        g = step + epoch * self.steps_per_epoch
        lam = 0.0 if g < cfg.warmup_steps else cfg.lam
        loss = be.joint_loss(acts["logits"], labels, acts["deepid"], pa, pb, py,
                             variant=cfg.verif, lam=lam, params=state["verif"])
        loss = weigh_ident(loss, cfg.ident_weight)
        grads = {k: self.xp.zeros_like(v) for k, v in p.items()}
        self.net.backward(p, acts, loss.dlogits, loss.dfeatures, grads)
        lr = lr_at(cfg, g, self.total_steps)
        sgd_step(be, p, grads, state["velocity"], lr, cfg.momentum, cfg.weight_decay)
        if cfg.verif == "cosine":
            state["verif"] -= np.float32(lr) * loss.dparams
        elif cfg.learn_margin:
            m = state["verif"][:1] - np.float32(lr) * loss.dparams[:1]
            state["verif"][:1] = self.xp.maximum(m, np.float32(cfg.margin_min))
        return loss, len(images)

    def _assemble_pairs(self, images, flips, xbuf):
        """The batch of a layout patch: flipped samples take the stored counterpart."""
        none = np.zeros(len(images), bool)
        if self.on_device:
            x = self.be.assemble_batch(self.dev_patches, images, none, out=xbuf)
            if flips.any():
                x[self.xp.asarray(np.nonzero(flips)[0])] = self.be.assemble_batch(
                    self.dev_flipped, images[flips], none[flips])
            return x
        x = assemble_batch(self.cache.patches, images, none, out=xbuf)
        if flips.any():
            x[flips] = assemble_batch(self.flipped, images[flips])
        return x

    def validate(self, params, batch=256):
        if len(self.val_idx) == 0:
            return None
        return self.count_correct(params, self.val_idx, batch) / len(self.val_idx)

    def count_correct(self, params, images, batch=256):
        """How many of these cache images the ident layer puts in their class."""
        correct = 0
        for i in range(0, len(images), batch):
            idx = images[i:i + batch]
            if self.on_device:
                x = self.be.assemble_batch(self.dev_patches, idx, np.zeros(len(idx), bool))
                truth = self.dev_labels[self.xp.asarray(idx)]
            else:
                x = assemble_batch(self.cache.patches, idx, np.zeros(len(idx), bool))
                truth = np.asarray(self.cache.labels)[idx]
            logits = self.net.forward(params, x)["logits"]
            correct += int((logits.argmax(1) == truth).sum())
        return correct

    # -- host <-> device -------------------------------------------------------
    _ARRAYS = ("params", "velocity")

    def to_device(self, state):
        """state with its arrays on the backend's device (a no-op on the cpu)."""
        if not self.on_device:
            return state
        xp = self.xp
        state = dict(state)
        for k in self._ARRAYS:
            state[k] = {n: xp.asarray(v) for n, v in state[k].items()}
        state["verif"] = xp.asarray(state["verif"])
        return state

    def to_host(self, state):
        """state with numpy arrays (what checkpoints and callers see)."""
        if not self.on_device:
            return state
        get = self.xp.asnumpy
        state = dict(state)
        for k in self._ARRAYS:
            state[k] = {n: get(v) for n, v in state[k].items()}
        state["verif"] = get(state["verif"])
        return state

    def run(self, resume=False, on_epoch_end=None):
        if not self.on_device:
            return self._run(resume, on_epoch_end)
        # argmax indices come from our own forward pass: no need to wait for the
        # device to check them on every backward; other callers keep the checks
        old = self.be.set_index_checks(False)
        try:
            return self._run(resume, on_epoch_end)
        finally:
            self.be.set_index_checks(old)

    def _run(self, resume, on_epoch_end):
        state = self.initial_state(resume)
        self._write_log(state["history"])
        cfg = self.cfg
        shape = (cfg.batch, self.net_cfg.channels, self.net_cfg.height, self.net_cfg.width)
        xbuf = self.xp.empty(shape, np.float32)
        state = self.to_device(state)
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            sums = np.zeros(4)  # total, ident, verif, correct
            seen = 0
            bar = Progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=self.progress)
            for s in range(self.steps_per_epoch):
                loss, n = self.step(state, epoch, s, xbuf)
                sums += (loss.total, loss.ident, loss.verif, loss.correct / n)
                seen += n
                if not np.isfinite(loss.total):
                    raise FloatingPointError(f"loss became {loss.total} at epoch {epoch + 1} "
                                             f"step {s}: lower the learning rate")
                bar.update(1, f"loss {sums[0] / (s + 1):.4f} acc {sums[3] / (s + 1):.3f}")
            bar.close()
            secs = time.perf_counter() - t0
            val = self.validate(state["params"])
            k = self.steps_per_epoch
            row = dict(epoch=epoch + 1, steps=k, loss=sums[0] / k, ident=sums[1] / k,
                       verif=sums[2] / k, train_acc=sums[3] / k, val_acc=val,
                       verif_params=[float(v) for v in state["verif"]],
                       lr=lr_at(cfg, (epoch + 1) * k, self.total_steps), seconds=secs,
                       images_per_s=seen / secs)
            state["epoch"] = epoch + 1
            state["history"].append(row)
            score = val if val is not None else row["train_acc"]
            if cfg.ident_weight == 0.0:  # the classifier is not trained: keep the latest net
                score = float(epoch + 1)
            host = self.to_host(state)
            if score > state["best_val"]:
                state["best_epoch"], state["best_val"] = epoch + 1, score
                host["best_epoch"], host["best_val"] = epoch + 1, score
                self.save_model(host, os.path.join(self.run_dir, BEST))
            self.save_checkpoint(host)
            self._write_log(state["history"])
            self.log(f"epoch {epoch + 1}: loss {row['loss']:.4f} train acc "
                     f"{row['train_acc']:.3f} val acc {val if val is None else round(val, 4)} "
                     f"({row['images_per_s']:.0f} img/s)")
            if on_epoch_end:
                on_epoch_end(host)
        self._plot(state["history"])
        return self.to_host(state)

    def save_model(self, state, path):
        meta = self._meta(state)
        meta["format"] = "deepid2-model/1"
        tensors = dict(state["params"])
        tensors["verif/params"] = state["verif"]
        safetensors.save(path, tensors, meta)

    def initial_state(self, resume):
        """The host state a run starts from: its checkpoint when resuming, else fresh."""
        return start(self.run_dir, CHECKPOINT, resume, self.load_checkpoint, self.fresh_state,
                     self.log)

    def _plot(self, history):
        plot_history(history, os.path.join(self.run_dir, PLOT))

    def _write_log(self, history):
        write_log(os.path.join(self.run_dir, LOG), history)
