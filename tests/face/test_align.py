"""The face pipeline (deepid2_core.face): similarity alignment geometry, the
DeepID / DeepID2 patch layouts and their flip partners, cutting patches,
image reading and detection on bad files, and (with the shared data present)
Haar and YuNet detection on real LFW faces."""

import json
import os

import cv2
import numpy as np
import pytest

from deepid2_core.face import (CANONICAL, DEEPID, DEEPID2, MEAN_SHAPE, HaarDetector,
                               PatchLayout, Region, YuNetDetector, align_face,
                               alignment_points, cut_all, cut_flipped, cut_patch,
                               detect_faces, detect_image, flip_partner, make_detector,
                               mirror_landmarks, read_image, region_box,
                               similarity_transform, to_pixels, transform_points)
from deepid2_core.face import haar

DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                   "shared", "data"))
LFW = os.path.join(DATA, "lfw")
YUNET = os.path.join(DATA, "models", "face_detection_yunet_2026may.onnx")
LFW_FILES = ["Colin_Powell/Colin_Powell_0001.jpg", "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
             "Serena_Williams/Serena_Williams_0001.jpg"]
needs_lfw = pytest.mark.skipif(not os.path.isdir(LFW),
                               reason=f"LFW not found at {LFW} (set DEEPID2_DATA)")
needs_yunet = pytest.mark.skipif(not os.path.isfile(YUNET),
                                 reason=f"YuNet model not found at {YUNET} (set DEEPID2_DATA)")


def random_similarity(rng):
    a, s = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0)
    return np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-500, 500)],
                     [s * np.sin(a), s * np.cos(a), rng.uniform(-500, 500)]])


# ---------------------------------------------------------------- alignment

def test_similarity_recovers_random_transforms_exactly():
    rng = np.random.default_rng(0)
    canon = to_pixels(CANONICAL)
    for _ in range(100):
        m = random_similarity(rng)
        for src in (canon, rng.uniform(-300, 300, (7, 2))):
            got = similarity_transform(src, transform_points(m, src))
            np.testing.assert_allclose(got, m, rtol=0, atol=1e-9 * np.abs(m).max())


def test_similarity_is_the_least_squares_solution_without_reflection():
    rng = np.random.default_rng(1)
    for _ in range(20):
        src, dst = rng.normal(size=(3, 2)) * 50, rng.normal(size=(3, 2)) * 50
        # x' = a x - b y + tx, y' = b x + a y + ty: linear in (a, b, tx, ty)
        rows = [[x, -y, 1, 0] for x, y in src] + [[y, x, 0, 1] for x, y in src]
        a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.r_[dst[:, 0], dst[:, 1]], rcond=None)[0]
        m = similarity_transform(src, dst)
        np.testing.assert_allclose(m, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    src = np.array([[0.0, 0], [1, 0], [0, 1]])
    m = similarity_transform(src, src * [-1, 1])       # a mirror is not reachable
    assert m[0, 0] == m[1, 1] and m[0, 1] == -m[1, 0]
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform([[1, 1], [1, 1], [1, 1]], src)
    with pytest.raises(ValueError):
        similarity_transform(src, src[:2])


def blob_image(points, size, sigma=2.0):
    """Grey Gaussian blobs at points, as a uint8 BGR image of size (w, h)."""
    yy, xx = np.mgrid[:size[1], :size[0]]
    img = np.zeros((size[1], size[0]))
    for x, y in points:
        img = np.maximum(img, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)))
    return cv2.cvtColor(np.round(img * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def blob_centres(img, near, r=6):
    g = img[:, :, 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = int(round(x)) - r, int(round(y)) - r
        w = g[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        yy, xx = np.mgrid[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


def test_align_face_puts_landmarks_on_canonical_positions():
    rng = np.random.default_rng(2)
    canon5 = to_pixels(MEAN_SHAPE)
    for _ in range(5):
        m = random_similarity(rng)
        m[:, :2] *= 1.6 / np.hypot(m[0, 0], m[1, 0])       # face about 1.6x the canonical size
        m[:, 2] = 0
        m[:, 2] = [320, 240] - transform_points(m, [[124.5, 134.0]])[0]
        lm = transform_points(m, canon5)
        img = blob_image(lm[[0, 1, 2]], (640, 480))
        aligned, lm_al = align_face(img, lm)
        assert aligned.shape == (250, 250, 3) and aligned.dtype == np.uint8
        np.testing.assert_allclose(lm_al, canon5, atol=1e-6)
        np.testing.assert_allclose(alignment_points(lm_al), to_pixels(CANONICAL), atol=1e-6)
        assert lm_al[0, 1] == pytest.approx(lm_al[1, 1])                 # eyes level
        np.testing.assert_allclose(blob_centres(aligned, canon5[:3]), canon5[:3], atol=0.15)
    # landmarks that are no similarity away: the 3 points' centroid still lands exactly
    lm = canon5 + rng.normal(0, 4, (5, 2))
    _, lm_al = align_face(np.zeros((300, 300, 3), np.uint8), lm)
    np.testing.assert_allclose(alignment_points(lm_al).mean(0), to_pixels(CANONICAL).mean(0),
                               atol=1e-9)
    # the geometry scales with the output size: f * n - 0.5
    _, small = align_face(np.zeros((300, 300, 3), np.uint8), canon5, size=(125, 125))
    np.testing.assert_allclose(alignment_points(small), to_pixels(CANONICAL, (125, 125)),
                               atol=1e-9)
    # a non-square size stretches the canonical triangle: a best fit, eyes still level
    _, wide = align_face(np.zeros((300, 300, 3), np.uint8), canon5, size=(125, 100))
    assert wide[0, 1] == pytest.approx(wide[1, 1])
    np.testing.assert_allclose(alignment_points(wide).mean(0),
                               to_pixels(CANONICAL, (125, 100)).mean(0), atol=1e-9)
    mirrored = mirror_landmarks(canon5, 250)
    np.testing.assert_allclose(mirrored, canon5, atol=1e-9)            # canonical is symmetric


# ------------------------------------------------------------------ layouts

def test_layout_counts_sizes_and_dtypes():
    rng = np.random.default_rng(3)
    face = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
    lm = to_pixels(MEAN_SHAPE)
    for layout, n, regions, scales in ((DEEPID2, 200, 20, 5), (DEEPID, 60, 10, 3)):
        assert len(layout) == n and len(layout.regions) == regions
        assert len(layout.scales) == scales and layout.colours == ("rgb", "gray")
        patches = cut_all(face, lm, layout)
        assert len(patches) == n
        for k, p in enumerate(patches):
            assert p.dtype == np.uint8 and p.shape == layout.patch_shape(k)
            assert p.shape[:2] in ((55, 47), (47, 47))
            assert p.shape[2] == (3 if layout.patch(k)[2] == "rgb" else 1)
        for k in (0, 1, n // 2, n - 1):
            np.testing.assert_array_equal(cut_patch(face, lm, layout, k), patches[k])
    centred = [r.landmark for r in DEEPID.regions if r.landmark is not None]
    assert sorted(centred) == [0, 1, 2, 3, 4] and len(DEEPID.regions) - len(centred) == 5
    assert {r.landmark for r in DEEPID2.regions} == {None, 0, 1, 2, 3, 4}
    assert cut_patch(face, lm, DEEPID, 0).shape == (55, 47, 3)


def test_every_region_fits_the_aligned_face_at_every_scale():
    lm = to_pixels(MEAN_SHAPE)
    for layout in (DEEPID2, DEEPID):
        for k in range(len(layout)):
            cx, cy, w, h = region_box(layout, k, lm, (250, 250))
            assert cx - w / 2 >= -0.5 and cx + w / 2 <= 249.5, (layout.name, k)
            assert cy - h / 2 >= -0.5 and cy + h / 2 <= 249.5, (layout.name, k)


def test_flip_partners():
    for layout in (DEEPID2, DEEPID):
        names = [r.name for r in layout.regions]
        for k in range(len(layout)):
            p = flip_partner(layout, k)
            assert flip_partner(layout, p) == k
            assert layout.patch(p)[1:] == layout.patch(k)[1:]         # same scale, colour
        def partner(name):
            return names[layout.region_partner(names.index(name))]
        assert partner("left_eye") == "right_eye" and partner("right_eye") == "left_eye"
        assert partner("left_mouth") == "right_mouth" and partner("nose") == "nose"
        assert partner("face") == "face" and partner("head") == "head"
    names = [r.name for r in DEEPID2.regions]
    assert names[DEEPID2.region_partner(names.index("left_half"))] == "right_half"
    assert names[DEEPID2.region_partner(names.index("left_eye_cheek"))] == "right_eye_cheek"
    le = DEEPID2.index("left_eye", 3, "gray")
    assert flip_partner(DEEPID2, le) == DEEPID2.index("right_eye", 3, "gray")


def test_cut_flipped_is_the_patch_of_the_mirrored_face():
    rng = np.random.default_rng(4)
    face = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)       # noise: no slack at all
    lm = to_pixels(MEAN_SHAPE) + rng.normal(0, 4, (5, 2))             # not symmetric
    mirror, lm_m = np.ascontiguousarray(face[:, ::-1]), mirror_landmarks(lm, 250)
    for layout in (DEEPID2, DEEPID):
        flipped = cut_all(face, lm, layout, flipped=True)
        of_mirror = cut_all(mirror, lm_m, layout)
        for k in range(len(layout)):
            np.testing.assert_array_equal(of_mirror[k], flipped[k], err_msg=f"{layout.name} {k}")
            np.testing.assert_array_equal(cut_flipped(face, lm, layout, k), flipped[k])
            np.testing.assert_array_equal(
                cut_flipped(mirror, lm_m, layout, k),
                cut_patch(mirror, lm_m, layout, flip_partner(layout, k))[:, ::-1])


def test_patches_are_centred_and_grey_is_weighted_rgb():
    lm = to_pixels(MEAN_SHAPE) + [[3, -2], [-1, 2], [0, 1], [2, 0], [-2, 1]]
    face = np.zeros((250, 250, 3), np.uint8)
    face[:, :] = (40, 120, 200)                                         # BGR
    x, y = np.round(lm[0]).astype(int)
    face[y, x] = 255                                                    # a dot on the left eye
    lm[0] = [x, y]
    k = DEEPID2.index("left_eye", 2, "rgb")
    p = cut_patch(face, lm, DEEPID2, k).astype(int)
    excess = p[:, :, 2] - 40.0                                          # blue above background
    yy, xx = np.mgrid[:47, :47]
    assert abs((excess * xx).sum() / excess.sum() - 23) < 0.05          # centre pixel of 47
    assert abs((excess * yy).sum() / excess.sum() - 23) < 0.05
    assert tuple(p[0, 0]) == (200, 120, 40)                             # RGB order
    g = cut_patch(face, lm, DEEPID2, DEEPID2.index("left_eye", 2, "gray"))
    assert abs(int(g[0, 0, 0]) - round(0.299 * 200 + 0.587 * 120 + 0.114 * 40)) <= 0


def test_layouts_serialise_and_validate():
    for layout in (DEEPID2, DEEPID):
        back = PatchLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
        assert back == layout and len(back) == len(layout)
        assert [flip_partner(back, k) for k in range(len(back))] == \
               [flip_partner(layout, k) for k in range(len(layout))]
    eye = Region("left_eye", "square", (0, 0), 0.2, landmark=0)
    with pytest.raises(ValueError, match="mirror"):
        PatchLayout("lonely", (eye,), (1.0,))
    with pytest.raises(ValueError, match="landmark"):
        Region("x", "square", (0, 0), 0.2, landmark=7)
    ok = PatchLayout("pair", (eye, Region("right_eye", "square", (0, 0), 0.2, landmark=1)),
                     (1.0,), ("gray",))
    assert len(ok) == 2 and flip_partner(ok, 0) == 1
    with pytest.raises(IndexError):
        ok.patch(2)


# -------------------------------------------------------- reading, bad files

def write_bad_files(d, content=None):
    """The bad files of the brief, in folder d. content: optional BGR face."""
    rng = np.random.default_rng(5)
    base = content if content is not None else rng.integers(0, 256, (64, 64, 3), np.uint8)
    jpg = cv2.imencode(".jpg", base)[1].tobytes()
    files = {"truncated.jpg": jpg[:len(jpg) // 2], "text.jpg": b"this is not an image\n"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    cv2.imwrite(str(d / "one.png"), np.full((1, 1, 3), 99, np.uint8))
    cv2.imwrite(str(d / "deep16.png"), base.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "rgba.png"), np.dstack([base, np.full(base.shape[:2], 7, np.uint8)]))
    cv2.imwrite(str(d / "gray.png"), base[:, :, 1])
    (d / "empty.jpg").write_bytes(b"")
    return base


def test_read_image_normalises_or_explains(tmp_path):
    base = write_bad_files(tmp_path)
    img, why = read_image(tmp_path / "truncated.jpg")
    assert img is None and "truncated" in why
    assert read_image(tmp_path / "text.jpg") == (None, "not a decodable image")
    assert read_image(tmp_path / "empty.jpg") == (None, "empty file")
    assert read_image(tmp_path / "missing.jpg") == (None, "file not found")
    one, why = read_image(tmp_path / "one.png")
    assert why is None and one.shape == (1, 1, 3) and one.dtype == np.uint8
    for name, want in (("deep16.png", base), ("rgba.png", base),
                       ("gray.png", np.repeat(base[:, :, 1:2], 3, axis=2))):
        img, why = read_image(tmp_path / name)
        assert why is None and img.dtype == np.uint8 and img.shape == (64, 64, 3), name
        np.testing.assert_array_equal(img, want, err_msg=name)
    prog = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    (tmp_path / "prog.jpg").write_bytes(prog)
    (tmp_path / "prog_cut.jpg").write_bytes(prog[:len(prog) * 3 // 4])
    assert read_image(tmp_path / "prog.jpg")[0].shape == (64, 64, 3)
    assert "truncated" in read_image(tmp_path / "prog_cut.jpg")[1]
    vals = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "ramp16.png"), vals)
    img, _ = read_image(tmp_path / "ramp16.png")
    assert img[0, :, 0].tolist() == [0, 0, 1, 1, 128, 255]              # round(v / 257)


def test_detection_on_bad_files_never_raises(tmp_path):
    write_bad_files(tmp_path)
    names = ["truncated.jpg", "text.jpg", "empty.jpg", "missing.jpg", "one.png", "deep16.png",
             "rgba.png", "gray.png"]
    res = detect_faces([tmp_path / n for n in names])
    status = {n: r.status for n, r in zip(names, res)}
    assert status == {"truncated.jpg": "unreadable", "text.jpg": "unreadable",
                      "empty.jpg": "unreadable", "missing.jpg": "unreadable",
                      "one.png": "no_face", "deep16.png": "no_face", "rgba.png": "no_face",
                      "gray.png": "no_face"}
    assert "smaller" in res[names.index("one.png")].reason and res[4].size == (1, 1)
    for r in res:
        assert r.boxes.shape == (0, 4) and r.reason
        json.dumps(r.to_dict())
    assert detect_image(np.zeros((0, 5, 3), np.uint8)).status == "unreadable"
    assert detect_image(np.zeros((40, 40), np.uint16)).status == "no_face"


# --------------------------------------------------------------- detection

def test_bundled_haar_cascade_finds_synthetic_faces():
    """Without the shared data: the Haar detector on 20 synthetic faces
    (synth.py, drawn where LFW's faces are) finds a face in the middle of
    several (8 of 20 today) and nothing elsewhere."""
    from deepid2_core import synth
    found = []
    det = make_detector("haar")
    for i in range(20):
        img = synth.render(synth.identity_params(0, i), np.random.default_rng([0, i, 1]))
        r = detect_image(img, det)
        assert r.status in ("ok", "no_face")
        if r.ok:
            x, y, w, h = r.boxes[0]
            found.append((x + w / 2, y + h / 2, w))
    assert len(found) >= 5
    for cx, cy, w in found:
        assert abs(cx - 125) < 20 and abs(cy - 120) < 20 and 60 < w < 170


def lfw(name):
    img = cv2.imread(os.path.join(LFW, name))
    assert img is not None, name
    return img


@needs_lfw
@pytest.mark.parametrize("name", LFW_FILES)
def test_haar_finds_the_one_face_of_an_lfw_image(name):
    r = detect_image(os.path.join(LFW, name), make_detector("haar"))
    assert r.status == "ok" and r.boxes.shape == (1, 4) and r.landmarks is None
    x, y, w, h = r.boxes[0]
    assert 70 <= w <= 170 and abs(x + w / 2 - 125) < 25 and abs(y + h / 2 - 125) < 30
    assert r.size == (250, 250) and r.scores[0] > 5


@needs_lfw
@pytest.mark.parametrize("name", LFW_FILES)
def test_the_default_yunet_finds_the_face_and_its_points(name):
    r = detect_image(os.path.join(LFW, name))        # the packaged YuNet
    assert r.status == "ok" and r.boxes.shape == (1, 4) and r.landmarks.shape == (1, 5, 2)
    x, y, w, h = r.boxes[0]
    assert 60 <= w <= 170 and abs(x + w / 2 - 125) < 25 and abs(y + h / 2 - 125) < 30
    assert 0.6 <= r.scores[0] <= 1.0
    (le, re, nose, lm, rm) = r.landmarks[0]
    assert le[0] < nose[0] < re[0] and lm[0] < rm[0] and max(le[1], re[1]) < nose[1] < lm[1]
    with pytest.raises(ValueError, match="kind must be yunet or haar"):
        make_detector("dlib")
    with pytest.raises(ValueError, match="goes with kind='yunet'"):
        make_detector("haar", "m.onnx")


@needs_lfw
def test_bad_variants_of_a_real_face_still_detect(tmp_path):
    write_bad_files(tmp_path, lfw(LFW_FILES[0]))
    ref = detect_image(os.path.join(LFW, LFW_FILES[0]))
    for name in ("deep16.png", "rgba.png", "gray.png"):
        r = detect_image(tmp_path / name)
        assert r.status == "ok", name
        np.testing.assert_allclose(r.boxes, ref.boxes, atol=6, err_msg=name)
    assert detect_image(tmp_path / "truncated.jpg").status == "unreadable"


@needs_lfw
def test_largest_face_or_all_faces():
    big, small = lfw(LFW_FILES[1]), cv2.resize(lfw(LFW_FILES[2]), (150, 150))
    canvas = np.full((260, 420, 3), 128, np.uint8)
    canvas[5:255, 0:250], canvas[60:210, 265:415] = big, small
    every = detect_image(canvas, all_faces=True)
    areas = every.boxes[:, 2] * every.boxes[:, 3]
    assert every.ok and len(every.boxes) >= 2 and np.all(np.diff(areas) <= 0)
    assert any(b[0] > 265 for b in every.boxes)                         # the small face
    one = detect_image(canvas)
    assert one.boxes.shape == (1, 4) and one.boxes[0][0] < 250
    np.testing.assert_array_equal(one.boxes[0], every.boxes[0])
    shrunk = detect_image(canvas, all_faces=True, max_side=210)        # detect at half size
    assert shrunk.ok and abs(shrunk.boxes[0][2] - every.boxes[0][2]) < 12


@needs_lfw
def test_numba_cascade_matches_opencv_cascade():
    if not hasattr(cv2, "CascadeClassifier"):
        pytest.skip(f"OpenCV {cv2.__version__} has no CascadeClassifier to compare with")
    a, b = HaarDetector(engine="opencv"), HaarDetector(engine="numba", min_neighbors=5)
    for name in LFW_FILES:
        img = lfw(name)
        np.testing.assert_array_equal(a.detect(img)[0], b.detect(img)[0])


def test_group_rectangles_follows_opencv():
    near = [(10, 10, 50, 50), (12, 11, 50, 50), (11, 9, 52, 52), (200, 200, 30, 30)]
    boxes, n = haar.group_rectangles(near, 2)
    assert boxes.tolist() == [[11, 10, 51, 51]] and n.tolist() == [3]
    assert haar.group_rectangles(near, 3)[0].shape == (0, 4)


@needs_yunet
@needs_lfw
def test_yunet_landmarks_and_alignment():
    det = YuNetDetector(YUNET)
    canon = to_pixels(CANONICAL)
    for name in LFW_FILES:
        r = detect_image(os.path.join(LFW, name), det)
        assert r.ok and r.boxes.shape == (1, 4) and r.landmarks.shape == (1, 5, 2)
        lm = r.landmarks[0]
        x, y, w, h = r.boxes[0]
        assert np.all((lm[:, 0] > x) & (lm[:, 0] < x + w) & (lm[:, 1] > y) & (lm[:, 1] < y + h))
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]              # image-left first
        aligned, lm_al = align_face(lfw(name), lm)
        assert np.abs(alignment_points(lm_al) - canon).max() < 4
        again = detect_image(aligned, det)                              # the aligned face
        assert again.ok and np.abs(alignment_points(again.landmarks[0]) - canon).max() < 4
        assert len(cut_all(aligned, lm_al, DEEPID2)) == 200


@needs_yunet
def test_yunet_on_bad_files(tmp_path):
    write_bad_files(tmp_path)
    det = YuNetDetector(YUNET)
    res = detect_faces([tmp_path / n for n in ("truncated.jpg", "one.png", "gray.png")], det)
    assert [r.status for r in res] == ["unreadable", "no_face", "no_face"]
    with pytest.raises(FileNotFoundError):
        YuNetDetector(tmp_path / "nope.onnx")
