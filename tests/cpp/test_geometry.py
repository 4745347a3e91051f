"""The C++ alignment and patch cutting (cpp/src/face/geometry.cpp, patches.cpp,
layouts.cpp through bindings/geometry.cpp) against the numpy they replaced:
patches bit for bit equal to tests/patch_reference.py on random faces, every patch
of both layouts, flipped and not, with random pads; the alignment matrix within
1e-9 of align.py's; the aligned face within a grey level of cv2.warpAffine's on
>= 99% of pixels; the generated layout tables current; bad arguments raise."""
import importlib.util
import os

import cv2
import numpy as np
import pytest

import patch_reference as ref
from deepid2_core import _cpu
from deepid2_core.face import align, patches
from deepid2_core.face.patches import DEEPID, DEEPID2, LAYOUTS, PatchLayout, Region

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("DEEPID2_DATA", os.path.join(ROOT, "..", "shared", "data"))
LFW = os.path.join(DATA, "lfw")


def random_face(rng):
    """A random uint8 BGR face of 100..300 px a side, and landmarks near the
    canonical ones (a few px off, as a detector would give them)."""
    h, w = (int(v) for v in rng.integers(100, 301, 2))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lm = align.to_pixels(align.MEAN_SHAPE, (w, h)) + rng.normal(0, 5, (5, 2))
    return img, lm


def random_pad(rng):
    return tuple(int(v) for v in rng.integers(0, 8, 2))


def test_layouts_inc_is_current():
    spec = importlib.util.spec_from_file_location(
        "gen_layouts", os.path.join(ROOT, "cpp", "tools", "gen_layouts.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with open(gen.OUT) as f:
        assert f.read() == gen.render(), "run python cpp/tools/gen_layouts.py"


@pytest.mark.parametrize("layout", [DEEPID2, DEEPID], ids=lambda l: l.name)
def test_cpp_layout_tables_are_pythons(layout):
    assert _cpu.layout_size(layout.name) == len(layout)
    for k in range(len(layout)):
        assert _cpu.layout_patch_shape(layout.name, k) == layout.patch_shape(k)
        assert _cpu.layout_flip_partner(layout.name, k) == patches.flip_partner(layout, k)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("layout", [DEEPID2, DEEPID], ids=lambda l: l.name)
def test_cpp_patches_are_the_numpy_patches_bit_for_bit(layout, seed):
    rng = np.random.default_rng([seed, len(layout)])
    img, lm = random_face(rng)
    for k in range(len(layout)):
        pad = random_pad(rng)
        want, want_flipped = (ref.cut_patch(img, lm, layout, k, pad),
                              ref.cut_flipped(img, lm, layout, k, pad))
        for got, got_flipped in [
                (patches.cut_patch(img, lm, layout, k, pad),
                 patches.cut_flipped(img, lm, layout, k, pad)),
                (_cpu.cut_layout_patch(img, lm, layout.name, k, False, pad),
                 _cpu.cut_layout_patch(img, lm, layout.name, k, True, pad))]:
            assert got.dtype == np.uint8 and got.shape == want.shape, (k, pad)
            np.testing.assert_array_equal(got, want, err_msg=f"patch {k}, pad {pad}")
            np.testing.assert_array_equal(got_flipped, want_flipped,
                                          err_msg=f"flipped patch {k}, pad {pad}")


def test_cut_all_is_each_patch():
    rng = np.random.default_rng(7)
    img, lm = random_face(rng)
    for flipped, cut in ((False, ref.cut_patch), (True, ref.cut_flipped)):
        got = patches.cut_all(img, lm, DEEPID, flipped)
        for k in range(len(DEEPID)):
            np.testing.assert_array_equal(got[k], cut(img, lm, DEEPID, k))


@pytest.mark.parametrize("case", ["tiny face", "landmarks far off", "custom layout"])
def test_cpp_patches_match_numpy_off_the_beaten_track(case):
    """Regions larger than the face or outside it (the border replicated) and a
    layout that is not a named one (any Region goes through the C++)."""
    rng = np.random.default_rng(list(map(ord, case)))
    layout = DEEPID2
    if case == "tiny face":
        img = rng.integers(0, 256, (int(rng.integers(5, 40)), int(rng.integers(5, 40)), 3),
                           dtype=np.uint8)
        lm = align.to_pixels(align.MEAN_SHAPE, (img.shape[1], img.shape[0]))
    else:
        img, lm = random_face(rng)
    if case == "landmarks far off":
        lm = lm + rng.uniform(-3000, 3000, (5, 2))
    if case == "custom layout":
        layout = PatchLayout("custom", (
            Region("a", "rect", (0.3, 0.7), 0.61), Region("b", "rect", (0.7, 0.7), 0.61),
            Region("c", "square", (0.0, 0.01), 0.05, 2)), (0.5, 2.3), ("gray", "rgb"),
            rect_size=(31, 39), square_size=(9, 9))
    for k in range(len(layout)):
        pad = random_pad(rng)
        np.testing.assert_array_equal(patches.cut_patch(img, lm, layout, k, pad),
                                      ref.cut_patch(img, lm, layout, k, pad), err_msg=str(k))
        np.testing.assert_array_equal(patches.cut_flipped(img, lm, layout, k, pad),
                                      ref.cut_flipped(img, lm, layout, k, pad), err_msg=str(k))


def test_the_comparison_can_fail():
    """A landmark 1/100 px off, or one pixel of the face changed, changes some
    patch: bit-for-bit equality above is not vacuous."""
    rng = np.random.default_rng(11)
    img, lm = random_face(rng)
    k = DEEPID2.index("left_eye", 2, "rgb")
    want = ref.cut_patch(img, lm, DEEPID2, k)
    moved = lm.copy()
    moved[0, 0] += 0.01
    assert not np.array_equal(patches.cut_patch(img, moved, DEEPID2, k), want)
    poisoned = img.copy()
    x, y = (int(round(v)) for v in lm[0])
    poisoned[y, x] ^= 0xFF
    assert not np.array_equal(patches.cut_patch(poisoned, lm, DEEPID2, k), want)
    assert not np.array_equal(patches.cut_flipped(img, lm, DEEPID2, k), want)


def test_margin_crop_centre_is_the_patch():
    rng = np.random.default_rng(3)
    img, lm = random_face(rng)
    for k in (0, 57, 199):
        h, w, _ = DEEPID2.patch_shape(k)
        big = patches.cut_patch(img, lm, DEEPID2, k, (4, 6))
        assert big.shape[:2] == (h + 8, w + 12)
        np.testing.assert_array_equal(big[4:4 + h, 6:6 + w], patches.cut_patch(img, lm, DEEPID2, k))


@pytest.mark.parametrize("size", [(250, 250), (125, 100), (97, 160)])
def test_alignment_matrix_is_pythons(size):
    rng = np.random.default_rng(size)
    for _ in range(200):
        lm = align.to_pixels(align.MEAN_SHAPE, (300, 300)) + rng.normal(0, 30, (5, 2))
        lm = lm * rng.uniform(0.2, 5) + rng.uniform(-500, 500, 2)
        want = align.alignment_matrix(lm, size)
        np.testing.assert_allclose(_cpu.alignment_matrix(lm, *size), want, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(_cpu.mean_shape(*size), align.to_pixels(align.MEAN_SHAPE, size))


def lfw_images(n):
    if not os.path.isdir(LFW):
        return []
    names = sorted(os.listdir(LFW))[:n]
    out = []
    for name in names:
        files = sorted(os.listdir(os.path.join(LFW, name)))
        out.append(cv2.imread(os.path.join(LFW, name, files[0])))
    return [im for im in out if im is not None]


def smooth_faces(rng, n):
    """Random images with some structure: noise blurred, plus sharp edges."""
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(100, 301, 2))
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2.0)
        cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (250, 20, 120), -1)
        out.append(img)
    return out


def test_align_face_is_cv2_warp_within_a_grey_level():
    """The C++ warp samples in double precision, cv2.warpAffine on a 1/32 px
    fixed-point grid: a grey level apart at most on nearly every pixel."""
    rng = np.random.default_rng(5)
    images = lfw_images(6) + smooth_faces(rng, 6)
    close = total = 0
    for img in images:
        h, w = img.shape[:2]
        lm = align.to_pixels(align.MEAN_SHAPE, (w, h)) + rng.normal(0, 6, (5, 2))
        lm = align.transform_points(np.array([[1.1, 0.15, -8], [-0.15, 1.1, 5]]), lm)
        got, got_lm = align.align_face(img, lm)
        cv_img = cv2.warpAffine(img, align.alignment_matrix(lm), align.DEFAULT_SIZE,
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert got.shape == cv_img.shape == (250, 250, 3) and got.dtype == np.uint8
        d = np.abs(got.astype(int) - cv_img)
        close += int(np.sum(d <= 1))
        total += d.size
        assert d.max() <= 8
        np.testing.assert_allclose(got_lm, align.transform_points(align.alignment_matrix(lm), lm),
                                   rtol=0, atol=1e-9)
        c_img, c_lm = _cpu.align_face(img, np.ascontiguousarray(lm), 250, 250)
        np.testing.assert_array_equal(got, c_img)
        # the grey face is the colour face's channels warped alike
        grey, _ = align.align_face(np.ascontiguousarray(img[:, :, 1]), lm)
        np.testing.assert_array_equal(grey, got[:, :, 1])
    share = close / total
    print(f"align_face vs cv2.warpAffine: {100 * share:.3f}% of {total} values within 1 level")
    assert share >= 0.99


def test_align_face_is_not_the_identity_on_moved_landmarks():
    rng = np.random.default_rng(9)
    img = smooth_faces(rng, 1)[0]
    lm = align.to_pixels(align.MEAN_SHAPE, (img.shape[1], img.shape[0]))
    a, _ = align.align_face(img, lm)
    b, _ = align.align_face(img, lm + [3.0, 0.0])
    assert not np.array_equal(a, b)


def bad_calls():
    img = np.zeros((60, 50, 3), np.uint8)
    lm = np.ascontiguousarray(align.to_pixels(align.MEAN_SHAPE, (50, 60)))
    nan = lm.copy()
    nan[0, 0] = np.nan
    far = lm.copy()
    far[3] = 1e300
    same = np.zeros((5, 2))
    cut = _cpu.cut_layout_patch
    region = _cpu.cut_region_patch
    return [
        (TypeError, lambda: cut(img.astype(np.float32), lm, "deepid2", 0)),
        (TypeError, lambda: cut(img.tolist(), lm, "deepid2", 0)),
        (TypeError, lambda: cut(img, lm.astype(np.float32), "deepid2", 0)),
        (ValueError, lambda: cut(img[:, ::2], lm, "deepid2", 0)),
        (ValueError, lambda: cut(img[:, :, :2].copy(), lm, "deepid2", 0)),
        (ValueError, lambda: cut(np.zeros((0, 5, 3), np.uint8), lm, "deepid2", 0)),
        (ValueError, lambda: cut(img, lm[:4].copy(), "deepid2", 0)),
        (ValueError, lambda: cut(img, lm, "deepid3", 0)),
        (ValueError, lambda: cut(img, lm, "deepid2", 200)),
        (ValueError, lambda: cut(img, lm, "deepid", -1)),
        (ValueError, lambda: cut(img, lm, "deepid2", 0, False, (-1, 0))),
        (ValueError, lambda: cut(img, lm, "deepid2", 0, False, (0, 10 ** 6))),
        (TypeError, lambda: cut(img, lm, "deepid2", 0, False, (0, 10 ** 12))),
        (ValueError, lambda: cut(img, nan, "deepid2", DEEPID2.index("left_eye", 0, "rgb"))),
        (ValueError, lambda: cut(img, far, "deepid2", DEEPID2.index("left_mouth", 0, "rgb"))),
        (ValueError, lambda: cut(img, None, "deepid2", DEEPID2.index("nose", 0, "rgb"))),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 0.0, -1, 1.0, (5, 5), False)),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 0.3, -1, np.nan, (5, 5), False)),
        (ValueError, lambda: region(img, lm, (np.inf, 0.5), 0.3, -1, 1.0, (5, 5), False)),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 0.3, 5, 1.0, (5, 5), False)),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 0.3, -1, 1.0, (0, 5), False)),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 1e9, -1, 1.0, (5, 5), False)),
        (ValueError, lambda: region(img, lm, (0.5, 0.5), 600.0, -1, 1.0, (1, 1), True, False,
                                    (1000, 1000))),
        (ValueError, lambda: _cpu.align_face(img, nan, 250, 250)),
        (ValueError, lambda: _cpu.align_face(img, same, 250, 250)),
        (ValueError, lambda: _cpu.align_face(img, lm, 0, 250)),
        (ValueError, lambda: _cpu.align_face(img, lm, 250, 1 << 20)),
        (ValueError, lambda: _cpu.align_face(np.zeros((4, 4, 2), np.uint8), lm, 9, 9)),
        (TypeError, lambda: _cpu.align_face(img.astype(np.int16), lm, 9, 9)),
        (ValueError, lambda: _cpu.alignment_matrix(lm.T.copy(), 250, 250)),
        (ValueError, lambda: _cpu.mean_shape(-3, 250)),
        (ValueError, lambda: align.align_face(img.astype(np.float64), lm)),
        (ValueError, lambda: patches.cut_patch(img[:, :, 0], lm, DEEPID2, 0)),
    ]


@pytest.mark.parametrize("i", range(len(bad_calls())))
def test_bad_arguments_raise(i):
    error, call = bad_calls()[i]
    with pytest.raises(error):
        call()


def test_a_custom_layout_patch_with_no_landmark_needs_none():
    img = np.random.default_rng(2).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    p = _cpu.cut_region_patch(img, None, (0.5, 0.5), 0.4, -1, 1.0, (11, 9), True)
    assert p.shape == (11, 9, 1)
    layout = LAYOUTS["deepid"]
    k = layout.index("head", 1, "gray")
    np.testing.assert_array_equal(patches.cut_patch(img, None, layout, k),
                                  ref.cut_patch(img, None, layout, k))
