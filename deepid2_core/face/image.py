"""The one image reader of every command: `read_image(path)`.

Before anything is decoded the file's header is read for the image's size (PNG IHDR,
JPEG SOFn, BMP, GIF, WebP, PNM, TIFF: parsed here, a few bytes each) and an image of
more than the pixel limit is refused: decoding a 30000 x 30000 PNG (a 0.9 MB file)
would take 2.7 GB for its pixels and several times that inside OpenCV. Formats whose
header is not parsed here (JPEG 2000, EXR, HDR, ...) are decoded and then checked.

The limit: `DEFAULT_MAX_PIXELS` (50 megapixels), raised or lowered by the environment
variable ``DEEPID2_MAX_PIXELS`` (a number of pixels, e.g. 200000000), by
`set_max_pixels` (the command line's ``--max-pixels N``) or per call (``max_pixels=``).

Damaged files are refused the same way for every caller: empty, truncated JPEG (no
end-of-image marker after the last scan; OpenCV would hand back a half-grey image),
truncated PNG (a chunk cut short, or no IEND), and whatever OpenCV cannot decode.

read_image never raises: it returns (image, None) or (None, reason), the reason one
line without the path (callers name the file).
"""
import os
import struct

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "DEEPID2_MAX_PIXELS"
RAISE_HINT = f"--max-pixels N or {MAX_PIXELS_ENV}=N raises it"
COLOUR_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR     # keeps depth, drops alpha

_limit_override = []


def parse_max_pixels(value):
    """'50000000' / '5e7' / 50000000 -> int pixels (>= 1); ValueError otherwise."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        n = float("nan")
    if not (n >= 1 and n == int(n)):
        raise ValueError(f"the pixel limit must be a whole number of pixels >= 1 "
                         f"(e.g. 200000000), got {value!r}")
    return int(n)


def set_max_pixels(n):
    """Set the limit for this process (None: back to DEEPID2_MAX_PIXELS / the default)."""
    _limit_override.clear()
    if n is not None:
        _limit_override.append(parse_max_pixels(n))


def pixel_limit():
    """The limit in force: set_max_pixels', else DEEPID2_MAX_PIXELS, else the default.
    ValueError when DEEPID2_MAX_PIXELS is not a number of pixels."""
    if _limit_override:
        return _limit_override[0]
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_max_pixels(env)
    except ValueError as e:
        raise ValueError(f"{MAX_PIXELS_ENV}: {e}") from None


def megapixels(n):
    return f"{n / 1e6:.3g}"


def over_limit_reason(width, height, limit):
    return (f"{width}x{height} image ({megapixels(width * height)} megapixels) is over the "
            f"{megapixels(limit)} megapixel limit ({RAISE_HINT})")


# ----------------------------------------------------------------------------
# headers: (width, height), or None where the header does not say

def _png_size(data):
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def png_truncated(data):
    """A PNG one of whose chunks runs past the end of the file, or without IEND."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        pos += 12 + length
        if pos > n:
            return True
        if kind == b"IEND":
            return False
    return True


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF))


def _jpeg_size(data):
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:                      # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):              # end of image, start of scan: no SOF before
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        pos += 2 + length
    return None


def jpeg_truncated(data):
    """A JPEG whose last scan (SOS marker) is not followed by an EOI marker."""
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos + 2) < 0


def _bmp_size(data):
    if len(data) < 26:
        return None
    if struct.unpack("<I", data[14:18])[0] == 12:       # BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _gif_size(data):
    return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None


def _webp_size(data):
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        b = struct.unpack("<I", data[21:25])[0]
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    if kind == b"VP8X" and len(data) >= 30:
        return (1 + int.from_bytes(data[24:27], "little"),
                1 + int.from_bytes(data[27:30], "little"))
    return None


def _pnm_size(data):
    tokens, pos, n = [], 2, min(len(data), 4096)
    while len(tokens) < 2 and pos < n:
        c = data[pos:pos + 1]
        if c == b"#":
            end = data.find(b"\n", pos)
            pos = n if end < 0 else end + 1
        elif c.isspace():
            pos += 1
        else:
            end = pos
            while end < n and not data[end:end + 1].isspace() and data[end:end + 1] != b"#":
                end += 1
            tokens.append(data[pos:end])
            pos = end
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None


def _tiff_size(data):
    end = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", data[4:8])
        (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
        found = {}
        for k in range(count):
            e = data[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
            tag, kind = struct.unpack(end + "HH", e[:4])
            if tag in (256, 257):
                fmt = "H" if kind == 3 else "I"
                found[tag] = struct.unpack(end + fmt, e[8:8 + struct.calcsize(fmt)])[0]
        return found[256], found[257]
    except (struct.error, KeyError):
        return None


def image_format(data):
    """'png', 'jpeg', 'bmp', 'gif', 'webp', 'pnm', 'tiff' or None, from the first bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2 and data[2:3].isspace():
        return "pnm"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return None


_SIZE_READERS = dict(png=_png_size, jpeg=_jpeg_size, bmp=_bmp_size, gif=_gif_size,
                     webp=_webp_size, pnm=_pnm_size, tiff=_tiff_size)


def header_size(data):
    """(width, height) from the header of an encoded image, or None when this module
    does not parse its format or the header does not say."""
    fmt = image_format(data)
    return _SIZE_READERS[fmt](data) if fmt else None


# ----------------------------------------------------------------------------
# decoding

def to_bgr8(img):
    """Decoded array -> (uint8 H x W x 3 BGR, None) or (None, reason)."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        return None, "not an image array"
    if img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4):
        return None, f"unsupported channel count {img.shape[2]}"
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.rint(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None, f"unsupported sample type {img.dtype}"
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]                         # BGRA -> BGR: alpha dropped
    elif img.ndim == 3 and img.shape[2] in (1, 2):
        img = img[:, :, 0]                          # grey (+ alpha) -> grey
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img), None


def check_encoded(data, limit=None):
    """None when the encoded bytes may be decoded, else the reason: empty, truncated,
    or over the pixel limit according to the header."""
    if not data:
        return "empty file"
    fmt = image_format(data)
    if fmt == "jpeg" and jpeg_truncated(data):
        return "truncated JPEG (no end-of-image marker after the last scan)"
    if fmt == "png" and png_truncated(data):
        return "truncated PNG (a chunk runs past the end of the file, or no IEND chunk)"
    size = _SIZE_READERS[fmt](data) if fmt else None
    limit = pixel_limit() if limit is None else limit
    if size is not None and size[0] * size[1] > limit:
        return over_limit_reason(size[0], size[1], limit)
    return None


def read_image(path, grey=False, max_pixels=None):
    """Image file -> (image, None) or (None, reason). Never raises.

    grey=False: uint8 H x W x 3 BGR whatever the file held (16-bit: v / 257 rounded;
    float: [0, 1] scaled; alpha dropped; grey expanded; EXIF orientation applied).
    grey=True: uint8 H x W, exactly what cv2.imread(path, cv2.IMREAD_GRAYSCALE) gives
    (libjpeg's own grey decode), after the same checks."""
    try:
        limit = pixel_limit() if max_pixels is None else parse_max_pixels(max_pixels)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.islink(path):
            return None, f"broken symbolic link (to {os.readlink(path)})"
        return None, "file not found"
    except IsADirectoryError:
        return None, "a folder, not an image file"
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"
    except ValueError as e:
        return None, str(e)
    why = check_encoded(data, limit)
    if why:
        return None, why
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_GRAYSCALE if grey else COLOUR_FLAGS)
    except Exception as e:  # noqa: BLE001 - cv2.error for an image cv2 cannot hold
        return None, f"not a decodable image ({type(e).__name__}: {str(e).strip()[-200:]})"
    if img is None:
        return None, "not a decodable image"
    h, w = img.shape[:2]
    if w * h > limit:                                   # a format whose header is not parsed
        return None, over_limit_reason(w, h, limit)
    return (img, None) if grey else to_bgr8(img)

