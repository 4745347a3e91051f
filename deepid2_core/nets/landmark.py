"""The level-1 landmark ConvNet (Sun, Wang, Tang, "Deep Convolutional Network Cascade for
Facial Point Detection", CVPR 2013, network F1), written on this engine's ops.

Points, in this order (left/right as seen in the image, as in MTFL):
left eye centre, right eye centre, nose tip, left mouth corner, right mouth
corner. Output: their (x, y), normalised to [0, 1] within the crop.

Network (F1; every layer ReLU except the last -- the paper uses |tanh|; ReLU
is what the engine's lsconv and dense ops fuse):
  input 39x39 grey crop of the face box, standardised (`standardise`)
  conv1 4x4, 20 maps             -> max-pool 2   (36 -> 18)
  conv2 3x3, 40 maps             -> max-pool 2   (16 -> 8)
  conv3 3x3, 60 maps, weights shared within each cell of a 2x2 grid of
        regions (lsconv)         -> max-pool 2   (6 -> 3)
  conv4 2x2, 80 maps, locally connected (no sharing; 2x2 output)
  fc    120, ReLU
  out   10, linear                = (x1, y1, ..., x5, y5)

Weights start He-normal (`init_weights`), then each ReLU layer is rescaled to an
output rms of 1 on training crops (`unit_rms_init`).
"""

from dataclasses import asdict, dataclass

import numpy as np

from .deepid2 import LAYERS, stack_backward, stack_forward, stack_shapes

POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
FLIP_ORDER = (1, 0, 2, 4, 3)  # a mirrored face: left <-> right eye and mouth corner


@dataclass(frozen=True)
class LandmarkNetConfig:
    size: int = 39               # input crop, size x size grey
    conv3_grid: tuple = (2, 2)   # conv3 weights shared within a grid of this many regions
    hidden: int = 120
    n_points: int = 5
    box_scale: float = 1.2       # the crop is the face box grown this much about its centre

    def __post_init__(self):
        object.__setattr__(self, "conv3_grid", tuple(int(g) for g in self.conv3_grid))
        if self.n_points != len(POINTS):
            raise ValueError(f"n_points must be {len(POINTS)} ({', '.join(POINTS)})")
        if not self.box_scale > 0:
            raise ValueError(f"box_scale must be positive, got {self.box_scale}")
        conv_shapes(self)  # raises for sizes too small

    def to_dict(self):
        d = asdict(self)
        d["conv3_grid"] = list(self.conv3_grid)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "conv3_grid": tuple(d["conv3_grid"])})


def conv_shapes(cfg):
    """The four convolutions' input shapes and regions (DeepID2's stack, gray input)."""
    return stack_shapes(LAYERS, 1, cfg.size, cfg.size, cfg.conv3_grid)


def param_shapes(cfg):
    s = conv_shapes(cfg)
    out = {}
    for cs in s:
        ry, rx = cs.grid
        out[cs.name + ".w"] = (ry, rx, cs.k, cs.c, cs.kernel, cs.kernel)
        out[cs.name + ".b"] = (ry, rx, cs.k)
    oh, ow = s[3].out_hw
    out["fc.w"] = (s[3].k * oh * ow, cfg.hidden)
    out["fc.b"] = (cfg.hidden,)
    out["out.w"] = (cfg.hidden, 2 * cfg.n_points)
    out["out.b"] = (2 * cfg.n_points,)
    return out


def init_weights(shapes, rng):
    """He-normal weights (std sqrt(2 / fan_in)) for the ReLU layers and 0.1 sqrt(1 / fan_in)
    for the linear output "out.w" (the first predictions sit near out.b), drawn in
    sorted-name order from rng; biases 0."""
    params = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith(".b"):
            params[name] = np.zeros(shape, np.float32)
            continue
        fan_in = int(np.prod(shape[3:])) if len(shape) == 6 else shape[0]
        std = 0.1 * np.sqrt(1.0 / fan_in) if name == "out.w" else np.sqrt(2.0 / fan_in)
        params[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return params


def init_params(cfg, seed, mean_target=None):
    """`init_weights` from default_rng(seed), except out.b = mean_target (the mean
    training target). Training then rescales them with `unit_rms_init`."""
    params = init_weights(param_shapes(cfg), np.random.default_rng(seed))
    if mean_target is not None:
        params["out.b"][:] = np.asarray(mean_target, np.float32).reshape(-1)
    return params


def unit_rms_init(net, params, x, layers=None):
    """Rescales conv1..conv4 and fc weights, in order, so that each layer's output has an
    rms of 1 on the batch x (ReLU layers are positively homogeneous: one factor per layer
    does it). He-normal weights alone leave fc at an rms of about 4 (each max-pool raises
    the scale), and regression on such large, all-positive features is ill-conditioned:
    momentum SGD diverges above lr ~ 0.005 and learns nothing below it. layers: the
    names to rescale, default F1's conv1..conv4 and fc."""
    for name in layers or [cs.name for cs in net.convs] + ["fc"]:
        out = net.forward(params, x)[name]
        rms = float(np.sqrt(np.mean(np.square(out, dtype=np.float64))))
        if rms > 0:
            params[name + ".w"] /= np.float32(rms)
    return params


class LandmarkNet:
    """Forward and backward of F1 on a backend, layer by layer (like nets.deepid2.DeepID2)."""

    def __init__(self, cfg, backend):
        self.cfg, self.be = cfg, backend
        self.convs = conv_shapes(cfg)

    def forward(self, params, x):
        be, acts = self.be, {}
        h = stack_forward(be, self.convs, params, x, acts)
        acts["fc"] = be.dense_forward(h, params["fc.w"], params["fc.b"])
        acts["out"] = be.dense_forward(acts["fc"], params["out.w"], params["out.b"], relu=False)
        return acts

    def backward(self, params, acts, dout, grads):
        """Adds d loss / d params into grads, given dout = d loss / d out."""
        be = self.be
        dfc, _, _ = be.dense_backward(acts["fc"], params["out.w"], None, dout, relu=False,
                                      dw=grads["out.w"], db=grads["out.b"])
        dh, _, _ = be.dense_backward(acts["conv4"], params["fc.w"], acts["fc"], dfc[0],
                                     dw=grads["fc.w"], db=grads["fc.b"])
        return stack_backward(be, self.convs, params, acts, dh[0], grads)


def standardise(crops):
    """uint8 N x S x S crops -> float32 N x 1 x S x S, zero mean and unit std per crop (the
    input of F1 and of the cascade's refinement nets)."""
    x = crops.astype(np.float32).reshape(len(crops), -1)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.maximum(x.std(axis=1, keepdims=True), np.float32(4.0))
    return np.ascontiguousarray(x.reshape(len(crops), 1, *crops.shape[1:]))
