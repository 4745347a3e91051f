"""The one training loop: epochs, micro-batches, resume, the JSONL log, the best
model, the cosine learning-rate schedule, the progress bar, the non-finite-loss
stop and SGD over every parameter. DeepID2, the landmark net and the cascade
nets are tasks on it (training/deepid2.py, landmarks.py, cascade.py):
Loop(task).run().

A step, top to bottom (G micro-batches: gradient accumulation, as in nanoGPT):
    batch = task.batch(epoch, step)                          # the whole batch
    for j, g in enumerate(this rank's micro-batches):        # forward, loss, backward
        metrics[j] = task.loss_and_grads(state, batch.part(G, g), global_step, grads[j])
    grads = parallel.reduce(grads)                           # mean over every micro-batch
    sgd(be, task.param_groups(state), grads, lr)             # update

A task supplies ten names (DeepID2Task is a full one):
    be                      the backend the ops run on
    plan                    Plan: run_dir, epochs, steps_per_epoch, batch, lr, label
    init_state(checkpoint)  the host state to start from: fresh (None: params,
                            velocity and its own arrays) or a checkpoint's (those,
                            and epoch, best_epoch, best_val; checkpoint.load_checkpoint)
    param_groups(state)     [Group]: every parameter, in the order of the gradients
    batch(epoch, step)      the step's batch; cut into micro-batches by batch.part(G, g)
    loss_and_grads(state, batch, global_step, grads) -> {name: value}: the batch's
                            metrics, "loss" among them (a float: the mean over the
                            batch; an int: a count of its images, which the loop
                            makes a share); its gradients written to grads
    evaluate(state)         {name: value}: the epoch's held-out metrics
    best                    (metric name, max or min): the epoch whose model is kept
    save(state, path, what) write the "checkpoint" or the "model"
    curves                  the plot: (title, [(legend, metric name)], ylabel, scale)
                            of each of its two panels, or None for no plot

The loop keeps the rest. Files in plan.run_dir: checkpoint.safetensors (after
every epoch; resuming continues exactly), best.safetensors, log.jsonl and
curves.png. The state's bookkeeping: epoch, best_epoch, best_val, history; its
arrays on the backend during the run. The metrics, by name: the mean over the
micro-batches of a step and over the steps of an epoch, shown on the bar and in
the epoch line, logged with the held-out ones and drawn.

The parallel hook: OneProcess for one process (here), or training/dist.py's
DataParallel for the ranks of an MPI job: which micro-batches a rank computes,
the gradient reduction, the metrics gather, the broadcast of the start state;
rank 0 alone writes files. Around the loop it holds the run-level verbs of
`deepid2 train` (training/train_deepid2.py): the lock, whether a run exists,
the cache, the report.

Divergence: a non-finite loss (checked every step) or non-finite weights
(checked before an epoch's files are written) stop the run with
TrainingDiverged, a ValueError naming the epoch and the checkpoint kept; no
file is overwritten by a diverged state.
"""

import math
import numbers
import os
import time
from dataclasses import dataclass

import numpy as np

from ..progress import Progress, note
from .checkpoint import BEST, CHECKPOINT, LOG, PLOT, read_log, write_log
from .lock import RunLock


class TrainingDiverged(ValueError):
    """The loss or the weights became non-finite. Raised before anything of
    the diverged epoch is written: the checkpoint on disk (if any) is the
    last good one."""

    def __init__(self, what, run_dir, saved_epoch):
        kept = (f"the last good checkpoint (epoch {saved_epoch}) is kept in {run_dir}"
                if saved_epoch else "no checkpoint was written")
        super().__init__(f"{what}; {kept}; lower --lr (a new run: --resume keeps the "
                         f"learning rate)")
        self.saved_epoch = saved_epoch


def all_finite(arrays):
    """Whether every value of {name: numpy array} is finite."""
    return all(bool(np.isfinite(a).all()) for a in arrays.values())


def check_rate_and_split(lr, momentum, weight_decay, val_fraction, seed):
    """The settings every training config shares, checked before any work."""
    if not (math.isfinite(lr) and lr > 0.0):
        raise ValueError(f"the learning rate (--lr) must be a finite number above 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"weight_decay must be at least 0, got {weight_decay}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"the validation fraction (--val-fraction) must be in [0, 1), got "
                         f"{val_fraction}")
    if seed < 0:
        raise ValueError(f"the seed (--seed) must be at least 0, got {seed}")


def cosine_lr(base_lr, step, total_steps):
    """Cosine decay from base_lr to 0 over total_steps."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


@dataclass
class Plan:
    """The shape of a task's run. batch: images per step (the img/s figure);
    label: what the bar and the epoch lines put before "epoch" ("level 2 ")."""
    run_dir: str
    epochs: int
    steps_per_epoch: int
    batch: int
    lr: float
    label: str = ""

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs


# -- SGD over every parameter -----------------------------------------------------
@dataclass
class Group:
    """Parameters SGD updates alike. weight_decay applies to weights (.w) only;
    min_value: a floor after every update (the learned margin's safeguard);
    trainable=False: held fixed (a fixed margin), its gradient unused. With
    momentum 0 the velocity is scratch, and the update is exactly p - lr * g."""
    params: dict
    velocity: dict
    momentum: float
    weight_decay: float = 0.0
    min_value: float = None
    trainable: bool = True


def sgd(be, groups, grads, lr):
    """Momentum SGD on every trainable group's tensors (group order, names
    sorted) in one be.sgd_update_many (one launch on the gpu); each tensor's
    update is its own, so the floors (min_value) apply after it, as before."""
    keys = [(g, k) for g in groups if g.trainable for k in sorted(g.params)]
    be.sgd_update_many([g.params[k] for g, k in keys], [grads[k] for g, k in keys],
                       [g.velocity[k] for g, k in keys], lr, [g.momentum for g, k in keys],
                       [g.weight_decay if k.endswith(".w") else 0.0 for g, k in keys])
    for group in groups:
        if group.trainable and group.min_value is not None:
            for p in group.params.values():
                p[...] = be.xp.maximum(p, np.float32(group.min_value))


class Gradients:
    """One flat float32 buffer per micro-batch of this rank (every group's
    parameters, in group order, names sorted), zeroed before its backward, and
    named views of it."""

    def __init__(self, be, groups, parts):
        self.layout, off = [], 0
        for group in groups:
            for name in sorted(group.params):
                shape = tuple(group.params[name].shape)
                size = int(np.prod(shape))
                self.layout.append((name, shape, off, size))
                off += size
        self.size = off
        self.local = be.xp.zeros((parts, off), np.float32)

    def views(self, flat):
        return {name: flat[off:off + size].reshape(shape)
                for name, shape, off, size in self.layout}

    def part(self, j):
        buf = self.local[j]
        buf.fill(0)
        return self.views(buf)


def add_in_order(rows, out):
    """out = rows[0] + rows[1] + ..., added in that order (so any split of the
    micro-batches over ranks adds them alike)."""
    out[...] = rows[0]
    for g in range(1, len(rows)):
        out += rows[g]
    return out


class OneProcess:
    """The parallel hook of a plain run: one process computes every
    micro-batch, and the run-level verbs are their plain forms."""
    rank, size = 0, 1

    def __init__(self):
        self.out = None

    # -- a step
    def reduce(self, local):
        """The mean of the G micro-batch gradients local (G, n), added in order."""
        if len(local) == 1:
            return local[0]  # one micro-batch: its gradient is the batch's
        if self.out is None:
            self.out = local[0].copy()
        out = add_in_order(local, self.out)
        out *= np.float32(1.0 / len(local))
        return out

    def gather(self, rows):
        return rows

    def bcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def before_step(self, epoch, step):
        pass

    # -- the run (training/train_deepid2.py)
    def guard(self, out, train):
        return train()

    def lock(self, out):
        return RunLock(out)

    def exists(self, path):
        return os.path.exists(path)

    def build_cache(self, build):
        return build(True)   # build(progress)

    def report_start(self, batch, groups):
        return (f"{groups} micro-batches of {batch // groups} images, their gradients "
                f"averaged in order" if groups > 1 else None)

    def report_end(self, grad_bytes):
        return None


# -- the loop ---------------------------------------------------------------------
class Loop:
    """task on the loop; micro_batches: G, the cut of every batch (the command
    checks it against the ranks and the batch); parallel: the hook (None:
    OneProcess). log, progress: the epoch lines and the bar (rank 0 alone)."""

    def __init__(self, task, micro_batches=1, parallel=None, log=note, progress=True):
        self.task, self.par, self.groups = task, parallel or OneProcess(), micro_batches
        G, R, r = micro_batches, self.par.size, self.par.rank
        self.parts = range(r * G // R, (r + 1) * G // R)   # this rank's micro-batches
        self.log = log if r == 0 else (lambda *a: None)
        self.progress = progress and r == 0
        self.be, self.plan = task.be, task.plan
        self.be.keep_freed_memory()  # reuse activation buffers between steps
        self.grads = None
        os.makedirs(self.plan.run_dir, exist_ok=True)

    def path(self, name):
        return os.path.join(self.plan.run_dir, name)

    def step(self, state, epoch, step):
        """One SGD step: the batch's metrics, each the mean over its micro-batches."""
        task, par, G = self.task, self.par, self.groups
        if self.grads is None:
            self.grads = Gradients(self.be, task.param_groups(state), len(self.parts))
        par.before_step(epoch, step)
        g = step + epoch * self.plan.steps_per_epoch
        batch = task.batch(epoch, step)
        parts = [batch] if G == 1 else [batch.part(G, k) for k in self.parts]
        rows = [task.loss_and_grads(state, part, g, self.grads.part(j))
                for j, part in enumerate(parts)]
        grads = self.grads.views(par.reduce(self.grads.local))
        rows = par.gather(rows)  # every micro-batch's, in micro-batch order
        sgd(self.be, task.param_groups(state), grads, cosine_lr(self.plan.lr, g,
                                                                self.plan.total_steps))
        return {k: self.combine([row[k] for row in rows]) for k in rows[0]}

    def combine(self, values):
        """A metric of the batch from its micro-batches': the mean of floats (each a
        micro-batch's mean, equal micro-batches); ints count images, and give their
        share of the batch."""
        if isinstance(values[0], numbers.Integral):
            return sum(values) / self.plan.batch
        return _add(float(v) for v in values) / len(values)

    def run(self, resume=False, on_epoch_end=None):
        """Train from the start, or from the checkpoint (resume); the host state
        at the end. on_epoch_end(host state): after each epoch's files."""
        # argmax indices come from our own forward pass: no need to wait for the
        # device to check them on every backward; other callers keep the checks
        old = self.be.set_index_checks(False)
        try:
            return self._run(resume, on_epoch_end)
        finally:
            self.be.set_index_checks(old)

    def _run(self, resume, on_epoch_end):
        task, plan, rank0 = self.task, self.plan, self.par.rank == 0
        state = self.par.bcast(self.initial_state(resume) if rank0 else None)
        if rank0:
            write_log(self.path(LOG), state["history"])
        state = self.to_device(state)
        saved_epoch = state["epoch"]  # the epoch of the checkpoint on disk (0: none)
        host = None                   # the host copy of the last epoch's state
        k = plan.steps_per_epoch
        name, pick = task.best
        for epoch in range(state["epoch"], plan.epochs):
            t0 = time.perf_counter()
            sums = {}
            # off a terminal the epoch line is the bar's final line
            bar = Progress(k, f"{plan.label}epoch {epoch + 1}/{plan.epochs}",
                           enabled=self.progress, final_line=False)
            for s in range(k):
                metrics = self.step(state, epoch, s)
                sums = {m: sums.get(m, 0.0) + v for m, v in metrics.items()}
                if not math.isfinite(metrics["loss"]):
                    raise TrainingDiverged(f"loss became {metrics['loss']} at epoch {epoch + 1} "
                                           f"step {s + 1}", plan.run_dir, saved_epoch)
                bar.update(1, describe({m: v / (s + 1) for m, v in sums.items()}))
            bar.close()
            secs = time.perf_counter() - t0
            means = {m: v / k for m, v in sums.items()}
            held_out = task.evaluate(state)
            row = dict(epoch=epoch + 1, steps=k, **means, **held_out,
                       lr=cosine_lr(plan.lr, (epoch + 1) * k, plan.total_steps), seconds=secs,
                       images_per_s=k * plan.batch / secs)
            state["epoch"] = epoch + 1
            state["history"].append(row)
            host = self.to_host(state)
            if not all_finite(host["params"]):  # a finite loss can still end in inf weights
                raise TrainingDiverged(f"the weights became non-finite in epoch {epoch + 1}",
                                       plan.run_dir, saved_epoch)
            score, best = float(row[name]), state["best_val"]
            if score != best and pick(score, best) == score:
                state["best_epoch"], state["best_val"] = epoch + 1, score
                host["best_epoch"], host["best_val"] = epoch + 1, score
                if rank0:
                    task.save(host, self.path(BEST), "model")
            if rank0:
                task.save(host, self.path(CHECKPOINT), "checkpoint")
                write_log(self.path(LOG), state["history"])
            saved_epoch = epoch + 1
            self.log(f"{plan.label}epoch {epoch + 1}: {describe({**means, **held_out})} "
                     f"({row['images_per_s']:.0f} img/s)")
            if on_epoch_end:
                on_epoch_end(host)
        if rank0 and task.curves:
            draw_curves(self.path(PLOT), task.curves, state["history"])
        return host if host is not None else self.to_host(state)

    def initial_state(self, resume):
        """The host state a run starts from: its checkpoint when resuming and
        there is one, else fresh."""
        ckpt, pick = self.path(CHECKPOINT), self.task.best[1]
        if resume and os.path.exists(ckpt):
            state = self.task.init_state(ckpt)
            state["history"] = read_log(self.path(LOG), state["epoch"])
            self.log(f"resuming {ckpt} after epoch {state['epoch']}")
            return state
        if resume:
            self.log(f"no checkpoint in {self.plan.run_dir}: starting afresh")
        return dict(self.task.init_state(None), epoch=0, best_epoch=-1,
                    best_val=-math.inf if pick is max else math.inf, history=[])

    def to_device(self, state):
        """state with its arrays on the backend (the cpu: the same arrays)."""
        return _move(state, self.be.to_device)

    def to_host(self, state):
        """state with numpy arrays (what checkpoints and callers see)."""
        return _move(state, self.be.to_host)


def _add(values):
    """0.0 + v0 + v1 + ..., in order."""
    total = 0.0
    for v in values:
        total += v
    return total


def _move(state, move):
    """The arrays of state, and of its dicts of arrays, moved."""
    state = dict(state)
    for key, v in state.items():
        if isinstance(v, dict):
            state[key] = {n: move(a) for n, a in v.items()}
        elif hasattr(v, "shape") and not np.isscalar(v):
            state[key] = move(v)
    return state


def draw_curves(path, curves, history):
    """The two panels of curves (task.curves), each metric's value per epoch."""
    from ..plot import two_panels   # OpenCV: not for whoever imports the loop alone
    get = lambda key: [row.get(key) for row in history]  # noqa: E731
    two_panels(path, *[(title, [(legend, get(m)) for legend, m in series], ylabel, scale)
                       for title, series, ylabel, scale in curves])


def describe(metrics):
    """'name value ...' of metrics: 4 significant digits, None as '-'."""
    return " ".join(f"{name} {_number(v)}" for name, v in metrics.items())


def _number(v):
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_number(x) for x in v) + "]"
    return f"{v:.4g}"
