"""Builds deepid2_core._cpu from cpp/ and bindings/.

DEEPID2_NATIVE=0 builds for a generic x86-64/arm64 CPU instead of this
machine's (-march=native), for wheels that travel to other machines.
"""

import glob
import os
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

# the extension's ~40 files compile in parallel (DEEPID2_BUILD_JOBS, default all CPUs)
ParallelCompile("DEEPID2_BUILD_JOBS", default=0).install()

native = os.environ.get("DEEPID2_NATIVE", "1") != "0"
# Python's CFLAGS carry -fwrapv, which keeps the compiler from assuming that int loop
# indices never overflow (the pipeline ran 1.3 ms a photo slower than the CMake build),
# and -g, which nearly doubles the compile time of the pybind11 files: both undone here.
args = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-wrapv", "-g0"]
if native:
    args.append("-march=native")
link = ["-fopenmp"]
if sys.platform == "darwin":  # Apple clang: OpenMP from libomp
    # fast-honor-pragmas: fuses as fast does, but lets cpp/src/face/no_fma.h turn it off
    args = [a for a in args if a not in ("-fopenmp", "-ffp-contract=fast")] + [
        "-ffp-contract=fast-honor-pragmas", "-Xpreprocessor", "-fopenmp"]
    link = ["-lomp"]

ext = Pybind11Extension(
    "deepid2_core._cpu",
    # the ops, the inference library and the face pipeline: Python runs the C++ pipeline
    sorted(glob.glob("cpp/src/*.cpp") + glob.glob("cpp/src/infer/*.cpp")
           + glob.glob("cpp/src/face/*.cpp") + glob.glob("bindings/*.cpp")),
    include_dirs=["cpp/include", "cpp/src"],
    extra_compile_args=args,
    extra_link_args=link,
    cxx_std=17,
)

setup(
    name="deepid2",
    version="0.1.0",
    description="DeepID2 face representation: hand-written CPU/GPU ops, no DL framework",
    # kernels/ (CUDA sources, compiled at run time by the gpu backend) and the
    # shipped models travel inside the package.
    packages=find_packages(include=["deepid2_core", "deepid2_core.*"]) + ["deepid2_core.kernels"],
    package_dir={"deepid2_core.kernels": "kernels"},
    package_data={"deepid2_core.kernels": ["*.cu", "*.cuh"],
                  "deepid2_core": ["models/*.safetensors", "models/*.onnx", "models/LICENSE-*"]},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "numba>=0.59", "opencv-python>=4.8"],
    entry_points={"console_scripts": ["deepid2=deepid2_core.cli:main"]},
    # dist: data-parallel training under mpiexec (deepid2_core/training/dist.py); the
    # mpich wheel brings libmpi and mpiexec (Hydra) from the package index
    # gpu: CuPy for CUDA 13, what the kernels target (kernels/check_compile.sh: sm_90;
    # bench/RESULTS.md: H200, CUDA 13.0, CuPy 14.2.0). [ctk] brings NVRTC (the kernels
    # are compiled at run time) and cuBLAS from the package index: no CUDA Toolkit
    # needed, only an NVIDIA driver for CUDA 13 (R580 or newer).
    extras_require={"test": ["pytest>=7"], "dist": ["mpi4py>=4.0", "mpich>=4.2"],
                    "gpu": ["cupy-cuda13x[ctk]>=14.2"]},
    zip_safe=False,
)
