"""The verifier model file ("deepid2-verifier/1" and "/2",
docs/verifier_model.md): write it and read it back, checked. What a file
computes (features, scores, decisions) is verifier.model.Verifier's, which
`Verifier.load` builds from `read_verifier_file`'s contents.

One file holds P patch networks (nets/deepid2.py parameters without ident.*), the PCA
projection and the Joint Bayesian matrices A, G with the decision threshold.
Version 1 stores one net config for all patches ("net"); version 2 one per
patch ("nets"), for layouts that mix patch shapes (55x47 RGB, 47x47 gray...).
"""
import dataclasses
import json

import numpy as np

from .. import safetensors
from ..nets.deepid2 import NetConfig, param_shapes

FORMAT = "deepid2-verifier/1"     # metadata "net": one config shared by all patches
FORMAT_V2 = "deepid2-verifier/2"  # metadata "nets": a list of P configs
# what `deepid2 train` writes (training/deepid2.py): best.safetensors, checkpoint.safetensors
TRAINED_NET_FORMATS = ("deepid2-model/1", "deepid2-checkpoint/1")
_RESERVED = ("format", "net", "nets", "patches", "layout", "verifier")


def _net_shapes(cfg):
    return {k: v for k, v in param_shapes(cfg).items() if not k.startswith("ident.")}


def _configs(net_cfg, n_patches):
    """net_cfg (one NetConfig, or a list of one per patch) as a list of
    n_patches configs, all with the same feature_dim."""
    if n_patches < 1:
        raise ValueError("a verifier needs at least one patch network")
    if isinstance(net_cfg, NetConfig):
        return [net_cfg] * n_patches
    cfgs = list(net_cfg)
    if len(cfgs) != n_patches:
        raise ValueError(f"{len(cfgs)} net configs for {n_patches} patch networks "
                         "(give one config, or one per patch)")
    for i, c in enumerate(cfgs):
        if not isinstance(c, NetConfig):
            raise TypeError(f"net config of patch {i} is a {type(c).__name__}, not a NetConfig")
    for i, c in enumerate(cfgs):
        if c.feature_dim != cfgs[0].feature_dim:
            raise ValueError(f"patch {i}'s net config has feature_dim {c.feature_dim}, patch 0's "
                             f"{cfgs[0].feature_dim}: all patches need the same feature_dim")
    return cfgs


def _check_shapes(cfgs, patch_params_list, pca_mean, pca_components, jb_A, jb_G):
    """Shapes of everything against the configs (one per patch); returns
    (D, d). ValueError names the culprit."""
    for i, (cfg, params) in enumerate(zip(cfgs, patch_params_list)):
        for name, shape in _net_shapes(cfg).items():
            if name not in params:
                raise ValueError(f"patch {i}: parameter {name!r} is missing")
            if tuple(np.shape(params[name])) != tuple(shape):
                raise ValueError(f"patch {i}: {name} has shape {np.shape(params[name])}, "
                                 f"expected {tuple(shape)} for this net config "
                                 f"({cfg.channels}x{cfg.height}x{cfg.width})")
    D = 2 * len(patch_params_list) * cfgs[0].feature_dim
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
    """Write a verifier file (atomically). patch_params_list[i] is nets/deepid2.py's
    parameter dict of patch network i (ident.* is left out); net_cfg is one
    NetConfig for all of them or a list of one per patch; threshold is the
    Joint Bayesian decision threshold ("same" iff score >= threshold).
    Format 1 when all patches share one config (files as before), else 2."""
    if len(patch_names) != len(patch_params_list):
        raise ValueError(f"{len(patch_names)} patch names for {len(patch_params_list)} networks")
    cfgs = _configs(net_cfg, len(patch_params_list))
    _check_shapes(cfgs, patch_params_list, pca_mean, pca_components, jb_A, jb_G)
    tensors = {}
    for i, (cfg, params) in enumerate(zip(cfgs, patch_params_list)):
        for name in _net_shapes(cfg):
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
    if all(c == cfgs[0] for c in cfgs):
        meta = {"format": FORMAT, "net": json.dumps(cfgs[0].to_dict())}
    else:
        meta = {"format": FORMAT_V2, "nets": json.dumps([c.to_dict() for c in cfgs])}
    meta.update({"patches": json.dumps(list(patch_names)), "layout": str(layout),
                 "verifier": "joint_bayesian"})
    for k, v in (extra_meta or {}).items():
        if k in _RESERVED:
            raise ValueError(f"extra_meta may not set the reserved key {k!r}")
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("extra_meta must map str to str")
        meta[k] = v
    safetensors.save(path, tensors, meta)


def _net_config(d, what):
    """NetConfig of a dict or its JSON text; ValueError names `what`."""
    try:
        d = d if isinstance(d, dict) else json.loads(d)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(NetConfig)})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}")
        return NetConfig.from_dict(d)
    except (ValueError, TypeError, KeyError) as e:  # bad JSON, missing keys, bad values
        raise ValueError(f"{what} is not a valid net config: {e}") from None


def _read_configs(path, meta, n_patches):
    """The per-patch configs of a file's metadata, v1 or v2."""
    if "net" in meta and "nets" in meta:
        raise ValueError(f"{path}: metadata has both \"net\" and \"nets\" "
                         f"({FORMAT!r} has \"net\", {FORMAT_V2!r} \"nets\")")
    if meta["format"] == FORMAT:
        if "net" not in meta:
            raise ValueError(f"{path}: metadata \"net\" is missing (format {FORMAT!r})")
        return _configs(_net_config(meta["net"], f"{path}: metadata \"net\""), n_patches)
    if "nets" not in meta:
        raise ValueError(f"{path}: metadata \"nets\" is missing (format {FORMAT_V2!r})")
    try:
        nets = json.loads(meta["nets"])
    except ValueError as e:
        raise ValueError(f"{path}: metadata \"nets\" is not valid JSON ({e})") from None
    if not isinstance(nets, list) or len(nets) != n_patches:
        got = f"{len(nets)} configs" if isinstance(nets, list) else "not a list"
        raise ValueError(f"{path}: metadata \"nets\" must list one net config per patch "
                         f"({n_patches}), got {got}")
    for i, c in enumerate(nets):
        if not isinstance(c, dict):
            raise ValueError(f"{path}: nets[{i}] is not a JSON object")
    cfgs = [_net_config(c, f"{path}: nets[{i}]") for i, c in enumerate(nets)]
    try:
        return _configs(cfgs, n_patches)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_verifier_file(path):
    """Read and check a verifier file (format 1 or 2). Returns its contents
    (a record of the file, not a verifier: `Verifier.load` makes one): nets
    (list of P NetConfigs, one per patch), net (nets[0], as before),
    patch_names, layout, metadata (all strings), patch_params (list of
    dicts), pca_mean, pca_components, jb_A, jb_G, threshold (float) and,
    when stored, l2_threshold / cosine_threshold."""
    tensors, meta = safetensors.load(path)
    fmt = meta.get("format")
    if fmt in TRAINED_NET_FORMATS:   # the likeliest mistake: a run's model given as --model
        raise ValueError(f"{path} is a network trained by `deepid2 train` (format {fmt!r}), "
                         f"not a verifier: make one from it with `deepid2 fit-verifier --nets "
                         f"RUN_FOLDER --data FACES --out verifier.safetensors`")
    if fmt not in (FORMAT, FORMAT_V2):
        raise ValueError(f"{path}: format is {fmt!r}, expected {FORMAT!r} or {FORMAT_V2!r}")
    try:
        names = json.loads(meta["patches"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: metadata \"patches\" is missing or not JSON") from None
    cfgs = _read_configs(path, meta, len(names))
    params = [{n: tensors[f"patch{i}/{n}"] for n in _net_shapes(cfg) if f"patch{i}/{n}" in tensors}
              for i, cfg in enumerate(cfgs)]
    out = {"nets": cfgs, "net": cfgs[0], "patch_names": names, "layout": meta.get("layout"),
           "metadata": meta, "patch_params": params, "pca_mean": tensors.get("pca/mean"),
           "pca_components": tensors.get("pca/components"), "jb_A": tensors.get("jb/A"),
           "jb_G": tensors.get("jb/G")}
    _check_shapes(cfgs, params, out["pca_mean"], out["pca_components"], out["jb_A"], out["jb_G"])
    out["threshold"] = float(tensors["jb/threshold"][0])
    for key, name in (("l2_threshold", "l2/threshold"), ("cosine_threshold", "cosine/threshold")):
        if name in tensors:
            out[key] = float(tensors[name][0])
    return out
