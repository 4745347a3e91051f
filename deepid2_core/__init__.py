"""deepid2: DeepID2 face representation with hand-written CPU and GPU ops.

The Python API (deepid2_core.api): load() a model, then detect, embed,
verify; Gallery to enroll people and identify them. Errors: deepid2_core.errors."""

from .api import Face, Gallery, Identification, Match, Model, load
from .errors import BadGalleryFile, BadImage, BadModelFile, NoFace

__version__ = "0.1.0"

__all__ = ["load", "Model", "Face", "Match", "Gallery", "Identification", "BadImage",
           "NoFace", "BadModelFile", "BadGalleryFile"]
