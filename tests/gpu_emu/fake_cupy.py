"""A stand-in for the parts of CuPy that deepid2_core/backends/gpu.py and the
gpu tests use, on the CPU: arrays are numpy arrays (of the subclass
``ndarray`` below, so the backend's "is it a device array?" checks work),
and ``RawModule`` compiles the kernel source with g++ against emu.h (the
fiber emulator beside this file) into a shared library and launches its
kernels through ctypes.

The launcher checks every argument against the kernel's parameter list
(count, pointer / integer / floating, and size), which real CuPy does not:
an int64 passed for an int parameter is an error here, not a silent bug.

Only for tests: slow (one fiber per GPU thread), single-device.
"""

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                     r'(?:LAUNCH_BOUNDS(?:_MIN)?\(((?:[^()]|\([^()]*\))+)\)\s*)?(\w+)\s*\(')


# ----------------------------------------------------------------------------
# stream capture (cupy.cuda.Stream.begin_capture / end_capture, cupy.cuda.Graph)
#
# While a stream captures, nothing runs: every device operation (a kernel
# launch, a fill, a ufunc, a copy, an assignment) is recorded, in order, and
# its outputs are allocated but hold garbage until the graph is launched,
# which runs the record again on the same memory. What a CUDA graph cannot
# hold is refused as CUDA refuses it: reading device data on the host (get,
# int, bool, synchronize), copying host data to the device, and work queued
# on another stream than the capturing one.
_capture = {"ops": None, "stream": None}
_CAPTURE_ERROR = "operation not permitted when stream is capturing"


def _capturing():
    return _capture["ops"] is not None


def _refuse_in_capture(what):
    if _capturing():
        raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {what}: {_CAPTURE_ERROR}")


def _record(op):
    """Run op now, or record it for the graph being captured."""
    if not _capturing():
        op()
        return
    if cuda.get_current_stream() is not _capture["stream"]:
        raise RuntimeError("cudaErrorStreamCaptureImplicit: work queued on another stream "
                           f"than the one capturing: {_CAPTURE_ERROR}")
    _capture["ops"].append(op)


def _base(a):
    return a.view(np.ndarray) if isinstance(a, ndarray) else a


def _op(compute):
    """A new device array of compute()'s result: now, or (capturing) at replay."""
    if not _capturing():
        return _dev(compute())
    with np.errstate(all="ignore"):
        res = np.array(compute())   # the shape and dtype; the values come at replay
    _record(lambda: np.copyto(res, compute()))
    return _dev(res)


# ----------------------------------------------------------------------------
# arrays
class ndarray(np.ndarray):
    """A numpy array that plays a device array."""

    @property
    def device(self):
        return cuda.Device(0)

    @property
    def data(self):
        """cupy.cuda.MemoryPointer's face: .ptr, the address (host memory here)."""
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        _refuse_in_capture("a device-to-host copy (ndarray.get)")
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, arr):
        _refuse_in_capture("a host-to-device copy (ndarray.set)")
        np.copyto(self.view(np.ndarray), np.asarray(arr))

    def fill(self, value):
        base = self.view(np.ndarray)
        _record(lambda: base.fill(value))

    def copy(self, order="C"):
        return _op(lambda: np.array(self.view(np.ndarray), order=order, copy=True))

    def astype(self, dtype, copy=True, **kw):
        if not copy and self.dtype == dtype:
            return self
        return _op(lambda: self.view(np.ndarray).astype(dtype, **kw))

    def __setitem__(self, key, value):
        if not _capturing():
            return super().__setitem__(key, value)
        base, k = self.view(np.ndarray), (tuple(_base(i) for i in key)
                                          if isinstance(key, tuple) else _base(key))
        v = _base(value)
        _record(lambda: base.__setitem__(k, v))

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        args = tuple(_base(a) for a in inputs)
        if out is not None:
            outs = tuple(_base(o) for o in out)
            _record(lambda: getattr(ufunc, method)(*args, out=outs, **kw))
            return out[0] if len(out) == 1 else out
        if _capturing():
            return _op(lambda: getattr(ufunc, method)(*args, **kw))
        res = getattr(ufunc, method)(*args, **kw)
        return res.view(ndarray) if isinstance(res, np.ndarray) else res

    def _host_read(self, name):
        _refuse_in_capture(f"a device-to-host copy ({name})")

    def __int__(self):
        self._host_read("int()")
        return int(self.view(np.ndarray))

    def __float__(self):
        self._host_read("float()")
        return float(self.view(np.ndarray))

    def __bool__(self):
        self._host_read("bool()")
        return bool(self.view(np.ndarray))

    def item(self, *args):
        self._host_read("item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        self._host_read("tolist()")
        return self.view(np.ndarray).tolist()


def _dev(a):
    a = np.asarray(a)
    return a.view(ndarray)


def _to_device(a, dtype=None, order="K"):
    """A host array's copy on the device."""
    _refuse_in_capture("a host-to-device copy")
    return _dev(np.array(np.asarray(a), dtype=dtype, order=order, copy=True))


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        if dtype is None or a.dtype == dtype:
            return a
        return _op(lambda: np.array(_base(a), dtype=dtype, order=order or "K", copy=True))
    return _to_device(a, dtype, order or "K")


array = asarray


def asnumpy(a):
    _refuse_in_capture("a device-to-host copy (asnumpy)")
    return np.array(a, copy=True).view(np.ndarray)


def empty(shape, dtype=np.float32):
    # garbage, as on a GPU: not zeros (that would hide unwritten outputs)
    a = np.empty(shape, dtype=dtype)
    a.view(np.uint8)[...] = 0x7f
    return _dev(a)


def full(shape, fill_value, dtype=np.float32):
    a = empty(shape, dtype)
    a.fill(fill_value)
    return a


def zeros(shape, dtype=np.float32):
    return full(shape, 0, dtype)


def zeros_like(a, dtype=None):
    return zeros(np.shape(a), dtype=np.asarray(a).dtype if dtype is None else dtype)


def maximum(a, b):
    return _op(lambda: np.maximum(_base(a), _base(b)))


def where(cond, a, b):
    return _op(lambda: np.where(_base(cond), _base(a), _base(b)))


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        return _to_device(np.ascontiguousarray(a, dtype=dtype))
    if a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return _op(lambda: np.ascontiguousarray(_base(a), dtype=dtype))


def concatenate(arrays, axis=0):
    return _op(lambda: np.concatenate([_base(a) for a in arrays], axis=axis))


def matmul(a, b, out=None):
    if out is None:
        return _op(lambda: np.matmul(_base(a), _base(b)))
    o = _base(out)
    _record(lambda: np.copyto(o, np.matmul(_base(a), _base(b))))
    return out


def count_nonzero(a):
    return _op(lambda: np.asarray(np.count_nonzero(_base(a))))


def isnan(a):
    return _op(lambda: np.isnan(_base(a)))


def isfinite(a):
    return _op(lambda: np.isfinite(_base(a)))


def array_equal(a, b):
    _refuse_in_capture("a device-to-host read (array_equal)")
    return np.array_equal(np.asarray(a), np.asarray(b))


class _Random:
    @staticmethod
    def standard_normal(shape, dtype=np.float64):
        return _dev(np.random.default_rng().standard_normal(shape).astype(dtype))


random = _Random()


# ----------------------------------------------------------------------------
# cupy.cuda
class _Device:
    compute_capability = os.environ.get("DEEPID2_EMU_CC", "90")  # what the emulator models

    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        _refuse_in_capture("Device.synchronize")


class _Graph:
    """cupy.cuda.Graph: the operations recorded while a stream captured."""

    def __init__(self, ops):
        self._ops = ops

    def launch(self, stream=None):
        _refuse_in_capture("launching a graph while a stream captures (not modelled here)")
        for op in self._ops:
            op()


class _Stream:
    """cupy.cuda.Stream: a context manager that makes itself current; it can capture."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)

    def synchronize(self):
        _refuse_in_capture("Stream.synchronize")

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _capturing():
            raise RuntimeError("cudaErrorIllegalState: a stream is capturing already")
        _capture.update(ops=[], stream=self)

    def end_capture(self):
        if _capture["stream"] is not self:
            raise RuntimeError("cudaErrorIllegalState: this stream is not capturing")
        ops = _capture["ops"]
        _capture.update(ops=None, stream=None)
        return _Graph(ops)

    def is_capturing(self):
        return _capture["stream"] is self


_Stream.null = _Stream(null=True)
_current = []


EMULATOR_NAME = "deepid2 kernel emulator"


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(dev):
        # the name the tuning file keys picks by (gpu.card_name)
        return {"name": EMULATOR_NAME.encode()}


class _MemoryPool:
    """cupy.cuda.MemoryPool: every allocation here is host memory of its own."""

    def malloc(self, size):
        raise NotImplementedError("fake cupy allocates with numpy; use using_allocator only "
                                  "as a context")


@contextlib.contextmanager
def _using_allocator(allocator=None):
    yield


cuda = types.SimpleNamespace(Device=_Device, runtime=_Runtime(), Stream=_Stream, Graph=_Graph,
                             MemoryPool=_MemoryPool, using_allocator=_using_allocator,
                             get_current_stream=lambda: _current[-1] if _current
                             else _Stream.null)


# ----------------------------------------------------------------------------
# kernels
_BUILD_LOCKS = {}                 # one per library: different files build in parallel
_LOCKS_LOCK = threading.Lock()


def _build_lock(path):
    with _LOCKS_LOCK:
        return _BUILD_LOCKS.setdefault(path, threading.Lock())


def _cache_dir():
    d = Path(os.environ.get("DEEPID2_EMU_CACHE",
                            Path(tempfile.gettempdir()) / f"deepid2_gpu_emu_{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


_REGISTRY = r"""
namespace emu {
template <class T> constexpr char kind_of() {
    return std::is_pointer<T>::value ? 'p' : std::is_floating_point<T>::value ? 'f' : 'i';
}
template <class... A> const char* signature(void (*)(A...)) {
    static const std::string s = [] {
        std::string r;
        ((r += kind_of<std::remove_cv_t<A>>(), r += char('0' + sizeof(A))), ...);
        return r;
    }();
    return s.c_str();
}
}  // namespace emu
extern "C" {
%(tramps)s
struct EmuEntry { const char* name; void (*fn)(void**); const char* (*sig)(); };
static const EmuEntry emu_table[] = { %(entries)s };
int emu_launch(const char* name, const unsigned* grid, const unsigned* block,
               unsigned long shmem, void** args) {
    for (const auto& e : emu_table)
        if (!strcmp(e.name, name)) return emu::launch(e.fn, grid, block, shmem, args) ? 0 : 2;
    emu::error = std::string("no kernel named ") + name;
    return 1;
}
const char* emu_signature(const char* name) {
    for (const auto& e : emu_table)
        if (!strcmp(e.name, name)) return e.sig();
    return "";
}
const char* emu_error() { return emu::error.c_str(); }
}
"""


def _bounds(code):
    """{kernel: max threads per block from its LAUNCH_BOUNDS (None: no bound)}.
    Read from the preprocessed source (macros expanded, LAUNCH_BOUNDS and
    __global__ left as written), so kernels that a macro defines are found."""
    cxx = os.environ.get("CXX", "g++")
    proc = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-DDEEPID2_EMU", "-"], input=code,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileException(proc.stderr[-6000:])

    def value(expr):
        if not re.fullmatch(r"[\d\s*+/()]+", expr):
            raise ValueError(f"cannot resolve LAUNCH_BOUNDS({expr})")
        return int(eval(expr.replace("/", "//")))   # digits and * + / only
    # LAUNCH_BOUNDS_MIN(n, b): the threads are n
    return {name: (value(b.split(",")[0]) if b else None)
            for b, name in _KERNEL.findall(proc.stdout)}


def _build(code, options):
    bounds = _bounds(code)
    names = list(bounds)
    tramps = "\n".join(
        f"static void emu_t_{n}(void** a) {{ emu::invoke(&{n}, a); }}\n"
        f"static const char* emu_s_{n}() {{ return emu::signature(&{n}); }}" for n in names)
    entries = ", ".join(f'{{"{n}", emu_t_{n}, emu_s_{n}}}' for n in names)
    full_src = code + _REGISTRY % {"tramps": tramps, "entries": entries}
    cxx = os.environ.get("CXX", "g++")
    flags = ["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-ffp-contract=off",
             "-Wall", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-narrowing",
             "-include", str(HERE / "emu.h")]
    flags += os.environ.get("DEEPID2_EMU_CXXFLAGS", "").split()
    key = hashlib.sha256("\0".join([full_src, (HERE / "emu.h").read_text(), cxx, *flags])
                         .encode()).hexdigest()[:20]
    so = _cache_dir() / f"k_{key}.so"
    with _build_lock(so):
        if not so.exists():
            src = _cache_dir() / f"k_{key}.cpp"
            src.write_text(full_src)
            tmp = so.with_suffix(f".{os.getpid()}.tmp")
            proc = subprocess.run([cxx, *flags, "-x", "c++", str(src), "-o", str(tmp)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise CompileException(proc.stderr[-6000:])
            os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                               ctypes.POINTER(ctypes.c_uint), ctypes.c_ulong,
                               ctypes.POINTER(ctypes.c_void_p)]
    lib.emu_error.restype = ctypes.c_char_p
    lib.emu_signature.restype = ctypes.c_char_p
    lib.emu_signature.argtypes = [ctypes.c_char_p]
    return lib, bounds


class CompileException(Exception):
    pass


class _Function:
    def __init__(self, lib, name, bound=None):
        self.lib, self.name, self.bound = lib, name, bound
        self.sig = lib.emu_signature(name.encode()).decode()

    def _arg(self, i, a):
        want = self.sig[2 * i:2 * i + 2]
        if isinstance(a, np.ndarray):
            if want[0] != "p":
                raise TypeError(f"{self.name}: argument {i} is an array, the kernel takes {want}")
            return ctypes.c_void_p(a.ctypes.data), a
        if not isinstance(a, np.generic):
            raise TypeError(f"{self.name}: argument {i} is a {type(a).__name__}; pass numpy "
                            "scalars of the kernel parameter's exact type")
        kind = "f" if a.dtype.kind == "f" else "i"
        got = f"{kind}{a.dtype.itemsize}"
        if got != want:
            raise TypeError(f"{self.name}: argument {i} is {a.dtype} ({got}), the kernel "
                            f"parameter is {want}")
        ct = {"f4": ctypes.c_float, "f8": ctypes.c_double, "i4": ctypes.c_int32,
              "i8": ctypes.c_int64, "i1": ctypes.c_int8}[got]
        return ct(a.item()), None

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) * 2 != len(self.sig):
            raise TypeError(f"{self.name}: {len(args)} arguments, the kernel takes "
                            f"{len(self.sig) // 2}")
        grid = (tuple(grid) + (1, 1, 1))[:3]
        block = (tuple(block) + (1, 1, 1))[:3]
        if np.prod(block) > 1024 or min(grid) < 1 or min(block) < 1:
            raise ValueError(f"{self.name}: bad launch configuration {grid} x {block}")
        if self.bound is not None and np.prod(block) > self.bound:
            raise ValueError(f"{self.name}: {int(np.prod(block))} threads per block, more than "
                             f"its __launch_bounds__({self.bound}): the launch would fail")
        if grid[1] > 65535 or grid[2] > 65535 or grid[0] > 2 ** 31 - 1:
            raise ValueError(f"{self.name}: grid {grid} beyond CUDA's limits")
        if shared_mem > 48 * 1024:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory "
                             "(more than 48 KB needs an opt-in)")
        held, ptrs = [], []
        for i, a in enumerate(args):
            c, keep = self._arg(i, a)
            held += [c, keep]
            ptrs.append(ctypes.cast(ctypes.pointer(c), ctypes.c_void_p))
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*[p.value for p in ptrs])
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)

        def launch(_alive=held):  # the argument values and arrays live as long as the graph
            rc = self.lib.emu_launch(self.name.encode(), g, b, int(shared_mem), argv)
            if rc != 0:
                raise RuntimeError(f"{self.name}: {self.lib.emu_error().decode()}")
        _record(launch)


class RawModule:
    def __init__(self, code, options=(), **kw):
        self.lib, self.bounds = _build(code, tuple(options))

    def get_function(self, name):
        if name not in self.bounds:
            raise KeyError(f"no kernel {name} in the module")
        return _Function(self.lib, name, self.bounds[name])


def install_note():
    return f"fake cupy (CPU emulator, {sys.platform})"
