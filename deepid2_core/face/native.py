"""The C++ face pipeline (cpp/include/deepid2/pipeline.h) for the package.

Detection (YuNet, weights converted once from the packaged ONNX file into
models/yunet.safetensors), the landmark nets and their cascade, the
alignment, the patches and, with a verifier, the patch networks, PCA and the
Joint Bayesian score all run in C++: `deepid2 align`, `verify`, `enroll`,
`identify` and the API call this code, and so does a C++ program linking
the library. One pipeline is loaded per set of model files and shared
(its methods are thread-safe and release the GIL).
"""
import os
import threading

from ..errors import BadModelFile
from .detect import YUNET_MODEL
from .landmarks import DEFAULT_MODEL as DEFAULT_LANDMARKS

MODELS = os.path.dirname(YUNET_MODEL)
YUNET_WEIGHTS = os.path.join(MODELS, "yunet.safetensors")   # from YUNET_MODEL (cpp/tools/convert_yunet.py)

_pipelines = {}
_lock = threading.Lock()


def _module():
    from ..backends.cpu import extension   # the one place that explains an unbuilt extension
    return extension()


def pipeline(verifier=None, landmarks=None):
    """The C++ pipeline of these model files (None: the shipped ones; verifier
    None: detection, landmarks and alignment only), loaded once."""
    key = (None if verifier is None else os.path.abspath(os.fspath(verifier)),
           os.path.abspath(os.fspath(landmarks or DEFAULT_LANDMARKS)))
    with _lock:
        if key not in _pipelines:
            try:
                _pipelines[key] = _module().Pipeline(key[0], key[1], YUNET_WEIGHTS)
            except (OSError, ValueError) as e:
                raise BadModelFile(str(e)) from None
        return _pipelines[key]


def supports(verifier_path):
    """Whether the C++ pipeline runs this verifier's patches (layout patches
    without lighting, as `deepid2 train --layout` writes them); the message
    why not otherwise."""
    try:
        pipeline(verifier_path)
        return True, ""
    except BadModelFile as e:
        return False, str(e)
