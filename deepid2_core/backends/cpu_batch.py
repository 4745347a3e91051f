"""Batch assembly on the cpu backend: rows of the uint8 patch cache (numpy,
often a read-only memmap) -> the float32 NCHW batch the ops take, in one
numba loop (no Python loop per image); batches of a few images (inference) in numpy,
which gives the same bits and spares `deepid2 verify` numba's import (0.1 s). See
docs/ops.md, "Batch assembly"."""

import numpy as np

NUMPY_MAX_IMAGES = 32   # batches up to this size are assembled in numpy
_kernel = []


def _numba_kernel():
    """The compiled loop, built (or loaded from numba's cache) on first use."""
    if not _kernel:
        import numba

        @numba.njit(cache=True, nogil=True)
        def _assemble(patches, indices, flip, mean, scale, out):
            b_n, h_n, w_n, c_n = (out.shape[0], patches.shape[1], patches.shape[2],
                                  patches.shape[3])
            for b in range(b_n):
                src = patches[indices[b]]
                for c in range(c_n):                # walk the output (NCHW) contiguously
                    for y in range(h_n):
                        if flip[b]:
                            for x in range(w_n):
                                out[b, c, y, x] = (np.float32(src[y, w_n - 1 - x, c])
                                                   - mean) * scale
                        else:
                            for x in range(w_n):
                                out[b, c, y, x] = (np.float32(src[y, x, c]) - mean) * scale
        _kernel.append(_assemble)
    return _kernel[0]


def _assemble_numpy(patches, indices, flip, mean, scale, out):
    """The same float32 expression in numpy: the same bits."""
    x = patches[indices]
    x[flip] = x[flip][:, :, ::-1]
    np.multiply(np.subtract(x.transpose(0, 3, 1, 2), mean, dtype=np.float32), scale, out=out)


def assemble_batch(patches, indices, flip=None, out=None, mean=127.5, scale=1 / 128.0):
    """patches[indices] (uint8 N x H x W x C) -> float32 B x C x H x W, each
    image mirrored left-right where flip[b], values (v - mean) * scale in
    float32 (bit-identical to the same numpy expression)."""
    if not (isinstance(patches, np.ndarray) and patches.dtype == np.uint8 and patches.ndim == 4):
        raise ValueError("patches must be a uint8 array N x H x W x C")
    indices = np.asarray(indices)
    if indices.size and indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
    n, h, w, c = patches.shape
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"indices must be in 0..{n - 1}")
    b = len(indices)
    flip = np.zeros(b, np.bool_) if flip is None else np.ascontiguousarray(flip, dtype=np.bool_)
    if flip.shape != (b,):
        raise ValueError(f"flip must be a bool array of length {b}, got shape {flip.shape}")
    if out is None:
        out = np.empty((b, c, h, w), np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (b, c, h, w)
              and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {(b, c, h, w)}")
    small = b <= NUMPY_MAX_IMAGES
    (_assemble_numpy if small else _numba_kernel())(patches, indices, flip, np.float32(mean),
                                                    np.float32(scale), out)
    return out
