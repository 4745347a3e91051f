"""The training configurations of the landmark nets (level 1 and the cascade
levels), apart from their trainers so that the command line can show their
defaults without importing OpenCV or the nets."""
import math
from dataclasses import dataclass

from .loop import check_rate_and_split


@dataclass
class LandmarkTrainConfig:
    epochs: int = 120
    batch: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    shift: float = 0.05           # box centre shift, uniform in +- this fraction of the box
    scale: float = 0.1            # box scale, log-uniform in [1 / (1 + s), 1 + s]
    rotate: float = 10.0          # degrees, uniform in +- this
    fallback_share: float = 0.25  # samples that use the central box instead of Haar's
    central_scale: float = 0.4    # their scale jitter, log-uniform in [1 / (1 + s), 1 + s]
    val_fraction: float = 0.05
    target_stats: str = "crops"   # standardise targets by the plain crops' mean/std (the
    #                               shipped model), or "augmented": by augmented samples'
    detector: str = "haar"        # the resolved box rule
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch < 1:
            raise ValueError(f"epochs and batch must be at least 1, got {self.epochs}, "
                             f"{self.batch}")
        check_rate_and_split(self.lr, self.momentum, self.weight_decay, self.val_fraction,
                             self.seed)
        if not 0.0 <= self.fallback_share <= 1.0:
            raise ValueError(f"fallback_share must be in [0, 1], got {self.fallback_share}")
        for name in ("shift", "scale", "rotate", "central_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be at least 0, got {v}")
        if self.target_stats not in ("augmented", "crops"):
            raise ValueError(f"target_stats must be augmented or crops, got "
                             f"{self.target_stats!r}")
        if self.detector not in ("haar", "central"):
            raise ValueError(f"detector must be haar or central, got {self.detector!r}")


@dataclass
class RefineTrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    displace: float = 0.12        # std of each coordinate's displacement, units of r
    max_displace: float = 0.45    # displacements clipped to +- this, units of r
    scale: float = 0.1            # frame scale, log-uniform in [1 / (1 + s), 1 + s]
    rotate: float = 10.0          # frame angle, uniform in +- this many degrees
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch < 1:
            raise ValueError(f"epochs and batch must be at least 1, got {self.epochs}, "
                             f"{self.batch}")
        check_rate_and_split(self.lr, self.momentum, self.weight_decay, 0.0, self.seed)
        for name in ("displace", "max_displace", "scale", "rotate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be at least 0, got {v}")
