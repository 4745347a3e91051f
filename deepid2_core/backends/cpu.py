"""CPU backend: the C++ ops (cpp/) through the pybind11 module ``_cpu``.

numpy in, numpy out. C-contiguous float32 inputs are used in place, never
copied. See docs/ops.md for shapes and conventions. The host is the device
here: transfers return their argument and synchronize does nothing.
"""

from collections import namedtuple

from deepid2_core.backends import sgd_hyperparameters
from deepid2_core.backends.cpu_batch import assemble_batch


def _built_copy_elsewhere(package):
    """The first other sys.path entry holding a deepid2_core with a built _cpu (an
    installed package that this one shadows), else None."""
    import glob
    import os
    import sys
    from importlib.machinery import EXTENSION_SUFFIXES
    here = os.path.realpath(package)
    for entry in sys.path:
        other = os.path.join(os.path.abspath(entry or os.curdir), "deepid2_core")
        if os.path.realpath(other) == here:
            continue
        if any(glob.glob(os.path.join(glob.escape(other), "_cpu*" + suffix))
               for suffix in EXTENSION_SUFFIXES):
            return other
    return None


try:
    from deepid2_core import _cpu
except ImportError as e:  # pragma: no cover - depends on the install
    import os
    _package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # after `pip install .`, running from the repository root imports the source tree
    # first: the build is fine, the folder is the problem
    if _built_copy_elsewhere(_package) is not None:
        raise ImportError(
            f"the deepid2_core imported from {_package} is the source tree, which shadows the "
            f"installed package: run from another folder, or build it in place with "
            f"pip install -e .") from e
    raise ImportError(
        "deepid2_core._cpu is not built: install the package with "
        "`pip install -e .[test]` (needs a C++17 compiler with OpenMP)") from e

name = "cpu"
xp = __import__("numpy")


def extension():
    """The compiled C++ library (deepid2_core._cpu): the ops above, and the face
    pipeline that deepid2_core.face.native and face.landmarks run. Imported here,
    where an unbuilt extension is explained."""
    return _cpu

lsconv_forward = _cpu.lsconv_forward
lsconv_backward = _cpu.lsconv_backward
lsconv_pool_forward = _cpu.lsconv_pool_forward
lsconv_pool_backward = _cpu.lsconv_pool_backward
maxpool_forward = _cpu.maxpool_forward
maxpool_backward = _cpu.maxpool_backward
dense_forward = _cpu.dense_forward
dense_backward = _cpu.dense_backward
sgd_update = _cpu.sgd_update
regression_loss = _cpu.regression_loss
max_threads = _cpu.max_threads
keep_freed_memory = _cpu.keep_freed_memory

__all__ = [
    "name", "xp", "JointLoss", "lsconv_forward", "lsconv_backward", "lsconv_pool_forward",
    "lsconv_pool_backward", "maxpool_forward", "maxpool_backward", "dense_forward",
    "dense_backward", "joint_loss", "regression_loss", "sgd_update", "sgd_update_many",
    "assemble_batch", "to_device", "to_host", "keep_freed_memory", "set_index_checks",
    "max_threads", "synchronize",
]


def sgd_update_many(params, grads, velocities, lr, momentum=0.9, weight_decay=0.0):
    """sgd_update on every (param, grad, velocity) of the lists, in order;
    lr, momentum, weight_decay: numbers or one per tensor."""
    hyper = sgd_hyperparameters(params, grads, velocities, lr, momentum, weight_decay)
    for p, g, v, (lr_, m, wd) in zip(params, grads, velocities, hyper):
        _cpu.sgd_update(p, g, v, lr_, m, wd)


def to_device(a):
    """The array itself: cpu arrays are host arrays (no copy)."""
    return a


def to_host(a):
    """The array itself (no copy)."""
    return a


def set_index_checks(flag=True):
    """Accepted for parity with the gpu backend; the cpu ops always check
    indices (checking costs no device round trip here). Returns True."""
    return True


def synchronize():
    """Nothing to wait for: every cpu op has finished when it returns."""
    return None

JointLoss = namedtuple(
    "JointLoss", "total ident verif correct dlogits dfeatures dparams")


def joint_loss(logits, labels, features, pair_a, pair_b, pair_y,
               variant="l2", lam=0.05, params=None):
    """ident + lam * verif and its gradients; see docs/ops.md."""
    return JointLoss(*_cpu.joint_loss(logits, labels, features, pair_a, pair_b,
                                      pair_y, variant, lam, params))
