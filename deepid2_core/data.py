"""Face datasets on disk, the uint8 patch cache and train/val splits.

A dataset is LFW's layout: ``root/<identity>/*.jpg|*.jpeg|*.png``. Training
reads each image many times, so `build_cache` decodes every image once, cuts
the patch the network sees once (face.inputs: a `PatchSpec` or a
`LayoutPatch`, with its lighting and margin) and keeps the patches as one
uint8 .npy file that is memory-mapped (it may exceed RAM). The backends'
`assemble_batch` (docs/ops.md) turns rows of that file into the engine's
float32 NCHW batches.

A LayoutPatch is cut from faces aligned by `deepid2 align`, on the landmarks
of their landmarks.csv (or the canonical mean shape); its flipped counterpart
is not always its mirror image, so its cache also holds `flipped.npy`: each
image's flipped counterpart, already mirrored, which training uses instead of
mirroring. With a margin the cache holds each patch's larger crop before
lighting (face.inputs).
"""
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .face.align_output import CSV_NAME, read_aligned_landmarks
from .face.inputs import LayoutPatch, PatchSpec, cut_fixed_patch, cut_layout_patch, spec_from_dict
from .progress import Progress, note

FORMAT_VERSION = 1
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_FILES = ("index.json", "patches.npy", "labels.npy", "flipped.npy")


def scan_identities(root):
    """[(identity, [image paths, sorted])], identities sorted by name; folders
    without images are left out. ValueError when there is nothing to read.
    Symbolic links are followed, as `deepid2 align` follows them: a linked identity
    folder is an identity, a linked image an image; a broken link to an image is
    listed (the reader then gives it the reason "broken symbolic link")."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"dataset folder {root!r} does not exist or is not a folder")
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(d):
            continue
        files = sorted(f for f in os.listdir(d)
                       if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")
                       and _file_or_broken_link(os.path.join(d, f)))
        if files:
            out.append((name, [os.path.join(d, f) for f in files]))
    if not out:
        # os.path.join: a root given as "people/" must not print "people//<name>"
        raise ValueError(f"dataset folder {root!r} has no identity folders with images: it "
                         f"needs one folder of images per person, "
                         f"{os.path.join(root, '<name>', '*.jpg')} (or .jpeg, .png)")
    return out


def _file_or_broken_link(path):
    return os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path))


def _decode(path, spec, landmarks=None):
    """(patch, None) or (None, reason): a bad file is a reason, never an exception.
    For a LayoutPatch the patch is the pair (patch, flipped counterpart)."""
    from .face.image import read_image     # the reader every command uses
    img, why = read_image(path)
    if img is None:
        return None, why
    try:
        if isinstance(spec, LayoutPatch):
            return cut_layout_patch(img, spec, landmarks), None
        return cut_fixed_patch(img, spec), None
    except Exception as e:  # noqa: BLE001 - any failure skips this one file
        return None, f"{type(e).__name__}: {e}"


def fingerprint(root, identities):
    """sha256 over sorted (relative path, size, mtime): changes when any file does,
    and when the reader's pixel limit is not the default (it decides which images
    are skipped; default caches keep their fingerprint)."""
    from .face.image import DEFAULT_MAX_PIXELS, pixel_limit
    h = hashlib.sha256()
    if pixel_limit() != DEFAULT_MAX_PIXELS:
        h.update(f"max_pixels={pixel_limit()}\n".encode())
    for _, paths in identities:
        for p in paths:
            try:
                st = os.stat(p)
            except FileNotFoundError:   # a broken link: its own size and time
                st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class PatchCache:
    """A built cache: `patches` (memmap uint8 N x H x W x C), `labels` (int32 N),
    `identities` (names, label k = identities[k]), `paths` (relative to the
    source root), `skipped` ([(path, reason)]), `spec`; `reused` says whether
    build_cache found it ready."""

    def __init__(self, cache_dir, index, patches, labels, reused=False, flipped=None):
        self.cache_dir, self.index, self.reused = os.fspath(cache_dir), index, reused
        self.patches, self.labels = patches, labels
        self.flipped = flipped  # LayoutPatch: each image's flipped counterpart (mirrored)
        self.spec = spec_from_dict(index["spec"])
        self.identities = list(index["identities"])
        self.paths = list(index["paths"])
        self.skipped = [tuple(s) for s in index["skipped"]]

    def __len__(self):
        return len(self.labels)

    @classmethod
    def load(cls, cache_dir):
        cache_dir = os.fspath(cache_dir)

        def bad(why):
            return ValueError(f"damaged patch cache in {cache_dir!r}: {why}; "
                              "delete it and build again")
        try:
            with open(os.path.join(cache_dir, "index.json")) as f:
                index = json.load(f)
        except (OSError, ValueError) as e:
            raise bad(f"cannot read index.json ({e})") from None
        if index.get("format_version") != FORMAT_VERSION:
            raise bad(f"format_version {index.get('format_version')!r}, expected {FORMAT_VERSION}")
        try:
            spec = spec_from_dict(index["spec"])
            n, k = int(index["count"]), len(index["identities"])
            patches = np.load(os.path.join(cache_dir, "patches.npy"), mmap_mode="r")
            labels = np.load(os.path.join(cache_dir, "labels.npy"))
            flipped = (np.load(os.path.join(cache_dir, "flipped.npy"), mmap_mode="r")
                       if isinstance(spec, LayoutPatch) else None)
        except Exception as e:  # noqa: BLE001 - truncated .npy, missing key, ...
            raise bad(f"{type(e).__name__}: {e}") from None
        want = (n,) + spec.cache_shape
        if patches.dtype != np.uint8 or patches.shape != want:
            raise bad(f"patches.npy is {patches.dtype} {patches.shape}, expected uint8 {want}")
        if flipped is not None and (flipped.dtype != np.uint8 or flipped.shape != want):
            raise bad(f"flipped.npy is {flipped.dtype} {flipped.shape}, expected uint8 {want}")
        if labels.dtype != np.int32 or labels.shape != (n,) or len(index["paths"]) != n:
            raise bad(f"labels.npy is {labels.dtype} {labels.shape}, expected int32 ({n},)")
        if n and (labels.min() < 0 or labels.max() >= k):
            raise bad(f"labels outside 0..{k - 1}")
        return cls(cache_dir, index, patches, labels, flipped=flipped)


def build_cache(root, cache_dir, spec=PatchSpec(), progress=True, workers=None):
    """Decode every image of `root` once into a PatchCache in `cache_dir`.

    spec: PatchSpec (the fixed crop) or LayoutPatch (one patch of a layout, from
    aligned faces; the cache then also holds each image's flipped counterpart).
    Reuses an existing cache whose spec and source fingerprint match (nothing
    is decoded; the fingerprint covers landmarks.csv where a LayoutPatch reads it).
    Unreadable images are skipped and listed, identities left
    without images are dropped. The cache appears atomically (temp dir, rename)."""
    root, cache_dir = os.path.abspath(root), os.path.abspath(cache_dir)
    say = note if progress else (lambda m: None)
    ids = scan_identities(root)
    fp = fingerprint(root, ids)
    lm_table = {}
    if isinstance(spec, LayoutPatch):
        csv_path = os.path.join(root, CSV_NAME)
        if spec.landmarks == "auto":
            spec = LayoutPatch(spec.layout, spec.index,
                               "csv" if os.path.isfile(csv_path) else "mean", spec.lighting,
                               spec.margin)
        if spec.landmarks == "csv":
            if not os.path.isfile(csv_path):
                raise ValueError(f"{csv_path} not found: landmarks='csv' needs the "
                                 f"landmarks.csv that `deepid2 align` writes")
            lm_table = read_aligned_landmarks(root)
            with open(csv_path, "rb") as f:
                fp = hashlib.sha256((fp + hashlib.sha256(f.read()).hexdigest())
                                    .encode()).hexdigest()
    if os.path.isfile(os.path.join(cache_dir, "index.json")):
        try:
            cache = PatchCache.load(cache_dir)
            if cache.index.get("fingerprint") == fp and cache.spec == spec:
                cache.reused = True
                say(f"patch cache: reusing {cache_dir} ({len(cache)} patches, source unchanged)")
                return cache
            say(f"patch cache: {cache_dir} is stale (source or spec changed); rebuilding")
        except ValueError as e:
            say(f"patch cache: {e}; rebuilding")
    if os.path.isdir(cache_dir) and set(os.listdir(cache_dir)) - set(_FILES):
        raise ValueError(f"cache_dir {cache_dir!r} holds files that are not a patch cache; "
                         "choose an empty or new folder")

    files = [(k, p) for k, (_, paths) in enumerate(ids) for p in paths]
    parent = os.path.dirname(cache_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(cache_dir) + ".tmp-", dir=parent)
    try:
        t0 = time.perf_counter()
        bar = Progress(len(files), "patch cache: images", enabled=progress, final_line=False)
        shape = spec.cache_shape
        big = np.lib.format.open_memmap(os.path.join(tmp, "all.npy"), "w+", np.uint8,
                                        (len(files),) + shape)
        pair = isinstance(spec, LayoutPatch)
        bigf = (np.lib.format.open_memmap(os.path.join(tmp, "allf.npy"), "w+", np.uint8,
                                          (len(files),) + shape) if pair else None)
        rows, skipped, n, no_lm = [], [], 0, 0

        def rel(path):
            return os.path.relpath(path, root).replace(os.sep, "/")

        def decode(f):
            return _decode(f[1], spec, lm_table.get(rel(f[1])))

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as ex:  # cv2 releases the GIL
            for s in range(0, len(files), 1024):    # chunks bound the work in flight
                chunk = files[s:s + 1024]
                decoded = ex.map(decode, chunk)
                for (k, path), (patch, why) in zip(chunk, decoded):
                    if patch is None:
                        skipped.append((os.path.relpath(path, root), why))
                    else:                       # successes are packed densely in file order
                        if pair:
                            big[n], bigf[n] = patch
                            no_lm += spec.landmarks == "csv" and rel(path) not in lm_table
                        else:
                            big[n] = patch
                        rows.append((k, os.path.relpath(path, root)))
                        n += 1
                bar.update(len(chunk))
        if n == 0:
            raise ValueError(f"no image under {root!r} could be decoded ({len(skipped)} skipped)")
        # drop identities without any decoded image and renumber labels 0..K-1 in name order
        old = np.array([k for k, _ in rows], np.int64)
        kept = np.unique(old)
        labels = np.searchsorted(kept, old).astype(np.int32)
        for src, dst, arr in (("all.npy", "patches.npy", big), ("allf.npy", "flipped.npy", bigf)):
            if arr is None:
                continue
            arr.flush()
            if n == len(files):
                del arr
                os.replace(os.path.join(tmp, src), os.path.join(tmp, dst))
            else:                               # shrink to n rows in chunks (never all in RAM)
                patches = np.lib.format.open_memmap(os.path.join(tmp, dst), "w+", np.uint8,
                                                    (n,) + shape)
                for s in range(0, n, 8192):
                    patches[s:min(s + 8192, n)] = arr[s:min(s + 8192, n)]
                patches.flush()
                del patches, arr
                os.remove(os.path.join(tmp, src))
        del big, bigf
        np.save(os.path.join(tmp, "labels.npy"), labels)
        dropped = [ids[k][0] for k in sorted(set(range(len(ids))) - set(kept.tolist()))]
        index = dict(format_version=FORMAT_VERSION, spec=spec.to_dict(), root=root, count=n,
                     identities=[ids[k][0] for k in kept], paths=[p for _, p in rows],
                     skipped=[list(s) for s in skipped], dropped_identities=dropped,
                     fingerprint=fp)
        if pair:
            index["without_landmarks"] = int(no_lm)  # csv rows missing: mean shape used
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump(index, f)
        _replace_dir(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"patch cache: {n} patches of {len(kept)} identities in {time.perf_counter() - t0:.1f}s; "
        f"{len(skipped)} images skipped, {len(dropped)} identities dropped -> {cache_dir}")
    return PatchCache.load(cache_dir)


def _replace_dir(new, dst):
    """Move `new` to `dst`; an old dst is renamed away first and then deleted."""
    old = None
    if os.path.exists(dst):
        old = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".old-", dir=os.path.dirname(dst))
        os.rmdir(old)
        os.rename(dst, old)
    os.rename(new, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def split_train_val(labels, val_fraction=0.1, seed=0):
    """Per identity hold out round(val_fraction * n) images (at least 1 when
    n >= 2, and never all: every identity keeps a training image). Returns
    sorted int64 (train_idx, val_idx); deterministic in seed."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    # a random key per image; sorting by (label, key) shuffles within each identity
    key = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((key, labels))
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    n_val = np.floor(val_fraction * count + 0.5).astype(np.int64)
    if val_fraction > 0:
        n_val = np.where(count >= 2, np.clip(n_val, 1, count - 1), 0)
    rank = np.arange(len(labels)) - np.repeat(start, count)  # position within its identity
    is_val = rank < np.repeat(n_val, count)
    return np.sort(order[~is_val]).astype(np.int64), np.sort(order[is_val]).astype(np.int64)
