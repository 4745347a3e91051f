"""The box rule's YuNet path (face/box.py): the measured mapping onto Haar boxes, the
small-image retries, the Haar fallback and --pick."""
import os

import cv2
import numpy as np
import pytest

from deepid2_core.face import box as B

DATA = os.environ.get("DEEPID2_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                   "shared", "data"))


def iou(a, b):
    x0, y0 = np.maximum(a[:2], b[:2])
    x1, y1 = np.minimum(a[:2] + a[2:], b[:2] + b[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from deepid2_core.synth import make_dataset
    root = tmp_path_factory.mktemp("faces")
    make_dataset(root, 4, 3, 1, workers=1, progress=False)
    return [cv2.imread(str(p)) for p in sorted(root.glob("*/*.jpg"))]


def test_yunet_to_haar_is_the_documented_mapping():
    rng = np.random.default_rng(5)
    b = np.column_stack([rng.uniform(-20, 300, 7), rng.uniform(-20, 300, 7),
                         rng.uniform(5, 200, 7), rng.uniform(5, 200, 7)])
    got = B.yunet_to_haar(b)
    m = B.YUNET_TO_HAAR
    for (x, y, w, h), g in zip(b.tolist(), got):
        s = (w * h) ** 0.5
        side = m["k"] * s
        cx, cy = x + w / 2 + m["dx"] * s, y + h / 2 + m["dy"] * s
        np.testing.assert_allclose(g, [cx - side / 2, cy - side / 2, side, side], rtol=1e-12,
                                   atol=1e-9)


def test_order_faces_largest_and_center():
    rng = np.random.default_rng(6)
    for _ in range(20):
        n = int(rng.integers(1, 9))
        b = np.column_stack([rng.uniform(0, 400, n), rng.uniform(0, 300, n),
                             rng.uniform(10, 120, (n, 2))])
        shape = (int(rng.integers(300, 500)), int(rng.integers(400, 600)), 3)
        area = b[:, 2] * b[:, 3]
        assert np.all(np.diff(area[B.order_faces(b, shape, "largest")]) <= 0)
        c = b[:, :2] + b[:, 2:] / 2
        dist = np.hypot(c[:, 0] - shape[1] / 2, c[:, 1] - shape[0] / 2)
        assert np.all(np.diff(dist[B.order_faces(b, shape, "center")]) >= 0)
    with pytest.raises(ValueError, match="pick must be largest or center"):
        B.order_faces(b, shape, "left")
    with pytest.raises(ValueError, match="pick must be largest or center"):
        B.face_boxes(np.zeros((50, 50, 3), np.uint8), "yunet", pick="first")


def test_mapped_yunet_boxes_land_on_the_haar_boxes(faces):
    both = []
    for img in faces:
        h, y = B.face_boxes(img, "haar"), B.face_boxes(img, "yunet")
        assert y.found and y.source == "yunet" and y.boxes.shape == (1, 4)
        assert y.boxes[0, 2] == y.boxes[0, 3]            # square, as Haar's
        if h.found:
            both.append(iou(h.boxes[0], y.boxes[0]))
    assert len(both) >= 6 and np.median(both) > 0.6, both    # synthetic faces: loosely


MTFL = os.path.join(DATA, "mtfl80")


@pytest.mark.skipif(not os.path.isdir(MTFL), reason=f"MTFL not found at {MTFL}")
def test_mapped_yunet_boxes_land_on_the_haar_boxes_of_real_faces():
    """On the images the landmark nets were trained on, where the mapping was measured."""
    from deepid2_core.training.mtfl import TRAIN_LIST, read_mtfl
    ious, found = [], 0
    for rel, _ in read_mtfl(MTFL, TRAIN_LIST)[:300]:
        img = cv2.imread(os.path.join(MTFL, rel))
        h, y = B.face_boxes(img, "haar"), B.face_boxes(img, "yunet")
        found += y.found
        if h.found and y.source == "yunet":
            ious.append(iou(h.boxes[0], y.boxes[0]))
    assert found == 300 and len(ious) > 250
    assert np.median(ious) > 0.8 and np.mean(np.array(ious) > 0.5) > 0.95, np.median(ious)


def test_small_images_are_retried_upscaled(faces):
    img = faces[0]
    big = B.face_boxes(img, "yunet").boxes[0]
    k = 64 / img.shape[1]
    small = cv2.resize(img, (64, round(img.shape[0] * k)), interpolation=cv2.INTER_AREA)
    got = B.face_boxes(small, "yunet")
    assert got.found and got.source == "yunet"
    assert iou(got.boxes[0] / k, big) > 0.6, (got.boxes[0] / k, big)


def two_face_canvas(faces):
    """A large face top left and a smaller one, of another person, in the middle."""
    face = faces[1]
    h, w = face.shape[:2]
    canvas = np.full((2 * h, 3 * w, 3), 128, np.uint8)
    canvas[:h, :w] = face
    small = cv2.resize(faces[4], (w * 2 // 3, h * 2 // 3), interpolation=cv2.INTER_AREA)
    y0, x0 = h - small.shape[0] // 2, 3 * w // 2 - small.shape[1] // 2
    canvas[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return canvas


def test_pick_center_takes_the_face_nearest_the_middle(faces):
    h, w = faces[1].shape[:2]
    canvas = two_face_canvas(faces)
    largest = B.face_boxes(canvas, "yunet", pick="largest")
    center = B.face_boxes(canvas, "yunet", pick="center")
    allf = B.face_boxes(canvas, "yunet", all_faces=True)
    assert len(allf.boxes) >= 2
    cl, cc = (b.boxes[0, :2] + b.boxes[0, 2:] / 2 for b in (largest, center))
    assert cl[0] < w and cl[1] < h                            # the top-left one
    assert abs(cc[0] - 1.5 * w) < w / 4 and abs(cc[1] - h) < h / 4
    assert center.boxes[0, 2] < largest.boxes[0, 2]


def test_no_face_falls_back_to_haar_then_the_central_box():
    rng = np.random.default_rng(7)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    r = B.face_boxes(noise, "yunet")
    assert not r.found and r.source == "central"
    assert r.reason == "no face found by YuNet or Haar"
    np.testing.assert_allclose(r.boxes[0], B.central_box(noise.shape))
    tiny = B.face_boxes(np.full((3, 3, 3), 50, np.uint8), "yunet")
    assert not tiny.found and "smaller than the smallest detectable face" in tiny.reason


def test_verify_and_align_take_the_picked_face(faces, tmp_path, capsys):
    from deepid2_core.cli import main
    from deepid2_core.face.pipeline import align_image, new_aligner
    from deepid2_core.verifier.commands import prepare_faces
    path = str(tmp_path / "two.png")
    cv2.imwrite(path, two_face_canvas(faces))
    got = {}
    for pick in ("largest", "center"):
        aligned, problems = prepare_faces([path], pick=pick, progress=False)
        assert not problems
        want, why = align_image(cv2.imread(path), aligner=new_aligner(pick=pick))
        assert why == "" and np.array_equal(aligned[path], want)
        got[pick] = want
    assert np.abs(got["largest"].astype(int) - got["center"]).mean() > 10   # other faces
    capsys.readouterr()
    assert main(["verify", path, path, "--pick", "center"]) == 0
    assert "same person" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["verify", path, path, "--pick", "left"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'left'" in err[-1] and "Traceback" not in "".join(err)
