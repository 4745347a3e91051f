"""The verifier: the one object that holds a model and gives raw features,
scores and "same" decisions. PCA to d dimensions, then Joint Bayesian, with
the "same" threshold chosen on training pairs; L2 and cosine thresholds on
the same PCA output come along as baselines. A verifier loaded from a model
file (`Verifier.load`, docs/verifier_model.md) also holds its patch networks
(a features.FeatureExtractor), so `features` turns aligned faces into the raw
features that `score` compares; one fitted on features (`Verifier.fit`) gets
them with `with_networks` before `save` writes the file. `export_tensors`
gives the pca/*, jb/*, l2/* and cosine/* tensors of the file (float32).

Every command (verify, enroll, identify, eval-lfw, eval-ident, fit-verifier),
the Python API and the C++ agreement tests use this object."""
import json
import os

import numpy as np

from ..errors import BadModelFile
from ..face.inputs import LayoutPatch, PatchSpec
from .baselines import CosineScorer, L2Scorer
from .features import WHOLE, FeatureExtractor, PatchInputs, patch_names
from .impostor import DEFAULT_PAIRS, ImpostorScores
from .joint_bayesian import JointBayesian
from .metrics import best_threshold
from .pca import DEFAULT_DIM, PCA

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "models", "verifier.safetensors")

IMPOSTOR_KEY = "impostor_scores"   # metadata: impostor.ImpostorScores as JSON


def sample_pairs(labels, n_pairs, seed=0):
    """Up to n_pairs matched and n_pairs mismatched index pairs (i < j never
    repeated within a kind), deterministic in seed: (first, second, same)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    _, index = np.unique(labels, return_inverse=True)
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], np.arange(index.max() + 1))
    counts = np.bincount(index)
    multi = np.flatnonzero(counts >= 2)
    if len(multi) == 0 or len(counts) < 2:
        raise ValueError("pairs need at least 2 identities and one with >= 2 images")
    # matched: a random identity with >= 2 images (weighted by its pair count), two of its images
    w = counts[multi] * (counts[multi] - 1.0)
    ids = rng.choice(multi, size=4 * n_pairs, p=w / w.sum())
    a = rng.integers(0, counts[ids])
    b = (a + rng.integers(1, counts[ids])) % counts[ids]
    same_pairs = np.unique(np.sort(np.stack([order[starts[ids] + a], order[starts[ids] + b]], 1),
                                   1), axis=0)
    same_pairs = same_pairs[rng.permutation(len(same_pairs))[:n_pairs]]
    i, j = rng.integers(0, len(labels), (2, 4 * n_pairs))
    keep = index[i] != index[j]
    diff_pairs = np.unique(np.sort(np.stack([i[keep], j[keep]], 1), 1), axis=0)
    diff_pairs = diff_pairs[rng.permutation(len(diff_pairs))[:n_pairs]]
    first = np.concatenate([same_pairs[:, 0], diff_pairs[:, 0]])
    second = np.concatenate([same_pairs[:, 1], diff_pairs[:, 1]])
    same = np.concatenate([np.ones(len(same_pairs), bool), np.zeros(len(diff_pairs), bool)])
    return first, second, same


class Verifier:
    """pca, jb (the score), threshold ("same" iff Joint Bayesian score >=
    threshold), baseline_thresholds {"l2": t, "cosine": t}; extractor (the
    patch networks, None for a verifier fitted on features alone), path and
    metadata of the file it was loaded from; impostor (impostor.ImpostorScores
    of its training people, for open-set thresholds; None in files written
    before it was stored)."""

    def __init__(self, pca, jb, threshold, baseline_thresholds=None, extractor=None, path=None,
                 metadata=None, impostor=None):
        self.pca, self.jb, self.threshold = pca, jb, float(threshold)
        self.baseline_thresholds = dict(baseline_thresholds or {})
        self.scorers = {"joint_bayesian": jb, "l2": L2Scorer(), "cosine": CosineScorer()}
        self.extractor, self.path, self.metadata = extractor, path, dict(metadata or {})
        self.impostor = impostor

    @classmethod
    def load(cls, path=None, backend="cpu", progress=True, cache_dir=None):
        """A verifier model file (None: the shipped model) with its networks on
        `backend` ("cpu", "gpu" or a backend module). cache_dir: where raw
        features are kept between runs (features.FeatureExtractor)."""
        from .model_file import read_verifier_file
        if path is None:
            path = DEFAULT_MODEL
            if not os.path.isfile(path):
                raise BadModelFile(f"no --model given and the shipped model {path} is missing: "
                                   "pass --model (a file written by `deepid2 fit-verifier`)")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise BadModelFile(f"model file {path} is a folder, not a model file")
        if not os.path.isfile(path):
            raise BadModelFile(f"model file {path} does not exist")
        try:
            m = read_verifier_file(path)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise BadModelFile(f"{path} is not a verifier model file ({type(e).__name__}: {e})") \
                from None
        except ValueError as e:
            raise BadModelFile(str(e)) from None
        layout = _model_layout(path, m)
        if isinstance(backend, str):
            from ..backends import get_backend
            backend = get_backend(backend)
        impostor = None
        if IMPOSTOR_KEY in m["metadata"]:
            try:
                impostor = ImpostorScores.from_json(m["metadata"][IMPOSTOR_KEY], path)
            except ValueError as e:
                raise BadModelFile(str(e)) from None
        ext = FeatureExtractor(layout, list(zip(m["patch_params"], m["nets"])), backend,
                               cache_dir=cache_dir, progress=progress)
        return cls(PCA(m["pca_mean"], m["pca_components"]),
                   JointBayesian.from_score_matrices(m["jb_A"], m["jb_G"]), m["threshold"],
                   {k.split("_")[0]: m[k] for k in ("l2_threshold", "cosine_threshold") if k in m},
                   ext, path, m["metadata"], impostor)

    def with_networks(self, extractor):
        """This verifier with the patch networks (a FeatureExtractor) whose raw
        features it was fitted on: what `save` writes and `features` runs."""
        if extractor.dim != self.pca.input_dim:
            raise ValueError(f"the networks give {extractor.dim}-d features, the PCA was fitted "
                             f"on {self.pca.input_dim}-d")
        self.extractor = extractor
        return self

    def _networks(self):
        if self.extractor is None:
            raise ValueError("this verifier was fitted on features and has no patch networks "
                             "(load a model file, or give them with with_networks)")
        return self.extractor

    @property
    def layout(self):
        return self._networks().layout

    def features(self, faces, landmarks=None):
        """Raw features N x D (float32) of aligned faces: uint8 H x W x 3 BGR
        arrays or image paths (features.FeatureExtractor.extract)."""
        return self._networks().extract(faces, landmarks)

    def cut_patches(self, face, landmarks=None):
        """The 2P uint8 patches of one aligned BGR face, in the feature order."""
        return self._networks().cut(face, landmarks)

    def patch_features(self, patches):
        """Raw features of faces given by their cut patches (`cut_patches`'
        lists): what `features` computes after cutting."""
        return self._networks().patch_features(patches)

    def key(self):
        """Identifies the model for gallery files: its networks' key + threshold."""
        return f"{self._networks().key}/{self.threshold!r}"

    @classmethod
    def fit(cls, features, labels, d=DEFAULT_DIM, n_pairs=3000, seed=0,
            impostor_pairs=DEFAULT_PAIRS, **jb_options):
        """PCA and Joint Bayesian on raw training features (N x D) with identity
        labels; thresholds maximise accuracy on n_pairs matched + n_pairs
        mismatched training pairs (`sample_pairs`); the impostor score
        distribution on impostor_pairs pairs per gallery size (0: none)."""
        pca = PCA.fit(features, d)
        z = pca.transform(features)
        jb = JointBayesian.fit(z, labels, **jb_options)
        first, second, same = sample_pairs(labels, n_pairs, seed)
        self = cls(pca, jb, 0.0)
        thresholds = {name: best_threshold(s.score(z[first], z[second]), same)[0]
                      for name, s in self.scorers.items()}
        self.threshold = thresholds.pop("joint_bayesian")
        self.baseline_thresholds = thresholds
        if impostor_pairs:
            self.impostor = ImpostorScores.measure(self, features, labels, impostor_pairs, seed)
        return self

    def project(self, features):
        return self.pca.transform(features)

    def score(self, x1, x2, method="joint_bayesian"):
        """Scores of raw feature pairs (rows of x1 with rows of x2)."""
        return self.scorers[method].score(self.project(x1), self.project(x2))

    def score_matrix(self, probes, gallery, method="joint_bayesian"):
        """Scores of every raw probe feature against every raw gallery feature."""
        return self.scorers[method].score_matrix(self.project(probes), self.project(gallery))

    def same(self, x1, x2):
        return self.score(x1, x2) >= self.threshold

    def save(self, path, extra_meta=None):
        """Write the verifier file: the networks, PCA, Joint Bayesian and the
        thresholds (model_file.save_verifier), with the patches the networks
        take as metadata ("patch_spec" for one whole-face network, else
        "patch_inputs") after extra_meta."""
        from .model_file import save_verifier
        ext = self._networks()
        layout, meta = ext.layout, dict(extra_meta or {})
        if not isinstance(layout, PatchInputs):
            raise ValueError(f"a verifier file stores PatchInputs, not {type(layout).__name__}")
        if layout.name == WHOLE:
            meta["patch_spec"] = json.dumps(layout.specs[0].to_dict())
            layout_name = WHOLE
        else:
            meta["patch_inputs"] = json.dumps(layout.to_dict())
            layouts = {s.layout if isinstance(s, LayoutPatch) else WHOLE for s in layout.specs}
            layout_name = layouts.pop() if len(layouts) == 1 else "mixed"
        if self.impostor is not None:
            meta[IMPOSTOR_KEY] = self.impostor.to_json()
        t = self.export_tensors()
        save_verifier(path, [n.params for n in ext.networks], [n.cfg for n in ext.networks],
                      patch_names(layout), layout_name, t["pca/mean"], t["pca/components"],
                      t["jb/A"], t["jb/G"], self.threshold, extra_meta=meta,
                      l2_threshold=self.baseline_thresholds.get("l2"),
                      cosine_threshold=self.baseline_thresholds.get("cosine"))

    def export_tensors(self):
        """The verifier file's pca/*, jb/* and baseline tensors, float32. The
        Joint Bayesian mean is folded into pca/mean (the components are
        orthonormal, so (x - mean - C m) @ C = (x - mean) @ C - m)."""
        c = self.pca.components
        out = {"pca/mean": (self.pca.mean + c @ self.jb.mean).astype(np.float32),
               "pca/components": c.astype(np.float32),
               "jb/A": self.jb.A.astype(np.float32), "jb/G": self.jb.G.astype(np.float32),
               "jb/threshold": np.array([self.threshold], np.float32)}
        for name, t in self.baseline_thresholds.items():
            out[f"{name}/threshold"] = np.array([t], np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors):
        """A verifier from exported tensors (scores as the C++ reader computes them)."""
        need = ("pca/mean", "pca/components", "jb/A", "jb/G", "jb/threshold")
        missing = [k for k in need if k not in tensors]
        if missing:
            raise ValueError(f"verifier tensors missing: {', '.join(missing)}")
        pca = PCA(tensors["pca/mean"], tensors["pca/components"])
        jb = JointBayesian.from_score_matrices(tensors["jb/A"], tensors["jb/G"])
        if jb.dim != pca.dim:
            raise ValueError(f"jb/A is {jb.dim} x {jb.dim} but pca/components has {pca.dim} "
                             "columns")
        base = {k.split("/")[0]: float(v[0]) for k, v in tensors.items()
                if k in ("l2/threshold", "cosine/threshold")}
        return cls(pca, jb, float(tensors["jb/threshold"][0]), base)


def _model_layout(path, m):
    """The patches a model file's networks take: "patch_inputs" metadata (one
    input spec per network), else the v1 whole-face "patch_spec"."""
    meta, n = m["metadata"], len(m["patch_params"])
    if "patch_inputs" in meta:
        try:
            layout = PatchInputs.from_dict(json.loads(meta["patch_inputs"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BadModelFile(f"{path}: unreadable patch_inputs metadata ({e})") from None
        if len(layout) != n:
            raise BadModelFile(f"{path}: patch_inputs lists {len(layout)} patches for {n} "
                               "networks")
        return layout
    if m["layout"] != "whole" or n != 1:
        raise BadModelFile(f"{path}: layout {m['layout']!r} with {n} patches and no "
                           "patch_inputs metadata: cannot tell which patches its networks take")
    spec = meta.get("patch_spec")
    return PatchInputs.whole(PatchSpec.from_dict(json.loads(spec)) if spec else PatchSpec())
