"""`deepid2 demo`: the whole path on data that is always available.

Draws synthetic identities, trains DeepID2 on some of them for a fixed number
of epochs (so the accuracy is the same on every machine; only the time it
takes differs), then verifies pairs of *unseen* identities by the L2 distance of their
DeepID2 features (L2-normalised), with the threshold chosen on pairs of the
training identities.
"""

import os
import time

import numpy as np

from .backends import get_backend
from .data import build_cache
from .face.inputs import PatchSpec
from .synth import make_dataset
from .training.deepid2 import DeepID2Task, TrainConfig
from .training.loop import Loop

TRAIN_IDS, UNSEEN_IDS, IMAGES = 200, 50, 16
EPOCHS = 25  # the features are good from here (~74% at 5 epochs, ~96% at 25)
PAIRS = 1000  # same and as many different pairs, for threshold and test


def features(loop, params, cache, batch=256):
    be = loop.be
    patches, params = be.to_device(np.ascontiguousarray(cache.patches)), loop.to_device(
        dict(params=params))["params"]
    out = []
    for i in range(0, len(cache.labels), batch):
        idx = np.arange(i, min(i + batch, len(cache.labels)))
        x = be.assemble_batch(patches, idx, np.zeros(len(idx), bool))
        out.append(be.to_host(loop.task.net.features(params, x)))
    f = np.concatenate(out).astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def sample_pairs(labels, rng, n):
    labels = np.asarray(labels)
    same, diff = [], []
    while len(same) < n or len(diff) < n:
        a, b = rng.integers(len(labels), size=2)
        if a == b:
            continue
        (same if labels[a] == labels[b] else diff).append((a, b))
    pairs = np.array(same[:n] + diff[:n])
    return pairs, np.r_[np.ones(n, bool), np.zeros(n, bool)]


def best_threshold(dist, same):
    """The distance threshold with the best accuracy (same if dist <= t)."""
    order = np.argsort(dist)
    d, s = dist[order], same[order]
    # accepting the first k as "same": correct = same among them + different after them
    correct = np.r_[0, np.cumsum(s)] + (len(s) - np.sum(s)) - np.r_[0, np.cumsum(~s)]
    k = int(np.argmax(correct))
    t = d[0] - 1e-9 if k == 0 else (d[k - 1] + d[k]) / 2 if k < len(d) else d[-1] + 1e-9
    return float(t), correct[k] / len(s)


def run_demo(out, seed=0, epochs=EPOCHS, backend="cpu"):
    t_start = time.perf_counter()
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive whole number, got {epochs!r}")
    be = get_backend(backend)
    seen_dir, unseen_dir = os.path.join(out, "data", "train"), os.path.join(out, "data", "unseen")
    for d, n, s in ((seen_dir, TRAIN_IDS, seed), (unseen_dir, UNSEEN_IDS, seed + 1)):
        if not os.path.isdir(d):
            make_dataset(d, n, IMAGES, s)
    spec = PatchSpec()
    seen = build_cache(seen_dir, os.path.join(out, "cache", "train"), spec)
    unseen = build_cache(unseen_dir, os.path.join(out, "cache", "unseen"), spec)
    run_dir = os.path.join(out, "run")
    print(f"training on {TRAIN_IDS} synthetic identities for {int(epochs)} epochs "
          f"(writing {out})")

    cfg = TrainConfig(epochs=epochs, seed=seed, lr=0.05, lam=0.05)
    loop = Loop(DeepID2Task(seen, run_dir, cfg, be))
    state = loop.run()
    params = state["params"]

    rng = np.random.default_rng([seed, 99])
    f_seen = features(loop, params, seen)
    pairs, same = sample_pairs(seen.labels, rng, PAIRS)
    dist = np.linalg.norm(f_seen[pairs[:, 0]] - f_seen[pairs[:, 1]], axis=1)
    threshold, train_acc = best_threshold(dist, same)

    f_new = features(loop, params, unseen)
    pairs, same = sample_pairs(unseen.labels, rng, PAIRS)
    dist = np.linalg.norm(f_new[pairs[:, 0]] - f_new[pairs[:, 1]], axis=1)
    acc = float(np.mean((dist <= threshold) == same))
    print(f"threshold {threshold:.4f} (accuracy {train_acc:.4f} on training identities' pairs)")
    print(f"verification of {UNSEEN_IDS} unseen identities, {2 * PAIRS} pairs: "
          f"accuracy {acc:.4f}")
    print(f"run: {run_dir} (plot {os.path.join(run_dir, 'curves.png')})")
    return dict(accuracy=acc, threshold=threshold, train_pair_accuracy=train_acc, epochs=epochs,
                seconds=time.perf_counter() - t_start, run_dir=run_dir)
