"""Algorithm 1 of DeepID2: joint identification-verification training, a task
on the one loop (training/loop.py).

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
Safeguard: m is clamped to at least margin_min. The margin (or the cosine
variant's w, b) is an SGD parameter group of its own: momentum 0, no weight
decay.

Learning rate: cosine decay from lr to 0 over the whole run. Weight decay
applies to weights (.w), not biases.

Micro-batches (--micro-batches G, the loop's gradient accumulation; the ranks
of training/dist.py share them): the batch of a step is cut into G
micro-batches of whole pairs (PairBatch.part); each runs forward, loss and
backward on its own images, and the loop averages their gradients.

Backends: the patch cache is moved to the backend once (be.to_device: the same
array on the cpu), and parameters, velocities and batches stay there for the
whole run: the host only draws the batch indices and reads back the loss.
Checkpoints and models are written from host copies, so files do not depend
on the backend.

Augmentation (cfg.augment, training/augment.py): the cache holds margin crops
(face.inputs: PatchSpec / LayoutPatch margin) and stays on the host. The batch's
augmentation parameters are drawn from np.random.default_rng([seed, e, s,
augment.STREAM]), a stream of their own (the batch's draws are those of a run
without augmentation), cut into micro-batches with their images. The host
flips, augments (training: each image; validation: the plain centre patch) and
lights the crops, and the backend assembles the uint8 batch as ever.
"""

import json
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import numpy as np

from .. import safetensors
from ..data import split_train_val
from ..nets.deepid2 import DeepID2, NetConfig, init_params
from . import augment as aug
from .checkpoint import epoch_meta, load_checkpoint, save_checkpoint
from .loop import Group, Plan, check_rate_and_split

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
    augment: Optional[aug.AugmentConfig] = None  # None: no augmentation

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = aug.AugmentConfig.from_dict(self.augment)
        if not (self.augment is None or isinstance(self.augment, aug.AugmentConfig)):
            raise ValueError(f"augment must be an AugmentConfig or None, got "
                             f"{type(self.augment).__name__}")
        if self.batch < 2:
            raise ValueError(f"batch must be at least 2 (one pair), got {self.batch}")
        if self.verif not in ("l2", "l2_pos", "l1", "cosine"):
            raise ValueError(f"verif must be l2, l2_pos, l1 or cosine, got {self.verif!r}")
        if not 0.0 <= self.same_share <= 1.0:
            raise ValueError(f"same_share must be in [0, 1], got {self.same_share}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        check_rate_and_split(self.lr, self.momentum, self.weight_decay, self.val_fraction,
                             self.seed)
        if not (math.isfinite(self.lam) and self.lam >= 0.0):
            raise ValueError(f"lambda must be at least 0, got {self.lam}")
        if not (math.isfinite(self.margin) and self.margin > 0.0):
            raise ValueError(f"margin must be above 0, got {self.margin}")
        if not (math.isfinite(self.margin_min) and self.margin_min >= 0.0):
            raise ValueError(f"margin_min must be at least 0, got {self.margin_min}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if not self.ident_weight >= 0.0:
            raise ValueError(f"ident_weight must be at least 0, got {self.ident_weight}")
        if self.ident_weight == 0.0 and self.lam == 0.0:
            raise ValueError("ident_weight 0 and lambda 0 leave no loss to train")
        if self.ident_weight == 0.0 and self.warmup_steps > 0:
            raise ValueError("warmup steps train the ident term alone: none with ident_weight 0")

    # fields added after checkpoints were first written, with the value that
    # reproduces the older runs: left out of the stored dict at that value, so
    # such a run's files are byte-identical to before and old checkpoints resume
    LATER_FIELDS = {"ident_weight": 1.0, "augment": None}

    def full_dict(self):
        """Every field, JSON-friendly (augment as its to_dict)."""
        d = asdict(self)
        d["augment"] = None if self.augment is None else self.augment.to_dict()
        return d

    def to_dict(self):
        """The config as stored in checkpoints and models."""
        d = self.full_dict()
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


def micro_rows(n_images, n_pairs, groups, g):
    """The rows of micro-batch g of G (micro_batch) in its batch."""
    p = n_pairs
    if n_images != 2 * p or p % groups:
        raise ValueError(f"a batch of {n_images} images ({p} pairs) cannot be cut into "
                         f"{groups} equal micro-batches of whole pairs")
    q = p // groups
    return np.concatenate([np.arange(g * q, (g + 1) * q), p + np.arange(g * q, (g + 1) * q)])


def micro_batch(images, flips, pair_y, groups, g):
    """Micro-batch g of G of a pair batch [a_0..a_{P-1}, b_0..b_{P-1}]: the
    images of pairs [g P/G, (g+1) P/G) as (images, flips, pair_a, pair_b,
    pair_y), laid out [a.., b..]. Every pair stays whole; the G micro-batches
    together hold every image of the batch exactly once."""
    rows = micro_rows(len(images), len(pair_y), groups, g)
    q = len(pair_y) // groups
    return (images[rows], flips[rows], np.arange(q, dtype=np.int32),
            np.arange(q, 2 * q, dtype=np.int32), pair_y[g * q:(g + 1) * q])


def initial_verif_params(cfg):
    return np.array([cfg.margin, 0.0] if cfg.verif == "cosine" else [cfg.margin], np.float32)


class PairBatch(NamedTuple):
    """The cache images of a step's batch [a_0..a_{P-1}, b_0..b_{P-1}, extra], their
    flips, the pairs (pair_a[i], pair_b[i]: rows of images) with pair_y (1: the same
    identity, -1: not) and the augmentation (augment.AugmentParams; None: plain)."""
    images: np.ndarray
    flips: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_y: np.ndarray
    augment: Optional[aug.AugmentParams] = None

    def part(self, groups, g):
        """Micro-batch g of G (micro_batch), its augmentation taken alike."""
        rows = micro_rows(len(self.images), len(self.pair_y), groups, g)
        return PairBatch(*micro_batch(self.images, self.flips, self.pair_y, groups, g),
                         None if self.augment is None else self.augment.take(rows))


# what the loop draws of a run (loop.draw_curves), from the log's metrics
CURVES = (("loss per epoch",
           [("total = W x ident + lambda x verif", "loss"), ("ident", "ident"),
            ("verification loss (unweighted; the total adds lambda x it)", "verif")],
           "loss (mean over the epoch's steps)", 1.0),
          ("top-1 identification accuracy per epoch",
           [("train", "train_acc"), ("validation", "val_acc")], "accuracy (%)", 100.0))


class DeepID2Task:
    """DeepID2 on a patch cache: a task on the one loop (training/loop.py).
    parallel: the data-parallel hook, whose ranks share the validation images
    (None: one process). The best epoch is that of the highest validation
    accuracy (the training accuracy without validation images; the last epoch
    with ident_weight 0, where the classifier is not trained)."""
    curves = CURVES

    def __init__(self, cache, run_dir, train_cfg, backend, net_cfg=None, parallel=None):
        self.cache, self.cfg, self.be, self.parallel = cache, train_cfg, backend, parallel
        # a margin cache (for augmentation) holds crops of (h + 2 py) x (w + 2 px)
        spec = getattr(cache, "spec", None)
        self.pad = getattr(spec, "pad", (0, 0))
        self.lighting = getattr(spec, "lighting", "none") if any(self.pad) else "none"
        hb, wb, c = cache.patches.shape[1:]
        h, w = hb - 2 * self.pad[0], wb - 2 * self.pad[1]
        self.net_cfg = net_cfg or NetConfig(n_classes=len(cache.identities), height=h, width=w,
                                            channels=c)
        if (self.net_cfg.height, self.net_cfg.width, self.net_cfg.channels) != (h, w, c):
            raise ValueError(f"the cache holds {h}x{w}x{c} patches, the network expects "
                             f"{self.net_cfg.height}x{self.net_cfg.width}x{self.net_cfg.channels}")
        self.net = DeepID2(self.net_cfg, backend)
        be = backend
        # a layout patch's flipped counterpart is cut, not mirrored (face.inputs.LayoutPatch)
        flipped = getattr(cache, "flipped", None)
        # host batches (augmented, or centre crops of a margin cache): the cache stays here
        self.on_host = train_cfg.augment is not None or any(self.pad)
        if self.on_host:
            self.patches, self.flipped = cache.patches, flipped
        else:   # the whole cache on the backend, once; batches are cut there
            self.patches = be.to_device(np.ascontiguousarray(cache.patches))
            self.flipped = (None if flipped is None
                            else be.to_device(np.ascontiguousarray(flipped)))
        self.labels = be.to_device(np.asarray(cache.labels, np.int32))
        labels = np.asarray(cache.labels)
        self.train_idx, self.val_idx = split_train_val(labels, train_cfg.val_fraction,
                                                       train_cfg.seed)
        self.sampler = PairSampler(labels, self.train_idx)
        self.plan = Plan(str(run_dir), train_cfg.epochs,
                         max(1, len(self.train_idx) // train_cfg.batch), train_cfg.batch,
                         train_cfg.lr)
        self.best = ("epoch" if train_cfg.ident_weight == 0.0 else
                     "val_acc" if len(self.val_idx) else "train_acc", max)
        self.xbuf = self.verif_scratch = None   # the batch's float32 images, made at its size

    # -- state -------------------------------------------------------------
    def init_state(self, checkpoint=None):
        if checkpoint is not None:
            state, tensors, _ = load_checkpoint(
                checkpoint, FORMAT, self.net_cfg.to_dict(), self.cfg.full_dict(), "training",
                defaults=TrainConfig.LATER_FIELDS)
            return dict(state, verif=tensors["verif/params"])
        params = init_params(self.net_cfg, self.cfg.seed)
        return dict(params=params, velocity={k: np.zeros_like(v) for k, v in params.items()},
                    verif=initial_verif_params(self.cfg))

    def param_groups(self, state):
        """The network (momentum, weight decay), then the verification
        parameters (momentum 0, no weight decay; learned for cosine or with
        learn_margin, the margin then clamped to margin_min)."""
        cfg = self.cfg
        verif = state["verif"]
        if self.verif_scratch is None:  # momentum 0: the velocity is scratch, not saved
            self.verif_scratch = self.be.xp.zeros_like(verif)
        cosine = cfg.verif == "cosine"
        return [Group(state["params"], state["velocity"], cfg.momentum, cfg.weight_decay),
                Group({"verif": verif}, {"verif": self.verif_scratch}, 0.0,
                      min_value=None if cosine else cfg.margin_min,
                      trainable=cosine or cfg.learn_margin)]

    # -- one batch: forward, loss, backward ------------------------------------
    def batch(self, epoch, step):
        """The PairBatch of (epoch, step): a pure function of the seed, epoch and step."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch, step])
        images, pa, pb, py = self.sampler.batch(rng, cfg.batch, cfg.same_share)
        flips = rng.random(len(images)) < 0.5 if cfg.flip else np.zeros(len(images), bool)
        params = None
        if cfg.augment is not None:   # a stream of its own: the draws above stay as they were
            params = aug.draw(np.random.default_rng([cfg.seed, epoch, step, aug.STREAM]),
                              len(images), cfg.augment, self.net_cfg.channels)
        return PairBatch(images, flips, pa, pb, py, params)

    def loss_and_grads(self, state, batch, global_step, grads):
        cfg, be, p = self.cfg, self.be, state["params"]
        images, flips, pa, pb, py, params = batch
        if self.xbuf is None:
            self.xbuf = be.xp.empty((len(images), self.net_cfg.channels, self.net_cfg.height,
                                     self.net_cfg.width), np.float32)
        x = self.assemble(images, flips, self.xbuf, params)
        labels = self.labels[be.to_device(images)]
        lam = 0.0 if global_step < cfg.warmup_steps else cfg.lam
        acts = self.net.forward(p, x)
        loss = be.joint_loss(acts["logits"], labels, acts["deepid"], be.to_device(pa),
                             be.to_device(pb), be.to_device(py), variant=cfg.verif, lam=lam,
                             params=state["verif"])
        loss = weigh_ident(loss, cfg.ident_weight)
        self.net.backward(p, acts, loss.dlogits, loss.dfeatures, grads)
        grads["verif"][...] = loss.dparams
        return dict(loss=loss.total, ident=loss.ident, verif=loss.verif,
                    train_acc=int(loss.correct))   # a count: the loop makes it a share

    def assemble(self, images, flips, out=None, params=None):
        """The float32 batch of these cache images; flipped ones of a layout
        patch take the stored counterpart. params: their augmentation
        (augment.AugmentParams; None: the plain patches)."""
        be = self.be
        if self.on_host:
            batch = self.host_batch(images, flips, params)
            return be.assemble_batch(be.to_device(batch), np.arange(len(images)), out=out)
        if self.flipped is None:
            return be.assemble_batch(self.patches, images, flips, out=out)
        none = np.zeros(len(images), bool)
        x = be.assemble_batch(self.patches, images, none, out=out)
        if flips.any():
            x[be.to_device(np.nonzero(flips)[0])] = be.assemble_batch(
                self.flipped, images[flips], none[flips])
        return x

    def host_batch(self, images, flips, params=None):
        """uint8 (B, h, w, C) patches of these cache images, made on the host:
        flipped (the stored counterpart, or a mirror), then augmented (params)
        or the plain centre, then lit (a margin cache holds crops before lighting)."""
        big = np.array(self.patches[images])
        if flips.any():
            big[flips] = (self.flipped[images[flips]] if self.flipped is not None
                          else big[flips][:, :, ::-1])
        hw = (self.net_cfg.height, self.net_cfg.width)
        if params is None:
            return aug.light(aug.centre(big, hw), self.lighting)
        return aug.apply(big, params, hw, self.lighting)

    # -- an epoch ------------------------------------------------------------
    def evaluate(self, state):
        return dict(val_acc=self.validation(state),
                    verif_params=[float(v) for v in state["verif"]])

    def validation(self, state, batch=256):
        """Held-out ident accuracy; under data parallelism each rank counts its
        share and the counts (integers: exact) are summed."""
        if len(self.val_idx) == 0:
            return None
        par = self.parallel
        size, rank = (1, 0) if par is None else (par.size, par.rank)
        mine = np.array_split(self.val_idx, size)[rank]
        correct = self.count_correct(state["params"], mine, batch)
        if par is not None:
            correct = sum(par.allgather(correct))
        return correct / len(self.val_idx)

    def count_correct(self, params, images, batch=256):
        """How many of these cache images the ident layer puts in their class."""
        correct = 0
        for i in range(0, len(images), batch):
            idx = images[i:i + batch]
            x = self.assemble(idx, np.zeros(len(idx), bool))  # unaugmented
            truth = self.labels[self.be.to_device(idx)]
            logits = self.net.forward(params, x)["logits"]
            correct += int((logits.argmax(1) == truth).sum())
        return correct

    # -- files ---------------------------------------------------------------
    def meta(self, state):
        meta = {"format": FORMAT, "net": json.dumps(self.net_cfg.to_dict(), sort_keys=True),
                "train": json.dumps(self.cfg.to_dict(), sort_keys=True),
                "identities": json.dumps(list(self.cache.identities)), **epoch_meta(state)}
        spec = getattr(self.cache, "spec", None)
        if hasattr(spec, "plain"):
            spec = spec.plain()   # the patch the network sees, without the cache's margin
        if spec is not None and spec.to_dict().get("kind") == "layout" \
                or getattr(spec, "lighting", "none") != "none":
            meta["input"] = json.dumps(spec.to_dict(), sort_keys=True)  # the patch trained on
        return meta

    def save(self, state, path, what):
        """The "checkpoint" (to resume) or the "model" (deepid2-model/1: the
        network and the verification parameters)."""
        meta = self.meta(state)
        if what == "checkpoint":
            save_checkpoint(path, state, {"verif/params": state["verif"]}, meta)
            return
        meta["format"] = "deepid2-model/1"
        tensors = dict(state["params"])
        tensors["verif/params"] = state["verif"]
        safetensors.save(path, tensors, meta)
