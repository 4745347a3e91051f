"""A run's files that the loop (training/loop.py) keeps: the checkpoint a run
resumes from (parameters, velocities, the task's own tensors, and in its
metadata the epoch and the best epoch so far) and the JSONL log, one row per
epoch. Both are written whole or not at all."""

import json
import os

from .. import safetensors

# the files of a run folder (Loop.run)
CHECKPOINT, BEST = "checkpoint.safetensors", "best.safetensors"
LOG, PLOT = "log.jsonl", "curves.png"


def epoch_meta(state):
    """The metadata of where a run stands: its epoch, its best epoch and that
    epoch's score (load_checkpoint reads them back)."""
    return {"epoch": str(state["epoch"]), "best_epoch": str(state["best_epoch"]),
            "best_val": repr(state["best_val"])}


def save_checkpoint(path, state, extra, meta):
    """state's params and velocities, extra tensors (by full name) and meta."""
    tensors = {"param/" + k: v for k, v in state["params"].items()}
    tensors.update({"velocity/" + k: v for k, v in state["velocity"].items()})
    tensors.update(extra)
    safetensors.save(path, tensors, meta)


def load_checkpoint(path, fmt, net, train, what, defaults=None):
    """(state, tensors, meta) of a checkpoint written for this network (net: its
    config dict) and training config (train: dict); any difference is an error
    that names the fields. state: params, velocity, epoch, best_epoch, best_val.
    defaults: the value of a field a checkpoint does not store (one written
    before the field existed, or one that leaves a field out at its default)."""
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
    state = dict(params={k[6:]: v for k, v in tensors.items() if k.startswith("param/")},
                 velocity={k[9:]: v for k, v in tensors.items() if k.startswith("velocity/")},
                 epoch=int(meta["epoch"]), best_epoch=int(meta["best_epoch"]),
                 best_val=float(meta["best_val"]))
    return state, tensors, meta


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
