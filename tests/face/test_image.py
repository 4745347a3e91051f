"""The one image reader (deepid2_core.face.image.read_image): sizes from the headers of
every parsed format, the pixel limit checked before decoding (default, environment
variable, --max-pixels), the same damaged files refused by every command, and the grey
mode that gives cv2.imread's bits."""
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from deepid2_core.face import image as reader
from deepid2_core.face.image import (DEFAULT_MAX_PIXELS, check_encoded, header_size,
                                     pixel_limit, read_image, set_max_pixels)
from package_home import PACKAGE_HOME

@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("DEEPID2_MAX_PIXELS", raising=False)
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def picture(w=37, h=23):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), np.uint8)


def huge_png(w=30000, h=30000):
    """A small PNG whose IHDR claims w x h (its pixel data is never reached)."""
    png = bytearray(cv2.imencode(".png", picture(8, 8))[1].tobytes())
    png[16:24] = struct.pack(">II", w, h)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


@pytest.mark.parametrize("ext,params", [
    (".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []),
    (".webp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".ppm", []), (".pgm", []),
    (".tif", [])])
def test_header_sizes_match_the_decoded_image(ext, params):
    img = picture()
    if ext == ".pgm":
        img = img[:, :, 0]
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    assert header_size(buf.tobytes()) == (37, 23), ext


def test_header_size_of_other_bmp_and_gif_layouts():
    bmp = bytearray(cv2.imencode(".bmp", picture())[1].tobytes())
    bmp[22:26] = struct.pack("<i", -23)                   # top-down BMP: negative height
    assert header_size(bytes(bmp)) == (37, 23)
    assert header_size(b"GIF89a" + struct.pack("<HH", 640, 480) + b"\0" * 8) == (640, 480)
    assert header_size(b"P6 # a comment\n# another\n 12\n34 255\n" + b"\0" * 10) == (12, 34)
    assert header_size(b"not an image") is None


def test_an_image_over_the_limit_is_refused_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png())
    calls = []
    monkeypatch.setattr(reader.cv2, "imdecode", lambda *a: calls.append(a))
    img, why = read_image(path)
    assert img is None and calls == []
    assert why == ("30000x30000 image (900 megapixels) is over the 50 megapixel limit "
                   "(--max-pixels N or DEEPID2_MAX_PIXELS=N raises it)")
    jpg = bytearray(cv2.imencode(".jpg", picture())[1].tobytes())
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 10000, 20000)   # height, width
    assert "20000x10000 image (200 megapixels)" in check_encoded(bytes(jpg))


def test_the_limit_is_raised_by_the_environment_or_set_max_pixels(tmp_path, monkeypatch):
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), picture())                     # 851 pixels
    assert pixel_limit() == DEFAULT_MAX_PIXELS == 50_000_000
    monkeypatch.setenv("DEEPID2_MAX_PIXELS", "800")
    assert "over the 0.0008 megapixel limit" in read_image(path)[1]
    monkeypatch.setenv("DEEPID2_MAX_PIXELS", "1e9")
    assert pixel_limit() == 10**9 and read_image(path)[1] is None
    set_max_pixels(851)                                   # the CLI's --max-pixels wins
    assert read_image(path)[1] is None and "limit" in read_image(path, max_pixels=850)[1]
    monkeypatch.setenv("DEEPID2_MAX_PIXELS", "lots")
    set_max_pixels(None)
    with pytest.raises(ValueError, match="DEEPID2_MAX_PIXELS"):
        pixel_limit()
    assert "DEEPID2_MAX_PIXELS" in read_image(path)[1]    # never raises
    with pytest.raises(ValueError, match="whole number"):
        set_max_pixels(0)


def test_damaged_files_and_links_get_a_reason(tmp_path):
    png = cv2.imencode(".png", picture())[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "noend.png").write_bytes(png[:-12])
    jpg = cv2.imencode(".jpg", picture())[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[:len(jpg) // 2])
    (tmp_path / "link.jpg").symlink_to(tmp_path / "absent.jpg")
    (tmp_path / "dir.jpg").mkdir()
    assert read_image(tmp_path / "cut.png")[1].startswith("truncated PNG")
    assert read_image(tmp_path / "noend.png")[1].startswith("truncated PNG")
    assert read_image(tmp_path / "cut.jpg")[1].startswith("truncated JPEG")
    assert read_image(tmp_path / "link.jpg")[1].startswith("broken symbolic link")
    assert read_image(tmp_path / "dir.jpg")[1] == "a folder, not an image file"
    (tmp_path / "ok.png").write_bytes(png + b"trailing bytes after IEND")
    assert read_image(tmp_path / "ok.png")[1] is None


def test_grey_mode_gives_cv2_imreads_bits(tmp_path):
    for name, img in (("c.jpg", picture(64, 48)), ("g.png", picture()[:, :, 0]),
                      ("d.png", picture().astype(np.uint16) * 257)):
        cv2.imwrite(str(tmp_path / name), img)
        grey, why = read_image(tmp_path / name, grey=True)
        assert why is None and grey.ndim == 2
        np.testing.assert_array_equal(grey, cv2.imread(str(tmp_path / name),
                                                       cv2.IMREAD_GRAYSCALE), err_msg=name)
        colour, _ = read_image(tmp_path / name)
        assert colour.shape == img.shape[:2] + (3,)


def test_train_cache_skips_what_verify_refuses(tmp_path):
    """One reader: the patch cache (train) lists the truncated JPEG and the over-limit
    PNG as skipped, with the reader's reasons."""
    from deepid2_core.data import build_cache
    root = tmp_path / "data"
    for who in ("a", "b"):
        (root / who).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / who / f"{k}.jpg"), picture(120, 120))
    jpg = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "cut.jpg").write_bytes(jpg[:len(jpg) // 2])
    (root / "b" / "huge.png").write_bytes(huge_png())
    cache = build_cache(root, tmp_path / "cache", progress=False)
    skipped = dict(cache.skipped)
    assert len(cache) == 4
    assert skipped[os.path.join("a", "cut.jpg")].startswith("truncated JPEG")
    assert skipped[os.path.join("b", "huge.png")].startswith("30000x30000 image (900 megapixels)")


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DEEPID2_MAX_PIXELS", None)
    return subprocess.run([sys.executable, "-m", "deepid2_core.cli", *args], cwd=PACKAGE_HOME,
                          capture_output=True, text=True, env=env, timeout=300)


def test_verify_refuses_the_same_files_in_one_line(tmp_path):
    (tmp_path / "huge.png").write_bytes(huge_png())
    jpg = cv2.imencode(".jpg", picture(120, 120))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[:len(jpg) // 2])
    for name, says in (("huge.png", "is over the 50 megapixel limit"),
                       ("cut.jpg", "truncated JPEG")):
        r = run_cli("verify", str(tmp_path / name), str(tmp_path / name))
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and says in r.stderr and name in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_cache_built_under_another_pixel_limit_is_rebuilt(tmp_path):
    """An image the limit skipped is read once the limit allows it: the cache
    is not reused across limits."""
    from deepid2_core.data import build_cache
    root = tmp_path / "data"
    for who in ("a", "b"):
        (root / who).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / who / f"{k}.jpg"), picture(120, 120))
    cv2.imwrite(str(root / "a" / "big.jpg"), picture(300, 300))   # 90,000 pixels
    set_max_pixels(80_000)
    low = build_cache(root, tmp_path / "cache", progress=False)
    assert len(low) == 4 and os.path.join("a", "big.jpg") in dict(low.skipped)
    set_max_pixels(None)
    default = build_cache(root, tmp_path / "cache", progress=False)
    assert not default.reused and len(default) == 5 and not default.skipped
    assert build_cache(root, tmp_path / "cache", progress=False).reused
