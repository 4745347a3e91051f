"""The gpu backend's CUDA sources (kernels/*.cu), read as text.

No CuPy here: kernels/nvrtc_check.py and the tests' CPU emulator read the
sources the same way the backend does, on machines without a GPU.

Each kernel file is compiled on its own. Its ``#include "..."`` lines of
files in kernels/ are replaced by those files' text (with ``#line``
directives, so compiler messages name the right file and line): the text is
the whole program, NVRTC needs no include path, and CuPy's on-disk kernel
cache, which is keyed by the source text, sees a changed header too.
"""

import os
import re
from pathlib import Path

# Kernel files (kernels/<name>.cu), one op family each.
FILES = ("lsconv", "maxpool", "loss", "dense", "sgd", "assemble", "lsconv_tc", "lsconv_pool",
         "sgd_multi")

# Options for NVRTC (cupy.RawModule adds the target architecture itself).
NVRTC_OPTIONS = ("-std=c++17",)
# What CuPy adds to every NVRTC compile on its own: single-precision
# denormals flush to zero. (No kernel here relies on denormals: exp() of a
# logit gap beyond -87 is 0 either way, as on the CPU.)
CUPY_IMPLICIT_OPTIONS = ("-ftz=true",)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
# (kernels a macro defines, with names pasted by ##, are not listed)
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:LAUNCH_BOUNDS(?:_MIN)?\([\w\s,]+\)\s*)?'
                     r'(?!LAUNCH_BOUNDS\b)(\w+)\s*\(')


def kernel_dir():
    """$DEEPID2_KERNELS_DIR, else kernels/ of the source tree (editable
    installs, tests), else the copy a wheel installs as deepid2_core/kernels."""
    env = os.environ.get("DEEPID2_KERNELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    tree = here.parents[2] / "kernels"
    return tree if tree.is_dir() else here.parents[1] / "kernels"


def source(name, directory=None):
    """The full text of kernels/<name>.cu with its local includes pasted in."""
    d = Path(directory) if directory is not None else kernel_dir()
    path = d / f"{name}.cu"
    if not path.is_file():
        raise FileNotFoundError(
            f"gpu kernel source {path} not found: the gpu backend reads kernels/ of the "
            "source tree (install with `pip install -e .` from a checkout, or set "
            "DEEPID2_KERNELS_DIR)")
    return _expand(path, set())


def _expand(path, seen):
    text = path.read_text()

    def paste(m):
        inc = (path.parent / m.group(1)).resolve()
        if inc in seen:  # pasted once; the header guard would drop it anyway
            return f"// (already included: {m.group(1)})"
        seen.add(inc)
        resume = text.count("\n", 0, m.end()) + 2  # the line after the #include
        return (f'#line 1 "{inc.name}"\n{_expand(inc, seen)}\n'
                f'#line {resume} "{path.name}"')

    return _INCLUDE.sub(paste, text)


def kernel_names(name, directory=None):
    """Names of the extern "C" kernels defined in kernels/<name>.cu."""
    return _KERNEL.findall(source(name, directory))
