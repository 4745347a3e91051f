"""The one training loop: epochs, resume, the JSONL log, the best model, the
cosine learning-rate schedule, the progress bar, the non-finite-loss stop and
SGD over every parameter. DeepID2, the landmark net and the cascade nets are
tasks on it (training/deepid2.py, landmarks.py, cascade.py).

A step, top to bottom:
    batches = task.batches(epoch, step, parallel.parts)      # this rank's micro-batches
    for j, batch in enumerate(batches):                      # forward, loss, backward
        stats[j] = task.loss_and_grads(state, batch, global_step, grads.part(j))
    grads = parallel.reduce(grads.local)                     # mean over every micro-batch
    sgd(be, task.param_groups(state), grads, lr)             # update

A task supplies (see DeepID2Task for a full one):
    be, run_dir, epochs, batch, lr, steps_per_epoch, total_steps, log, progress, label
    fresh_state(), load_checkpoint() -> host state dict: params, velocity, epoch,
        best_epoch, best_val, history, plus its own arrays (device_keys: those the
        device holds during the run)
    param_groups(state) -> [Group]: every parameter, in the order of the gradient buffer
    batches(epoch, step, parts), loss_and_grads(state, batch, global_step, grads) -> stats row
    step_loss(stats_sum, n_parts) -> the step's loss; running_values(loss) -> what the
        epoch sums (value 0: the loss, checked finite)
    progress_text(sums, steps), epoch_row(sums, steps, val, state), epoch_line(row)
    validation(state) -> val or None, score(row, val, epoch), improves(score, best)
    save_checkpoint(host), save_best(host), plot(history), log_path

Data parallelism (training/dist.py) is the `parallel` hook: which micro-batches
this rank computes (parts), the gradient reduction, the stats gather, the
broadcast of the start state; rank 0 alone writes files. OneProcess is the
hook of a plain run: one part, no reduction.

Checkpoints are written after every epoch; resuming continues exactly.
Divergence: a non-finite loss (checked every step) or non-finite weights
(checked before an epoch's files are written) stop the run with
TrainingDiverged, a ValueError naming the epoch and the checkpoint kept; no
file is overwritten by a diverged state.
"""

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import safetensors
from ..progress import Progress


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


class OneProcess:
    """The parallel hook of a plain run: one process, the whole batch."""
    rank, size, groups, parts = 0, 1, 1, range(1)

    def reduce(self, local):
        return local[0]

    def gather(self, stats):
        return stats

    def bcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def before_step(self, epoch, step):
        pass


# -- the loop ---------------------------------------------------------------------
class Loop:
    def __init__(self, task, parallel=None):
        self.task, self.par = task, parallel or OneProcess()
        self.be = task.be
        self.be.keep_freed_memory()  # reuse activation buffers between steps
        self.grads = None

    def train_step(self, state, epoch, step):
        """One SGD step; its loss (task.step_loss)."""
        task, par = self.task, self.par
        if self.grads is None:
            self.grads = Gradients(self.be, task.param_groups(state), len(par.parts))
        par.before_step(epoch, step)
        g = step + epoch * task.steps_per_epoch
        batches = task.batches(epoch, step, par.parts)
        stats = np.zeros((len(batches), task.n_stats))
        for j, batch in enumerate(batches):
            stats[j] = task.loss_and_grads(state, batch, g, self.grads.part(j))
        grads = self.grads.views(par.reduce(self.grads.local))
        every = par.gather(stats)   # (G, n_stats), micro-batch order
        sums = np.zeros(task.n_stats)
        for row in every:           # a fixed order, as one process adds them
            sums += row
        sgd(self.be, task.param_groups(state), grads, cosine_lr(task.lr, g, task.total_steps))
        return task.step_loss(sums, par.groups)

    def run(self, resume=False, on_epoch_end=None):
        # argmax indices come from our own forward pass: no need to wait for the
        # device to check them on every backward; other callers keep the checks
        old = self.be.set_index_checks(False)
        try:
            return self._run(resume, on_epoch_end)
        finally:
            self.be.set_index_checks(old)

    def _run(self, resume, on_epoch_end):
        task, par = self.task, self.par
        rank0 = par.rank == 0
        state = par.bcast(self.initial_state(resume) if rank0 else None)
        if rank0:
            write_log(task.log_path, state["history"])
        state = self.to_device(state)
        saved_epoch = state["epoch"]  # the epoch of the checkpoint on disk (0: none)
        host = None                   # the host copy of the last epoch's state
        k = task.steps_per_epoch
        for epoch in range(state["epoch"], task.epochs):
            t0 = time.perf_counter()
            sums = None
            # off a terminal the epoch line (task.log) is the bar's final line
            bar = Progress(k, f"{task.label}epoch {epoch + 1}/{task.epochs}",
                           enabled=task.progress, final_line=False)
            for s in range(k):
                values = task.running_values(self.train_step(state, epoch, s))
                sums = np.zeros(len(values)) if sums is None else sums
                sums += values
                if not np.isfinite(values[0]):
                    raise TrainingDiverged(f"loss became {values[0]} at epoch {epoch + 1} "
                                           f"step {s + 1}", task.run_dir, saved_epoch)
                bar.update(1, task.progress_text(sums, s + 1))
            bar.close()
            secs = time.perf_counter() - t0
            val = task.validation(state)
            row = dict(epoch=epoch + 1, steps=k, **task.epoch_row(sums, k, val, state),
                       lr=cosine_lr(task.lr, (epoch + 1) * k, task.total_steps), seconds=secs,
                       images_per_s=k * task.batch / secs)
            state["epoch"] = epoch + 1
            state["history"].append(row)
            score = task.score(row, val, epoch)
            host = self.to_host(state)
            if not all_finite(host["params"]):  # a finite loss can still end in inf weights
                raise TrainingDiverged(f"the weights became non-finite in epoch {epoch + 1}",
                                       task.run_dir, saved_epoch)
            if task.improves(score, state["best_val"]):
                state["best_epoch"], state["best_val"] = epoch + 1, score
                host["best_epoch"], host["best_val"] = epoch + 1, score
                if rank0:
                    task.save_best(host)
            if rank0:
                task.save_checkpoint(host)
                write_log(task.log_path, state["history"])
            saved_epoch = epoch + 1
            task.log(task.epoch_line(row))
            if on_epoch_end:
                on_epoch_end(host)
        if rank0:
            task.plot(state["history"])
        return host if host is not None else self.to_host(state)

    def initial_state(self, resume):
        """The host state a run starts from: its checkpoint when resuming, else fresh."""
        t = self.task
        return start(t.run_dir, t.checkpoint_name, resume, t.load_checkpoint, t.fresh_state,
                     t.log)

    def to_device(self, state):
        """state with the task's device arrays on the backend (the cpu: the same arrays)."""
        return _move(state, self.task.device_keys, self.be.to_device)

    def to_host(self, state):
        """state with numpy arrays (what checkpoints and callers see)."""
        return _move(state, self.task.device_keys, self.be.to_host)


def _move(state, keys, move):
    state = dict(state)
    for key in (k for k in keys if k in state):
        v = state[key]
        state[key] = {n: move(a) for n, a in v.items()} if isinstance(v, dict) else move(v)
    return state


# -- checkpoints and the log ------------------------------------------------------
def save_checkpoint(path, params, velocity, extra, meta):
    """params and velocities (and extra tensors, by full name) with meta."""
    tensors = {"param/" + k: v for k, v in params.items()}
    tensors.update({"velocity/" + k: v for k, v in velocity.items()})
    tensors.update(extra)
    safetensors.save(path, tensors, meta)


def load_checkpoint(path, fmt, net, train, what, defaults=None):
    """(params, velocity, tensors, meta) of a checkpoint written for this
    network (net: its config dict) and training config (train: dict); any
    difference is an error that names the fields. defaults: the value of a
    field a checkpoint does not store (one written before the field existed,
    or one that leaves a field out at its default)."""
    tensors, meta = safetensors.load(path)
    if meta.get("format") != fmt:
        raise ValueError(f"{path} is not a deepid2 {what} checkpoint")
    if json.loads(meta["net"]) != net:
        raise ValueError(f"{path} was written for another network: {meta['net']}")
    saved = {**(defaults or {}), **json.loads(meta["train"])}
    changed = sorted(k for k in train if saved.get(k) != train[k])
    if changed:
        raise ValueError(f"cannot resume {path} with a different config: {', '.join(changed)} "
                         f"(was {', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")
    params = {k[6:]: v for k, v in tensors.items() if k.startswith("param/")}
    velocity = {k[9:]: v for k, v in tensors.items() if k.startswith("velocity/")}
    return params, velocity, tensors, meta


def start(run_dir, checkpoint, resume, load, fresh, log):
    """The state a run starts from: its checkpoint when resuming and there is
    one (load()), else fresh()."""
    ckpt = os.path.join(run_dir, checkpoint)
    if resume and os.path.exists(ckpt):
        state = load()
        log(f"resuming {ckpt} after epoch {state['epoch']}")
        return state
    if resume:
        log(f"no checkpoint in {run_dir}: starting afresh")
    return fresh()


def read_log(path, upto_epoch):
    """The JSONL log's rows up to and including an epoch (a resumed run
    rewrites what came after its checkpoint)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_log(path, history):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
