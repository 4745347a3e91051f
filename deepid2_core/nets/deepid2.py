"""The DeepID2 ConvNet: shapes, parameters, and an explicit forward/backward.

Layers (Sun et al. 2014, fig. 2), every shape derived from the input size:
  conv1 4x4, 20 maps, ReLU      -> max-pool 2x2
  conv2 3x3, 40 maps, ReLU      -> max-pool 2x2
  conv3 3x3, 60 maps, ReLU, locally shared on a 2x2 grid of regions
                                -> max-pool 2x2 (pool3)
  conv4 2x2, 80 maps, ReLU, locally connected
  deepid: 160-d, ReLU, fully connected to pool3 and conv4 at once
  ident: n_classes logits (softmax in the loss)

Parameters are plain named float32 arrays (see `param_shapes`). Initial
values come from `np.random.default_rng(seed)`, drawn in sorted-name order:
weights are normal with std sqrt(2 / fan_in) (He, for ReLU layers) and
sqrt(1 / fan_in) for the ident layer, fan_in = C * kh * kw (convolutions) or
the input width (dense); biases are 0.
"""

from dataclasses import asdict, dataclass

import numpy as np

LAYERS = (  # name, kernel, maps, weight sharing
    ("conv1", 4, 20, "shared"), ("conv2", 3, 40, "shared"), ("conv3", 3, 60, "grid"),
    ("conv4", 2, 80, "local"))


@dataclass(frozen=True)
class NetConfig:
    n_classes: int
    height: int = 55
    width: int = 47
    channels: int = 3
    feature_dim: int = 160
    conv3_grid: tuple = (2, 2)   # conv3 regions: a grid of this many rows x columns
    conv3_region: tuple = None   # or: regions of this many neurons (overrides the grid)

    def to_dict(self):
        d = asdict(self)
        d["conv3_grid"] = list(self.conv3_grid)
        d["conv3_region"] = list(self.conv3_region) if self.conv3_region else None
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["conv3_grid"] = tuple(d["conv3_grid"])
        d["conv3_region"] = tuple(d["conv3_region"]) if d.get("conv3_region") else None
        return cls(**d)


@dataclass(frozen=True)
class ConvShape:
    name: str
    c: int
    h: int
    w: int
    k: int
    kernel: int
    region: tuple

    @property
    def out_hw(self):
        return self.h - self.kernel + 1, self.w - self.kernel + 1

    @property
    def grid(self):
        (oh, ow), (rh, rw) = self.out_hw, self.region
        return -(-oh // rh), -(-ow // rw)


def stack_shapes(layers, channels, height, width, grid=(2, 2), grid_region=None):
    """Shapes of a stack of convolutions, each of the first three followed by a
    2x2 max-pool. Sharing: "shared" (ordinary), "grid" (a grid of regions, or
    regions of grid_region neurons) or "local" (locally connected)."""
    shapes, c, h, w = [], channels, height, width
    for i, (name, kernel, maps, sharing) in enumerate(layers):
        oh, ow = h - kernel + 1, w - kernel + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"input {height}x{width} is too small: {name} has no output")
        if sharing == "grid":
            region = grid_region or (-(-oh // grid[0]), -(-ow // grid[1]))
        elif sharing == "local":
            region = (1, 1)
        else:
            region = (oh, ow)
        shapes.append(ConvShape(name, c, h, w, maps, kernel, tuple(region)))
        c = maps
        if i < 3:  # conv1..conv3 are followed by a 2x2 max-pool
            h, w = oh // 2, ow // 2
            if h < 1 or w < 1:
                raise ValueError(f"input {height}x{width} is too small for pool{i + 1}")
        else:
            h, w = oh, ow
    return shapes


def conv_shapes(cfg):
    """The four convolutions' input shapes and regions for this config."""
    return stack_shapes(LAYERS, cfg.channels, cfg.height, cfg.width, cfg.conv3_grid,
                        cfg.conv3_region)


def stack_forward(be, convs, params, x, acts, fuse_pools=False):
    """conv1..conv4 with the pools, activations into acts; returns conv4's output.
    fuse_pools: each of conv1..conv3 and its pool as one op (lsconv_pool_forward),
    which keeps only the pooled maps (acts "pool1".."pool3"), not conv1..conv3's."""
    h = acts["x"] = x
    for i, cs in enumerate(convs[:3]):
        w, b = params[cs.name + ".w"], params[cs.name + ".b"]
        if fuse_pools:
            h, am = be.lsconv_pool_forward(h, w, b, cs.region, s=2)
        else:
            acts[cs.name] = be.lsconv_forward(h, w, b, cs.region)
            h, am = be.maxpool_forward(acts[cs.name], 2)
        acts[f"pool{i + 1}"], acts[f"pool{i + 1}.argmax"] = h, am
    cs = convs[3]
    acts[cs.name] = be.lsconv_forward(h, params[cs.name + ".w"], params[cs.name + ".b"],
                                      cs.region)
    return acts[cs.name]


def stack_backward(be, convs, params, acts, dconv4, grads, dpool3=None):
    """From d conv4 down to conv1, adding into grads; dpool3 is any gradient
    that reaches pool3 by another path (DeepID2's deepid layer). Each pooled
    layer goes back the way stack_forward went (fused when acts lacks its output)."""
    cs = convs[3]
    dh, _, _ = be.lsconv_backward(acts["pool3"], params[cs.name + ".w"], acts[cs.name], dconv4,
                                  cs.region, dw=grads[cs.name + ".w"], db=grads[cs.name + ".b"])
    if dpool3 is not None:
        dh += dpool3
    for i in (2, 1, 0):  # dh: d pool{i + 1}
        cs = convs[i]
        x_in = acts["x"] if i == 0 else acts[f"pool{i}"]
        w, dw, db = params[cs.name + ".w"], grads[cs.name + ".w"], grads[cs.name + ".b"]
        pool, argmax = acts[f"pool{i + 1}"], acts[f"pool{i + 1}.argmax"]
        if cs.name in acts:
            dconv = be.maxpool_backward(dh, argmax, cs.out_hw, 2)
            dh, _, _ = be.lsconv_backward(x_in, w, acts[cs.name], dconv, cs.region,
                                          need_dx=i > 0, dw=dw, db=db)
        else:
            dh, _, _ = be.lsconv_pool_backward(x_in, w, pool, argmax, dh, cs.region,
                                               need_dx=i > 0, dw=dw, db=db, s=2)
    return grads


def param_shapes(cfg):
    s = conv_shapes(cfg)
    out = {}
    for cs in s:
        ry, rx = cs.grid
        out[cs.name + ".w"] = (ry, rx, cs.k, cs.c, cs.kernel, cs.kernel)
        out[cs.name + ".b"] = (ry, rx, cs.k)
    pool3 = s[3].c * s[3].h * s[3].w
    conv4 = s[3].k * s[3].out_hw[0] * s[3].out_hw[1]
    out["deepid.w"] = (pool3 + conv4, cfg.feature_dim)
    out["deepid.b"] = (cfg.feature_dim,)
    out["ident.w"] = (cfg.feature_dim, cfg.n_classes)
    out["ident.b"] = (cfg.n_classes,)
    return out


def init_params(cfg, seed):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in sorted(param_shapes(cfg).items()):
        if name.endswith(".b"):
            params[name] = np.zeros(shape, np.float32)
            continue
        fan_in = int(np.prod(shape[3:])) if len(shape) == 6 else shape[0]
        gain = 1.0 if name == "ident.w" else 2.0
        params[name] = (rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)
    return params


class DeepID2:
    """Forward and backward of the network on a backend, layer by layer."""

    def __init__(self, cfg, backend):
        self.cfg, self.be = cfg, backend
        self.convs = conv_shapes(cfg)

    def features(self, params, x):
        """The 160-d DeepID2 vectors of a float32 N x C x H x W batch."""
        return self.forward(params, x, need_logits=False)["deepid"]

    def forward(self, params, x, need_logits=True):
        be, acts = self.be, {}
        stack_forward(be, self.convs, params, x, acts, fuse_pools=True)
        f = be.dense_forward([acts["pool3"], acts["conv4"]], params["deepid.w"],
                             params["deepid.b"])
        acts["deepid"] = f
        if need_logits:
            acts["logits"] = be.dense_forward(f, params["ident.w"], params["ident.b"], relu=False)
        return acts

    def backward(self, params, acts, dlogits, dfeatures, grads):
        """Adds d loss / d params into grads (same names as params).

        dlogits: d loss / d logits; dfeatures: the part of d loss / d deepid
        that does not flow through the ident layer (the verification term).
        """
        be = self.be
        f = acts["deepid"]
        dfeat, _, _ = be.dense_backward(f, params["ident.w"], None, dlogits, relu=False,
                                        dw=grads["ident.w"], db=grads["ident.b"])
        dfeat = dfeat[0]
        dfeat += dfeatures
        (dpool3, dconv4), _, _ = be.dense_backward(
            [acts["pool3"], acts["conv4"]], params["deepid.w"], f, dfeat,
            dw=grads["deepid.w"], db=grads["deepid.b"])
        # pool3 feeds both conv4 and the deepid layer
        return stack_backward(be, self.convs, params, acts, dconv4, grads, dpool3)
