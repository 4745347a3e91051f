"""Pieces every training loop of the package shares (DeepID2, landmarks):
the learning-rate schedule, the SGD step, checkpoints and the JSONL log."""

import json
import math
import os

from . import safetensors


def cosine_lr(base_lr, step, total_steps):
    """Cosine decay from base_lr to 0 over total_steps."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def sgd_step(be, params, grads, velocity, lr, momentum, weight_decay):
    """Momentum SGD on every parameter, in name order; weight decay on weights
    (.w) only, not biases."""
    for k in sorted(params):
        wd = weight_decay if k.endswith(".w") else 0.0
        be.sgd_update(params[k], grads[k], velocity[k], lr, momentum, wd)


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
