"""Compile every kernels/*.cu with NVRTC, exactly as the gpu backend hands it
to cupy.RawModule (the same pasted source, the same options, plus the ones
CuPy adds: -ftz=true and the architecture), through ctypes:
no GPU and no CuPy needed, only libnvrtc.

    python kernels/nvrtc_check.py [--arch compute_90] [--lib /path/libnvrtc.so.13]

Looks for libnvrtc in --lib, $NVRTC_LIB, the loader's path, the CUDA toolkit
and the nvidia-cuda-nvrtc pip package (`pip install nvidia-cuda-nvrtc`).
Exit 0: all compiled without a warning; 1: an error or warning; 77: no
libnvrtc found (nothing checked).
"""

import argparse
import ctypes
import ctypes.util
import glob
import os
import site
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deepid2_core.backends import _kernel_src  # noqa: E402  (no CuPy import)


def find_nvrtc(explicit=None):
    cands = [explicit, os.environ.get("NVRTC_LIB")]
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *glob.glob("/usr/local/cuda-*")]
    for r in roots:
        if r:
            cands += sorted(glob.glob(os.path.join(r, "lib64", "libnvrtc.so*")))
    for sp in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        cands += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", "libnvrtc.so*")))
        cands += sorted(glob.glob(os.path.join(sp, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    for c in cands:
        if not c or "builtins" in os.path.basename(c) or ".alt." in os.path.basename(c):
            continue
        try:
            # libnvrtc dlopens its builtins library; a pip-installed one is not on
            # the loader's path, so load the one beside it first.
            for b in sorted(glob.glob(os.path.join(os.path.dirname(c), "libnvrtc-builtins.so*"))):
                if ".alt." not in os.path.basename(b):
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                    break
            return ctypes.CDLL(c), c
        except OSError:
            continue
    return None, None


def compile_one(lib, name, src, options):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(),
                                0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram failed ({rc})"
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace").strip()
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    ok = rc == 0 and "warning" not in log.lower()
    return ok, log


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="compute_90",
                    help="NVRTC -arch (compute_90: PTX for Hopper; sm_90: cubin)")
    ap.add_argument("--lib", help="path of libnvrtc.so")
    args = ap.parse_args()
    lib, path = find_nvrtc(args.lib)
    if lib is None:
        print("nvrtc_check: no libnvrtc found (set NVRTC_LIB or "
              "`pip install nvidia-cuda-nvrtc`); NVRTC compile not checked")
        return 77
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"nvrtc_check: NVRTC {major.value}.{minor.value} ({path}), -arch={args.arch}")
    options = [*_kernel_src.NVRTC_OPTIONS, *_kernel_src.CUPY_IMPLICIT_OPTIONS,
               f"-arch={args.arch}"]
    failed = 0
    for name in _kernel_src.FILES:
        ok, log = compile_one(lib, name, _kernel_src.source(name), options)
        kernels = ", ".join(_kernel_src.kernel_names(name))
        print(f"  {'ok  ' if ok else 'FAIL'} {name}.cu ({kernels})")
        if log:
            print("    " + log.replace("\n", "\n    "))
        failed += not ok
    print(f"nvrtc_check: {len(_kernel_src.FILES) - failed} of {len(_kernel_src.FILES)} "
          "files compiled cleanly")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
