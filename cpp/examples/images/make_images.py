"""Writes the small test images of the examples' image decoder test
(cpp/examples/test_image_file.cpp): one smooth 24 x 16 pattern in each PNG and JPEG
variant the decoder converts, and a PNG whose header claims 8000 x 8000
pixels. Run from anywhere: python cpp/examples/images/make_images.py

PNGs are written by hand (zlib + CRCs) to get every colour type; JPEGs by
OpenCV. The pattern must match pattern() in test_image_file.cpp.
"""
import os
import struct
import zlib

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
W, H = 24, 16


def pattern():
    """H x W x 3 uint8 RGB: smooth, so JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([40 + 8 * x, 30 + 10 * y, 200 - 4 * x - 3 * y], -1).astype(np.uint8)


def grey(rgb):
    """The grey level the test expects of a grey file: the green channel."""
    return rgb[:, :, 1]


def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(path, rows, color_type, depth, plte=None, trns=None, width=W):
    """rows: each scanline's bytes, without the filter byte (0 is added)."""
    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, len(rows),
                                                             depth, color_type, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    out += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(os.path.join(HERE, path), "wb") as f:
        f.write(out)


def main():
    rgb = pattern()
    png("rgb8.png", [r.tobytes() for r in rgb], 2, 8)
    png("grey8.png", [r.tobytes() for r in grey(rgb)], 0, 8)
    alpha = np.full((H, W, 1), 7, np.uint8)
    png("rgba8.png", [r.tobytes() for r in np.concatenate([rgb, alpha], -1)], 6, 8)
    png("grey_alpha8.png", [r.tobytes() for r in np.stack([grey(rgb), alpha[..., 0]], -1)], 4, 8)
    # 16 bits: value v * 257, which scales back to v exactly
    png("rgb16.png", [(r.astype(">u2") * 257).tobytes() for r in rgb], 2, 16)
    grey_alpha = np.stack([grey(rgb), alpha[..., 0]], -1)
    png("grey_alpha16.png", [(r.astype(">u2") * 257).tobytes() for r in grey_alpha], 4, 16)
    # palette: the pattern's first 16 columns (256 colours), each pixel its own index
    left = rgb[:, :16]
    colours, index = np.unique(left.reshape(-1, 3), axis=0, return_inverse=True)
    png("palette8.png", [r.astype(np.uint8).tobytes() for r in index.reshape(H, 16)], 3, 8,
        plte=colours.astype(np.uint8).tobytes(), trns=bytes([128]), width=16)
    # 8000 x 8000 in the header (64 megapixels), one row of data
    with open(os.path.join(HERE, "huge.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 8001)) + chunk(b"IEND", b""))
    bgr = rgb[:, :, ::-1]
    cv2.imwrite(os.path.join(HERE, "rgb.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(os.path.join(HERE, "grey.jpg"), grey(rgb), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(os.path.join(HERE, "progressive.jpg"), bgr,
                [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])


if __name__ == "__main__":
    main()
