"""The gpu backend's toolbox (gpu.KIT): its CuPy, the kernels compiled from
kernels/*.cu, their launches, and fresh outputs as the modes want them.

The launchers of the variants (gpu_launchers.py, gpu_tc.py) and the
whole-step helpers (gpu_step.py) get it instead of importing CuPy, so that
they serve the real backend and the tests' emulated one (tests/gpu_support:
gpu.py loaded with a stand-in CuPy) alike. state is the backend's module
state: deterministic, debug, index_checks, precision.
"""

import numpy as np

from deepid2_core.backends import _kernel_src
from deepid2_core.backends import gpu_checks as chk

_f32 = np.float32
INT_POISON = np.iinfo(np.int32).min


class Kit:
    def __init__(self, cupy, state):
        self.cupy, self.state = cupy, state
        self.modules = {}    # (file, device) -> the compiled module
        self.cards = {}

    def card_name(self):
        """The current GPU's name, as the tuning file keys its picks ("" if unknown)."""
        dev = self.cupy.cuda.Device().id
        if dev not in self.cards:
            try:
                got = self.cupy.cuda.runtime.getDeviceProperties(dev)["name"]
                self.cards[dev] = got.decode() if isinstance(got, bytes) else str(got)
            except Exception:  # noqa: BLE001 - a stand-in without properties: no tuning file
                self.cards[dev] = ""
        return self.cards[dev]

    def kernel(self, file, kname):
        dev = self.cupy.cuda.Device().id
        mod = self.modules.get((file, dev))
        if mod is None:
            mod = self.cupy.RawModule(code=_kernel_src.source(file),
                                      options=_kernel_src.NVRTC_OPTIONS)
            self.modules[(file, dev)] = mod
        return mod.get_function(kname)

    def sync(self, what):
        """Wait for the current stream; RuntimeError naming `what` if the device failed."""
        try:
            self.cupy.cuda.get_current_stream().synchronize()
        except Exception as e:  # noqa: BLE001 - CUDARuntimeError / CUDADriverError
            raise RuntimeError(f"gpu backend: {what} failed on the device: {e}") from None

    def launch(self, file, kname, grid, block, args, shared_mem=0):
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = (int(block), 1, 1)
        if min(grid) < 1:
            raise AssertionError(f"{kname}: empty grid {grid}")
        if grid[0] > 2 ** 31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"{kname}: the shapes are too large for the gpu backend "
                             f"(grid {grid})")
        fn = self.kernel(file, kname)
        try:
            fn(grid, block, args, shared_mem=int(shared_mem))
        except Exception as e:  # noqa: BLE001 - launch errors come back synchronously
            raise RuntimeError(f"gpu backend: launching {kname} (grid {grid}, block {block}, "
                               f"{int(shared_mem)} B shared) failed: {type(e).__name__}: "
                               f"{e}") from None
        if self.state["debug"]:
            self.sync(f"kernel {kname}")

    @staticmethod
    def blocks(total, threads=256, cap=65536):
        """Blocks for a grid-stride loop over `total` items."""
        return max(1, min(cap, -(-int(total) // threads)))

    def checked(self, a, argname, dtype=_f32):
        return chk.checked(self.cupy, a, argname, dtype)

    def new(self, shape, dtype=_f32):
        """A fresh output; poisoned in debug mode."""
        if self.state["debug"]:
            fill = np.nan if np.dtype(dtype).kind == "f" else INT_POISON
            return self.cupy.full(shape, fill, dtype=dtype)
        return self.cupy.empty(shape, dtype=dtype)

    def out_or_new(self, given, argname, shape, meaning):
        """An accumulated output: the one given (checked), or zeros."""
        if given is None:
            return self.cupy.zeros(shape, dtype=_f32)
        a = self.checked(given, argname)
        chk.expect_shape(a, argname, shape, meaning)
        return a

    def check_written(self, op, **outs):
        """Debug mode: no output element may still hold the poison."""
        if not self.state["debug"]:
            return
        cp = self.cupy
        for oname, a in outs.items():
            if a is None:
                continue
            if a.dtype.kind == "f":
                bad = int(cp.count_nonzero(cp.isnan(a)))
            else:
                bad = int(cp.count_nonzero(a == INT_POISON))
            if bad:
                raise RuntimeError(f"gpu backend: {op} left {bad} of {a.size} elements of "
                                   f"{oname} unwritten (or NaN)")
