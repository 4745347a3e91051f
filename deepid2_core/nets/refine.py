"""The refinement net of the facial point cascade's levels 2 and 3 (Sun, Wang, Tang,
CVPR 2013), on the engine's lsconv, maxpool and dense ops:

  input  15x15 grey patch (resampled), standardised (zero mean, unit std)
  conv1  4x4, 20 maps, ReLU     -> max-pool 2   (12 -> 6)
  conv2  3x3, 40 maps, ReLU     -> max-pool 2   (4 -> 2)
  fc     60, ReLU
  out    2, linear              = the true point's offset from the patch centre,
                                  in patch sides (x, y of the patch frame)

(the paper's level-2/3 net with ReLU for |tanh|). A level (`RefineLevelConfig`) has
`len(patches)` such nets per point, one per patch side (in units of the estimate's
scale r; deepid2_core.face.landmark_cascade).
"""

from dataclasses import asdict, dataclass

from .landmark import init_weights
from .landmark import unit_rms_init as rescale_to_unit_rms


@dataclass(frozen=True)
class RefineLevelConfig:
    """One level: `len(patches)` nets per point, patch sides in units of r."""
    patches: tuple = (1.25, 1.45)
    size: int = 15
    conv1: int = 20
    conv2: int = 40
    hidden: int = 60
    rotate_frame: bool = True

    def __post_init__(self):
        object.__setattr__(self, "patches", tuple(float(p) for p in self.patches))
        if not self.patches or not all(p > 0 for p in self.patches):
            raise ValueError(f"patches must be positive patch sides, got {self.patches}")
        if min(self.conv1, self.conv2, self.hidden) < 1:
            raise ValueError("conv1, conv2 and hidden must be at least 1")
        refine_shapes(self)  # raises for sizes too small

    def to_dict(self):
        d = asdict(self)
        d["patches"] = list(self.patches)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "patches": tuple(d["patches"])})


def refine_shapes(cfg):
    """(conv1 output, pool1 output, conv2 output, pool2 output) sizes of a size x size
    input."""
    c1 = cfg.size - 3
    p1 = c1 // 2
    c2 = p1 - 2
    p2 = c2 // 2
    if c1 < 2 or p2 < 1:
        raise ValueError(f"patch size {cfg.size} is too small: it needs at least 10")
    return c1, p1, c2, p2


def refine_param_shapes(cfg):
    _, _, _, p2 = refine_shapes(cfg)
    return {"conv1.w": (1, 1, cfg.conv1, 1, 4, 4), "conv1.b": (1, 1, cfg.conv1),
            "conv2.w": (1, 1, cfg.conv2, cfg.conv1, 3, 3), "conv2.b": (1, 1, cfg.conv2),
            "fc.w": (cfg.conv2 * p2 * p2, cfg.hidden), "fc.b": (cfg.hidden,),
            "out.w": (cfg.hidden, 2), "out.b": (2,)}


def init_refine_params(cfg, rng):
    """`landmark.init_weights` of a refinement net."""
    return init_weights(refine_param_shapes(cfg), rng)


class RefineNet:
    """Forward and backward of one refinement net on a backend."""

    def __init__(self, cfg, backend):
        self.cfg, self.be = cfg, backend
        self.c1, _, self.c2, _ = refine_shapes(cfg)

    def forward(self, params, x):
        be, acts = self.be, {"x": x}
        h = be.lsconv_forward(x, params["conv1.w"], params["conv1.b"], (self.c1, self.c1))
        acts["conv1"] = h
        h, acts["pool1.argmax"] = be.maxpool_forward(h, 2)
        acts["pool1"] = h
        h = be.lsconv_forward(h, params["conv2.w"], params["conv2.b"], (self.c2, self.c2))
        acts["conv2"] = h
        h, acts["pool2.argmax"] = be.maxpool_forward(h, 2)
        acts["pool2"] = h
        acts["fc"] = be.dense_forward(h, params["fc.w"], params["fc.b"])
        acts["out"] = be.dense_forward(acts["fc"], params["out.w"], params["out.b"], relu=False)
        return acts

    def backward(self, params, acts, dout, grads):
        """Adds d loss / d params into grads, given dout = d loss / d out."""
        be = self.be
        dfc, _, _ = be.dense_backward(acts["fc"], params["out.w"], None, dout, relu=False,
                                      dw=grads["out.w"], db=grads["out.b"])
        dh, _, _ = be.dense_backward(acts["pool2"], params["fc.w"], acts["fc"], dfc[0],
                                     dw=grads["fc.w"], db=grads["fc.b"])
        dh = be.maxpool_backward(dh[0], acts["pool2.argmax"], (self.c2, self.c2), 2)
        dx, _, _ = be.lsconv_backward(acts["pool1"], params["conv2.w"], acts["conv2"], dh,
                                      (self.c2, self.c2), dw=grads["conv2.w"],
                                      db=grads["conv2.b"])
        dh = be.maxpool_backward(dx, acts["pool1.argmax"], (self.c1, self.c1), 2)
        be.lsconv_backward(acts["x"], params["conv1.w"], acts["conv1"], dh, (self.c1, self.c1),
                           need_dx=False, dw=grads["conv1.w"], db=grads["conv1.b"])
        return grads


def unit_rms_init(net, params, x):
    """conv1, conv2, fc rescaled in turn to an output rms of 1 on x (`landmark.unit_rms_init`)."""
    return rescale_to_unit_rms(net, params, x, ("conv1", "conv2", "fc"))
