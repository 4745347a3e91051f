"""The verifier model file ("deepid2-verifier/1", docs/verifier_model.md):
write it, read it back, and compute what the C++ library computes from it
(raw features, the Joint Bayesian score) for comparisons.

One file holds P patch networks (net.py parameters without ident.*), the PCA
projection and the Joint Bayesian matrices A, G with the decision threshold.
"""
import json

import numpy as np

from . import safetensors
from .net import DeepID2, NetConfig, param_shapes

FORMAT = "deepid2-verifier/1"
_RESERVED = ("format", "net", "patches", "layout", "verifier")


def _net_shapes(cfg):
    return {k: v for k, v in param_shapes(cfg).items() if not k.startswith("ident.")}


def _check_shapes(cfg, patch_params_list, pca_mean, pca_components, jb_A, jb_G):
    """Shapes of everything against cfg; returns (D, d). ValueError names the culprit."""
    if not patch_params_list:
        raise ValueError("a verifier needs at least one patch network")
    want = _net_shapes(cfg)
    for i, params in enumerate(patch_params_list):
        for name, shape in want.items():
            if name not in params:
                raise ValueError(f"patch {i}: parameter {name!r} is missing")
            if tuple(np.shape(params[name])) != tuple(shape):
                raise ValueError(f"patch {i}: {name} has shape {np.shape(params[name])}, "
                                 f"expected {tuple(shape)} for this net config")
    D = 2 * len(patch_params_list) * cfg.feature_dim
    if np.shape(pca_mean) != (D,):
        raise ValueError(f"pca_mean has shape {np.shape(pca_mean)}, expected ({D},)")
    if np.ndim(pca_components) != 2 or np.shape(pca_components)[0] != D \
            or not 1 <= np.shape(pca_components)[1] <= D:
        raise ValueError(f"pca_components has shape {np.shape(pca_components)}, expected ({D}, d), 1 <= d <= {D}")
    d = np.shape(pca_components)[1]
    for name, m in (("jb_A", jb_A), ("jb_G", jb_G)):
        if np.shape(m) != (d, d):
            raise ValueError(f"{name} has shape {np.shape(m)}, expected ({d}, {d})")
    return D, d


def save_verifier(path, patch_params_list, net_cfg, patch_names, layout, pca_mean,
                  pca_components, jb_A, jb_G, threshold, extra_meta=None,
                  l2_threshold=None, cosine_threshold=None):
    """Write a verifier file (atomically). patch_params_list[i] is net.py's
    parameter dict of patch network i (ident.* is left out); threshold is
    the Joint Bayesian decision threshold ("same" iff score >= threshold)."""
    if len(patch_names) != len(patch_params_list):
        raise ValueError(f"{len(patch_names)} patch names for {len(patch_params_list)} networks")
    _check_shapes(net_cfg, patch_params_list, pca_mean, pca_components, jb_A, jb_G)
    tensors = {}
    for i, params in enumerate(patch_params_list):
        for name in _net_shapes(net_cfg):
            tensors[f"patch{i}/{name}"] = np.asarray(params[name], np.float32)
    f32 = lambda a: np.asarray(a, np.float32)
    tensors.update({"pca/mean": f32(pca_mean), "pca/components": f32(pca_components),
                    "jb/A": f32(jb_A), "jb/G": f32(jb_G),
                    "jb/threshold": np.array([threshold], np.float32)})
    for name, t in (("l2/threshold", l2_threshold), ("cosine/threshold", cosine_threshold)):
        if t is not None:
            tensors[name] = np.array([t], np.float32)
    for name, a in tensors.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} holds non-finite values")
    meta = {"format": FORMAT, "net": json.dumps(net_cfg.to_dict()),
            "patches": json.dumps(list(patch_names)), "layout": str(layout),
            "verifier": "joint_bayesian"}
    for k, v in (extra_meta or {}).items():
        if k in _RESERVED:
            raise ValueError(f"extra_meta may not set the reserved key {k!r}")
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("extra_meta must map str to str")
        meta[k] = v
    safetensors.save(path, tensors, meta)


def load_verifier(path):
    """Read and check a verifier file. Returns a dict: net (NetConfig),
    patch_names, layout, metadata (all strings), patch_params (list of
    dicts), pca_mean, pca_components, jb_A, jb_G, threshold (float) and, when
    stored, l2_threshold / cosine_threshold."""
    tensors, meta = safetensors.load(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    cfg = NetConfig.from_dict(json.loads(meta["net"]))
    names = json.loads(meta["patches"])
    params = [{n: tensors[f"patch{i}/{n}"] for n in _net_shapes(cfg) if f"patch{i}/{n}" in tensors}
              for i in range(len(names))]
    out = {"net": cfg, "patch_names": names, "layout": meta.get("layout"), "metadata": meta,
           "patch_params": params, "pca_mean": tensors.get("pca/mean"),
           "pca_components": tensors.get("pca/components"), "jb_A": tensors.get("jb/A"),
           "jb_G": tensors.get("jb/G")}
    _check_shapes(cfg, params, out["pca_mean"], out["pca_components"], out["jb_A"], out["jb_G"])
    out["threshold"] = float(tensors["jb/threshold"][0])
    for key, name in (("l2_threshold", "l2/threshold"), ("cosine_threshold", "cosine/threshold")):
        if name in tensors:
            out[key] = float(tensors[name][0])
    return out


def raw_features(backend, patch_params_list, net_cfg, patches):
    """Raw features N x D of faces: patches N x 2P x C x H x W float32 in
    file order [p0, p0 flipped, p1, ...]; patches 2i and 2i+1 go through
    network i, and the 2P vectors are concatenated in that order."""
    patches = np.ascontiguousarray(patches, np.float32)
    n, two_p = patches.shape[:2]
    if two_p != 2 * len(patch_params_list):
        raise ValueError(f"{two_p} patches per face for {len(patch_params_list)} networks")
    net, F = DeepID2(net_cfg, backend), net_cfg.feature_dim
    out = np.empty((n, two_p * F), np.float32)
    for i, params in enumerate(patch_params_list):
        x = np.ascontiguousarray(patches[:, 2 * i:2 * i + 2]).reshape(2 * n, *patches.shape[2:])
        out[:, 2 * i * F:(2 * i + 2) * F] = net.features(params, x).reshape(n, 2 * F)
    return out


def jb_score(model, feature_a, feature_b):
    """r(z1, z2) = z1'A z1 + z2'A z2 - 2 z1'G z2 with z = (x - mean) @ components,
    in float64, for one pair or rows of pairs; model as load_verifier returns."""
    mean = np.float64(model["pca_mean"])
    comp, A, G = (np.float64(model[k]) for k in ("pca_components", "jb_A", "jb_G"))
    z1 = (np.float64(feature_a) - mean) @ comp
    z2 = (np.float64(feature_b) - mean) @ comp
    return (np.sum((z1 @ A) * z1, -1) + np.sum((z2 @ A) * z2, -1)
            - 2 * np.sum((z1 @ G) * z2, -1))
