"""Raw verifier features of aligned faces: for each face, the 160-d DeepID2
vectors of every patch of a layout and of its flipped counterpart, in the
order [patch0, patch0 flipped, patch1, patch1 flipped, ...] (the verifier
file's order, /tmp/spec/verifier_format.md); patch 2i and 2i+1 both go
through network i. Faces are uint8 H x W x 3 BGR arrays (as align_face and
cv2.imread give) or image paths.

Layouts: a `PatchLayout` of deepid2_core.face.patches (patches cut by its
`cut_all`, landmark-centred regions on the face's landmarks, by default the
canonical `MEAN_SHAPE` of an aligned face), or `PatchInputs`: one input per
network (face.inputs), exactly what each network was trained on: the whole
face's fixed crop (PatchSpec; its flipped counterpart is its mirror image) or
a `deepid2 train --layout L --patch K` patch (LayoutPatch).
Patches are normalised as in training (the backend's assemble_batch:
(u - 127.5) / 128, NCHW float32).

Cache: with cache_dir, each face's 2 x 160 vector of one patch network is
kept in cache_dir/<network key>/<xx>/<image key>.npy, the network key a sha1
of the patch's description and the network's config and parameters, the
image key a sha1 of the file's bytes (or the array's shape, dtype and bytes)
and of its landmarks when given. A changed image or network misses the cache
by itself, and models that share a patch network share its cached features.
"""
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import safetensors
from ..face.align import MEAN_SHAPE, to_pixels
from ..face.image import read_image
from ..face.inputs import LayoutPatch, PatchSpec, cut_fixed_patch, cut_layout_patch, spec_from_dict
from ..face.patches import PatchLayout, cut_all, patch_name
from ..nets.deepid2 import DeepID2, NetConfig, param_shapes
from ..progress import Progress

FEATURE_VERSION = 2


WHOLE = "whole"   # the name of one whole-face network's inputs: a v1 verifier file's


@dataclass(frozen=True)
class PatchInputs:
    """One input per patch network (face.inputs.PatchSpec: the whole-face crop;
    LayoutPatch: a patch of a layout with its flipped counterpart), as stored in
    each trained network's "input" metadata. `whole(spec)`, named WHOLE, is the
    one whole-face network of `deepid2 train` that version 1 verifier files
    hold; its dict, and so every key made from it, is the one those files had."""
    specs: tuple
    name: str = "patches"

    def __post_init__(self):
        specs = tuple(spec_from_dict(s) if isinstance(s, dict) else s for s in self.specs)
        if not specs or not all(isinstance(s, (PatchSpec, LayoutPatch)) for s in specs):
            raise ValueError("PatchInputs needs one or more PatchSpec / LayoutPatch specs")
        if self.name == WHOLE and (len(specs) != 1 or not isinstance(specs[0], PatchSpec)):
            raise ValueError(f"PatchInputs named {WHOLE!r} holds one PatchSpec, got {specs}")
        object.__setattr__(self, "specs", specs)

    @classmethod
    def whole(cls, spec=PatchSpec()):
        return cls((spec,), WHOLE)

    def __len__(self):
        return len(self.specs)

    def to_dict(self):
        if self.name == WHOLE:
            return dict(name=WHOLE, spec=self.specs[0].to_dict())
        return dict(name=self.name, inputs=[s.to_dict() for s in self.specs])

    @classmethod
    def from_dict(cls, d):
        if d.get("name") == WHOLE and "spec" in d:
            return cls.whole(PatchSpec.from_dict(d["spec"]))
        return cls(tuple(d["inputs"]), d.get("name", "patches"))


def _spec_name(spec):
    return spec.name if isinstance(spec, LayoutPatch) else "whole"


class PatchNetwork(NamedTuple):
    params: dict          # nets/deepid2.py parameter names -> float32 arrays (ident.* not needed)
    cfg: NetConfig


def patch_names(layout):
    if isinstance(layout, PatchInputs):
        return [_spec_name(s) for s in layout.specs]
    return [patch_name(layout, k) for k in range(len(layout))]


def patch_shape(layout, k):
    """(height, width, channels) of patch k."""
    if isinstance(layout, PatchInputs):
        s = layout.specs[k]
        return s.height, s.width, s.channels
    return layout.patch_shape(k)


def cut_face_patches(face, layout, landmarks=None):
    """uint8 patches of one BGR face in the feature order [p0, p0 flipped, ...]."""
    if not (isinstance(face, np.ndarray) and face.dtype == np.uint8 and face.ndim == 3
            and face.shape[2] == 3):
        raise ValueError(f"a face must be a uint8 H x W x 3 BGR image, got "
                         f"{getattr(face, 'dtype', type(face).__name__)} "
                         f"{getattr(face, 'shape', '')}")
    if isinstance(layout, PatchInputs):
        out = []
        for spec in layout.specs:
            if isinstance(spec, PatchSpec):
                p = cut_fixed_patch(face, spec)
                out += [p, np.ascontiguousarray(p[:, ::-1])]
            else:    # trained on the mean shape ("mean"): the face's own points would differ
                out += list(cut_layout_patch(face, spec,
                                             landmarks if spec.landmarks == "csv" else None))
        return out
    if landmarks is None:
        landmarks = to_pixels(MEAN_SHAPE, (face.shape[1], face.shape[0]))
    plain, flipped = cut_all(face, landmarks, layout), cut_all(face, landmarks, layout, True)
    return [p for pair in zip(plain, flipped) for p in pair]


def check_networks(layout, networks):
    if not isinstance(layout, (PatchLayout, PatchInputs)):
        raise ValueError(f"layout must be a PatchLayout or PatchInputs, got "
                         f"{type(layout).__name__}")
    if len(networks) != len(layout):
        raise ValueError(f"layout {layout.name!r} has {len(layout)} patches but "
                         f"{len(networks)} networks were given (one per patch)")
    for k, (params, cfg) in enumerate(networks):
        if (cfg.height, cfg.width, cfg.channels) != patch_shape(layout, k):
            raise ValueError(f"patch {k} is {patch_shape(layout, k)} (h, w, c) but its network "
                             f"takes {(cfg.height, cfg.width, cfg.channels)}")
        for name, shape in param_shapes(cfg).items():
            if name.startswith("ident."):
                continue
            got = params.get(name)
            if got is None or tuple(got.shape) != tuple(shape):
                raise ValueError(f"network of patch {k}: parameter {name} should be {shape}, "
                                 f"got {None if got is None else tuple(got.shape)}")


def model_key(layout, networks):
    """sha1 of the layout and of every network's config and parameters."""
    h = hashlib.sha1(f"deepid2-features/{FEATURE_VERSION}\n".encode())
    h.update(json.dumps(layout.to_dict(), sort_keys=True).encode())
    for network in networks:
        _hash_network(h, *network)
    return h.hexdigest()


def _hash_network(h, params, cfg):
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name in sorted(n for n in params if not n.startswith("ident.")):
        a = np.ascontiguousarray(params[name], np.float32)
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())


def network_key(layout, k, network):
    """sha1 of patch k's description and its network's config and parameters:
    the cache key of that network's features."""
    params, cfg = network
    if isinstance(layout, PatchInputs):
        where = layout.specs[k].to_dict()
    else:
        where = dict(layout=layout.to_dict(), index=k)
    h = hashlib.sha1(f"deepid2-patch-features/{FEATURE_VERSION}\n".encode())
    h.update(json.dumps(where, sort_keys=True).encode())
    _hash_network(h, params, cfg)
    return h.hexdigest()


def load_patch_network(path):
    """A trained network from a `deepid2 train` model file (best.safetensors)."""
    return patch_network(*safetensors.load(path), path)


def patch_network(tensors, meta, path):
    """The network of a loaded `deepid2 train` model file (path: for messages)."""
    if "net" not in meta:
        raise ValueError(f"{path} has no 'net' config in its metadata: not a deepid2 model file")
    cfg = NetConfig.from_dict(json.loads(meta["net"]))
    params = {k: v for k, v in tensors.items() if "/" not in k and not k.startswith("ident.")}
    return PatchNetwork(params, cfg)


class FeatureExtractor:
    """extract(faces, landmarks=None) -> float32 N x (P * 2 * feature_dim)."""

    def __init__(self, layout, networks, backend, batch=32, cache_dir=None, progress=True):
        networks = [PatchNetwork(*n) for n in networks]
        check_networks(layout, networks)
        if int(batch) < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        dims = {cfg.feature_dim for _, cfg in networks}
        if len(dims) != 1:
            raise ValueError(f"all patch networks must give features of one size, got {dims}")
        self.layout, self.be, self.batch, self.progress = layout, backend, int(batch), progress
        self.feature_dim = dims.pop()
        self.dim = 2 * len(networks) * self.feature_dim
        self.key = model_key(layout, networks)
        self.cache_dirs = [None if cache_dir is None else
                           os.path.join(os.fspath(cache_dir), network_key(layout, k, n)[:20])
                           for k, n in enumerate(networks)]
        self.networks = networks
        self.nets = [(DeepID2(cfg, backend),
                      {k: backend.to_device(np.ascontiguousarray(v, np.float32))
                       for k, v in params.items() if not k.startswith("ident.")})
                     for params, cfg in networks]

    def extract(self, faces, landmarks=None):
        faces = list(faces)
        if landmarks is not None and len(landmarks) != len(faces):
            raise ValueError(f"{len(faces)} faces but {len(landmarks)} landmark sets")
        out = np.empty((len(faces), self.dim), np.float32)
        bar = Progress(len(faces), "features", enabled=self.progress)
        try:
            for start in range(0, len(faces), self.batch):
                todo = []
                for i in range(start, min(start + self.batch, len(faces))):
                    lm = None if landmarks is None else np.asarray(landmarks[i], np.float64)
                    key, image = _image_key(faces[i], lm)
                    missing = [k for k in range(len(self.nets)) if not self._cached(k, key, out[i])]
                    if missing:
                        todo.append((i, key, image, lm, missing))
                if todo:
                    self._compute(todo, out)
                bar.update(min(start + self.batch, len(faces)) - start)
        finally:
            bar.close()
        return out

    def cut(self, face, landmarks=None):
        """The 2P uint8 patches of one aligned BGR face that the networks take,
        in the feature order [p0, p0 flipped, p1, ...] (cut_face_patches)."""
        return cut_face_patches(face, self.layout, landmarks)

    def patch_features(self, patches):
        """Raw features N x D of faces given by their cut patches: patches[i] is
        face i's 2P uint8 H x W x C patches in the feature order (as `cut`
        gives them). `extract` runs this after cutting."""
        patches = [list(p) for p in patches]
        for i, p in enumerate(patches):
            if len(p) != 2 * len(self.nets):
                raise ValueError(f"face {i} has {len(p)} patches, this model takes "
                                 f"{2 * len(self.nets)} (2 per network)")
            for q, a in enumerate(p):
                want = patch_shape(self.layout, q // 2)
                if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == want):
                    got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                    raise ValueError(f"face {i}, patch {q}: expected a uint8 array of shape "
                                     f"{want} (h, w, c), got {got}")
        out = np.empty((len(patches), self.dim), np.float32)
        span = 2 * self.feature_dim
        if patches:
            for k in range(len(self.nets)):
                out[:, k * span:(k + 1) * span] = self._network_features(
                    k, [p[2 * k] for p in patches], [p[2 * k + 1] for p in patches])
        return out

    def _network_features(self, k, plain, flipped):
        """b x 2F: network k's features of each plain patch, then of its flipped counterpart."""
        net, params = self.nets[k]
        b = len(plain)
        stack = self.be.to_device(np.stack(plain + flipped))
        f = self.be.to_host(net.features(params, self.be.assemble_batch(stack, np.arange(2 * b))))
        return np.concatenate([f[:b], f[b:]], 1)

    def _compute(self, todo, out):
        cut = []
        for _, _, image, lm, _ in todo:
            if isinstance(image, str):
                path = image
                image, why = read_image(path)
                if image is None:
                    raise ValueError(f"cannot read face image {path}: {why}")
            cut.append(self.cut(image, lm))
        span = 2 * self.feature_dim
        for k in range(len(self.nets)):
            rows = [j for j, t in enumerate(todo) if k in t[4]]
            if not rows:
                continue
            f = self._network_features(k, [cut[j][2 * k] for j in rows],
                                       [cut[j][2 * k + 1] for j in rows])
            for r, j in enumerate(rows):
                i, key = todo[j][:2]
                v = out[i, k * span:(k + 1) * span]
                v[:] = f[r]
                self._store(k, key, v)

    def _path(self, k, key):
        return os.path.join(self.cache_dirs[k], key[:2], key + ".npy")

    def _cached(self, k, key, row):
        """Copy network k's cached vector of image `key` into row; False when absent."""
        if self.cache_dirs[k] is None:
            return False
        try:
            v = np.load(self._path(k, key))
        except (OSError, ValueError, EOFError):
            return False         # absent or damaged: computed again and rewritten
        span = 2 * self.feature_dim
        if v.shape != (span,) or v.dtype != np.float32:
            return False
        row[k * span:(k + 1) * span] = v
        return True

    def _store(self, k, key, vector):
        if self.cache_dirs[k] is None:
            return
        path = self._path(k, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(vector, np.float32))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _image_key(face, landmarks):
    """(sha1 hex of the content (+ landmarks), the face: array, or path to read)."""
    h = hashlib.sha1()
    if isinstance(face, (str, os.PathLike)):
        path = os.fspath(face)
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError as e:
            raise ValueError(f"cannot read face image {path}: {e.strerror or e}") from None
    elif isinstance(face, np.ndarray):
        h.update(f"array{face.shape}{face.dtype}".encode())
        h.update(np.ascontiguousarray(face).tobytes())
        path = face
    else:
        raise ValueError(f"a face must be an image array or a path, got {type(face).__name__}")
    if landmarks is not None:
        h.update(np.ascontiguousarray(landmarks, np.float64).tobytes())
    return h.hexdigest(), path
