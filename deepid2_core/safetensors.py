"""The safetensors file format, read and written with numpy alone.

Layout: 8 bytes little-endian header length n, n bytes of JSON header
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}), then the raw little-endian tensor bytes. Writes are atomic: a
temporary file in the same folder, fsync, then rename, so an interrupted
write never leaves a broken file under the final name.

Checksum: save() puts "sha256" in the metadata, the hex SHA-256 of the data
section (every byte after the header, as written); load() recomputes it and
refuses a file whose bytes differ. Files written before checksums (no
"sha256") still load, with a one-line warning on stderr, once per path. The key
is the container's own: load() does not return it and save() refuses it in
the caller's metadata.
"""

import hashlib
import json
import os
import re
import struct
import sys
import tempfile

import numpy as np

_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
           "U8": np.uint8, "I8": np.int8, "F16": np.float16}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
CHECKSUM_KEY = "sha256"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_unchecked_noted = set()  # paths already told "no checksum"


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file (truncated, corrupt, hostile)."""


def save(path, tensors, metadata=None):
    """Write {name: array} (and optional {str: str} metadata) to path, atomically."""
    header, offset, arrays = {}, 0, []
    for name in sorted(tensors):
        a = np.asarray(tensors[name], order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if a.dtype not in _NAMES:
            raise TypeError(f"{name}: dtype {a.dtype} cannot be stored in safetensors here")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _NAMES[a.dtype.newbyteorder("=")], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map str to str")
    if CHECKSUM_KEY in metadata:
        raise ValueError(f"metadata key {CHECKSUM_KEY!r} is reserved for the checksum save() writes")
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.reshape(-1).view(np.uint8))
    metadata[CHECKSUM_KEY] = digest.hexdigest()
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for a in arrays:
                f.write(a.tobytes())
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    """Return ({name: array}, {str: str} metadata); validates everything first."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: truncated (no header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt header ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: header is not a JSON object")
        metadata = header.pop("__metadata__", {}) or {}
        if not isinstance(metadata, dict):
            raise SafetensorsError(f"{path}: __metadata__ is not a JSON object")
        stored = metadata.pop(CHECKSUM_KEY, None)
        if stored is not None and not (isinstance(stored, str) and _HEX64.fullmatch(stored)):
            raise SafetensorsError(f"{path}: metadata {CHECKSUM_KEY} is not a hex SHA-256 "
                                   f"(64 hex digits): {str(stored)[:80]!r}")
        data_size = size - 8 - n
        out, spans = {}, []
        for name, info in header.items():
            try:
                native = np.dtype(_DTYPES[info["dtype"]])
                dtype = native.newbyteorder("<")
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{path}: bad header entry for {name!r}") from None
            count = int(np.prod(shape, dtype=np.int64))
            if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size \
                    or end - begin != count * dtype.itemsize:
                raise SafetensorsError(f"{path}: {name!r} offsets/shape do not match the data")
            spans.append((begin, end, name, dtype, shape, native))
        spans.sort()
        for (b0, e0, n0, *_), (b1, _, n1, *_) in zip(spans, spans[1:]):
            if b1 < e0:
                raise SafetensorsError(f"{path}: tensors {n0!r} and {n1!r} overlap")
        body = f.read(data_size)
        if len(body) != data_size:
            raise SafetensorsError(f"{path}: truncated while reading ({len(body)} of "
                                   f"{data_size} data bytes)")
        _check_sum(path, body, stored)
        for begin, end, name, dtype, shape, native in spans:
            out[name] = np.frombuffer(body, dtype, count=(end - begin) // dtype.itemsize,
                                      offset=begin).astype(native).reshape(shape)
    return out, metadata


def _check_sum(path, body, stored):
    """Refuse data whose SHA-256 differs from the stored one; note a missing one."""
    if stored is None:
        key = os.path.abspath(path)
        if key not in _unchecked_noted:
            _unchecked_noted.add(key)
            print(f"warning: {path}: no {CHECKSUM_KEY} checksum (written before checksums); "
                  f"tensor data not verified", file=sys.stderr)
        return
    computed = hashlib.sha256(body).hexdigest()
    if computed != stored.lower():
        raise SafetensorsError(f"{path}: tensor data damaged ({CHECKSUM_KEY} mismatch: stored "
                               f"{stored.lower()[:16]}..., computed {computed[:16]}...)")
