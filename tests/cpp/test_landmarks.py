"""The C++ landmark model (cpp/src/face/landmarks.*, through deepid2_core._cpu) against
Python's: level 1 against Python's forward on the crops the C++ warp cuts (the executor),
the cascade against Python's refinement of the same level-1 points, the C++ warp against a
numpy reference and cv2, the whole against the old cv2-warp Python path on MTFL images
(when the data is present); and clean errors for damaged files, bad boxes and arguments."""

import json
import os
import threading

import cv2
import numpy as np
import pytest

from deepid2_core import _cpu, safetensors
from deepid2_core.backends import get_backend
from deepid2_core.face import landmark_cascade as FC
from deepid2_core.face import landmarks as FL
from deepid2_core.nets import landmark as NL
from deepid2_core.nets import refine as NR

DATA = os.path.join(os.environ.get("DEEPID2_DATA", os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data")), "mtfl80")
SHIPPED = FL.DEFAULT_MODEL


def random_image(rng, h=None, w=None):
    """A smooth random grey image (noise blurred: the nets see structure, not only noise)."""
    h, w = h or int(rng.integers(40, 160)), w or int(rng.integers(40, 160))
    img = rng.integers(0, 256, (h, w)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.5) * 1.5 - 60, 0, 255).astype(np.uint8)


def random_box(rng, shape):
    h, w = shape
    bw, bh = rng.uniform(0.3, 1.2) * w, rng.uniform(0.3, 1.2) * h
    return np.array([rng.uniform(-0.3 * bw, w - 0.6 * bw), rng.uniform(-0.3 * bh, h - 0.6 * bh),
                     bw, bh])


def python_level1(model, gray, box):
    """Python's level 1 (float32 standardise, the cpu backend's forward) on the crop the
    C++ warp cuts."""
    m = FL.crop_matrix(box, model.cfg.size, model.cfg.box_scale)
    crop = _cpu.warp_affine(gray, m, model.cfg.size, model.cfg.size)
    return model.predict_crops(crop[None], FL.invert_affine(m)[None])[0]


def random_cascade_file(path, seed):
    """A model file with random F1 weights and two random refinement levels (other patch
    sides and sizes than the shipped model's, so that the config is read, not assumed)."""
    rng = np.random.default_rng(seed)
    cfg = NL.LandmarkNetConfig(size=35, hidden=50, box_scale=1.3)
    params = NL.init_params(cfg, seed, rng.uniform(0.3, 0.7, 10))
    levels = []
    for number, patches, size in ((2, (1.1, 1.6), 15), (3, (0.8,), 13)):
        lc = NR.RefineLevelConfig(patches=patches, size=size, conv1=8, conv2=12, hidden=16,
                                  rotate_frame=bool(number == 2))
        nets = {(p, j): NR.init_refine_params(lc, rng) for p in range(5)
                for j in range(len(patches))}
        for net in nets.values():
            net["out.w"] *= 0.2  # offsets of a few percent of a patch
        levels.append(FC.CascadeLevel(number, lc, nets, get_backend("cpu")))
    cascade = FC.LandmarkCascade(levels)
    FL.save_model(path, params, cfg, {"detector": "haar"}, cascade=cascade)
    return FL.load_landmark_model(path)


# -- agreement with Python ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["shipped", "random"])
def test_level1_equals_python_forward_on_cpp_crops(tmp_path, which):
    rng = np.random.default_rng()
    path = SHIPPED if which == "shipped" else tmp_path / "m.safetensors"
    if which == "random":
        random_cascade_file(path, int(rng.integers(1 << 30)))
    model = FL.load_landmark_model(path, levels=1)
    worst = 0.0
    for _ in range(20):
        gray = random_image(rng)
        box = random_box(rng, gray.shape)
        got = _cpu.landmarks_predict(os.fspath(path), gray, box[None], 1)[0]
        crop_px = max(box[2:]) * model.cfg.box_scale  # the crop's side in image pixels
        worst = max(worst, np.abs(got - python_level1(model, gray, box)).max() / crop_px)
    # C++ standardises in double, numpy in float32: float rounding, nothing more (a
    # millionth of the crop: 1e-4 px for a 100 px face)
    assert worst < 1e-6, worst


@pytest.mark.parametrize("which", ["shipped", "random"])
def test_cascade_equals_python_refinement(tmp_path, which):
    rng = np.random.default_rng()
    path = SHIPPED if which == "shipped" else tmp_path / "m.safetensors"
    if which == "random":
        random_cascade_file(path, int(rng.integers(1 << 30)))
    model = FL.load_landmark_model(path)
    assert model.cascade is not None
    for _ in range(10):
        gray = random_image(rng)
        box = random_box(rng, gray.shape)[None]
        one = _cpu.landmarks_predict(os.fspath(path), gray, box, 1)
        want = model.cascade.refine(gray, one, flip_average=True)
        np.testing.assert_allclose(_cpu.landmarks_predict(os.fspath(path), gray, box), want,
                                   atol=2e-5)
        # levels: 2 runs level 1 and the first refinement level only
        two = FC.LandmarkCascade(model.cascade.levels[:1]).refine(gray, one)
        np.testing.assert_allclose(_cpu.landmarks_predict(os.fspath(path), gray, box, 2), two,
                                   atol=2e-5)


def test_predict_landmarks_runs_cpp_for_a_file_model():
    rng = np.random.default_rng()
    gray = random_image(rng, 120, 100)
    boxes = np.stack([random_box(rng, gray.shape) for _ in range(3)])
    model = FL.load_landmark_model()
    assert FL._runs_in_cpp(model)
    got = FL.predict_landmarks(model, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), boxes)
    assert got.dtype == np.float32 and got.shape == (3, 5, 2)
    np.testing.assert_array_equal(got, _cpu.landmarks_predict(SHIPPED, gray, boxes)
                                  .astype(np.float32))
    model.path = None  # the Python forward: the same points to float rounding
    np.testing.assert_allclose(FL.predict_landmarks(model, gray, boxes), got, atol=1e-3)
    assert not FL._runs_in_cpp(FL.load_landmark_model(flip_average=False))


def test_checkpoint_loads_with_its_target_stats_folded(tmp_path):
    rng = np.random.default_rng()
    cfg = NL.LandmarkNetConfig()
    params = NL.init_params(cfg, int(rng.integers(1 << 30)))
    mean = rng.uniform(0.3, 0.7, 10).astype(np.float32)
    std = np.float32([rng.uniform(0.05, 0.2)])
    tensors = {"param/" + k: v for k, v in params.items()}
    tensors.update({"velocity/" + k: np.zeros_like(v) for k, v in params.items()})
    tensors.update({"target/mean": mean, "target/std": std})
    path = tmp_path / "checkpoint.safetensors"
    safetensors.save(path, tensors, {"format": FL.CHECKPOINT_FORMAT,
                                     "net": json.dumps(cfg.to_dict())})
    model = FL.load_landmark_model(path)
    gray = random_image(rng)
    box = random_box(rng, gray.shape)
    got = _cpu.landmarks_predict(os.fspath(path), gray, box[None])[0]
    np.testing.assert_allclose(got, python_level1(model, gray, box), atol=2e-5)


def test_warp_affine_is_double_bilinear_with_the_border_replicated():
    rng = np.random.default_rng()
    for channels in (1, 3):
        img = rng.integers(0, 256, (37, 53, channels)[:3 if channels == 3 else 2], np.uint8)
        a = np.radians(rng.uniform(-40, 40))
        k = rng.uniform(0.5, 2.0)
        m = np.array([[k * np.cos(a), k * np.sin(a), rng.uniform(-20, 20)],
                      [-k * np.sin(a), k * np.cos(a), rng.uniform(-20, 20)]])
        got = _cpu.warp_affine(img, m, 41, 29)
        assert got.shape == (29, 41) + ((3,) if channels == 3 else ()) and got.dtype == np.uint8
        # the reference: every output pixel sampled at m^-1 (x, y), clamped, bilinear
        inv = FL.invert_affine(m)
        ys, xs = np.mgrid[0:29, 0:41].astype(np.float64)
        sx = np.clip(inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], 0, img.shape[1] - 1)
        sy = np.clip(inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2], 0, img.shape[0] - 1)
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        x1, y1 = np.minimum(x0 + 1, img.shape[1] - 1), np.minimum(y0 + 1, img.shape[0] - 1)
        fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
        f = img.reshape(img.shape[0], img.shape[1], -1).astype(np.float64)
        top = f[y0, x0] + fx * (f[y0, x1] - f[y0, x0])
        bot = f[y1, x0] + fx * (f[y1, x1] - f[y1, x0])
        want = np.rint(top + fy * (bot - top)).astype(np.uint8).reshape(got.shape)
        # the rounding of values within 1e-9 of .5 may differ: at most 1 grey level
        assert np.abs(got.astype(int) - want).max() <= 1
        assert np.mean(got != want) < 1e-3
        cv = cv2.warpAffine(img, m, (41, 29), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(got.astype(int) - cv).max() <= 1  # cv2: 1/32-pixel fixed point


def mtfl_rows(limit):
    path = os.path.join(DATA, "new_testing.txt")
    if not os.path.isfile(path):
        pytest.skip(f"MTFL data not found at {DATA} (set DEEPID2_DATA)")
    from deepid2_core.training.mtfl import read_mtfl
    return read_mtfl(DATA, "new_testing.txt")[:limit]


def test_cpp_is_sub_pixel_close_to_the_old_cv2_path_on_mtfl(monkeypatch):
    """The old path: cv2.warpAffine crops, the Python forward and cascade. The C++ warp
    differs from cv2's by at most a grey level; through the three levels the points move
    by a few thousandths of a pixel typically (on 300 images: median 0.004 px, largest
    0.14 px), never half a pixel."""
    rows = mtfl_rows(120)
    rng = np.random.default_rng()
    model = FL.load_landmark_model()
    old = FL.load_landmark_model()
    old.path = None
    monkeypatch.setattr(FL, "warp", lambda g, m, s: cv2.warpAffine(
        g, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    diffs = []
    for rel, pts in rows:
        gray = cv2.imread(os.path.join(DATA, rel), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            continue
        # a box about the annotated points, jittered, as a detector might give
        lo, hi = pts.min(0), pts.max(0)
        size = 2.2 * max(hi - lo) * rng.uniform(0.9, 1.1)
        centre = (lo + hi) / 2 + rng.uniform(-0.05, 0.05, 2) * size
        box = [centre[0] - size / 2, centre[1] - 0.4 * size, size, size]
        diffs.append(np.abs(FL.predict_landmarks(model, gray, [box])
                            - FL.predict_landmarks(old, gray, [box])).max())
    diffs = np.asarray(diffs)
    assert len(diffs) > 100
    assert np.median(diffs) < 0.02 and diffs.max() < 0.5, (np.median(diffs), diffs.max())


def test_models_predict_concurrently():
    rng = np.random.default_rng()
    work = []
    for _ in range(8):
        gray = random_image(rng)
        work.append((gray, np.stack([random_box(rng, gray.shape) for _ in range(3)])))
    want = [_cpu.landmarks_predict(SHIPPED, g, b) for g, b in work]
    got = [None] * len(work)

    def run(i):
        for _ in range(3):
            got[i] = _cpu.landmarks_predict(SHIPPED, *work[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# -- errors -------------------------------------------------------------------------------
def shipped_bytes():
    with open(SHIPPED, "rb") as f:
        return f.read()


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return os.fspath(p)


def predict_file(path):
    gray = np.zeros((40, 40), np.uint8)
    return _cpu.landmarks_predict(path, gray, np.array([[5.0, 5, 30, 30]]))


def test_damaged_files_give_value_errors(tmp_path):
    data = shipped_bytes()
    rng = np.random.default_rng()
    with pytest.raises(ValueError, match="not found"):
        predict_file(os.fspath(tmp_path / "missing.safetensors"))
    for n in sorted(rng.integers(0, len(data), 6)) + [0, 7, 8, 100]:
        with pytest.raises(ValueError):
            predict_file(write(tmp_path, f"cut{n}.safetensors", data[:n]))
    # the data section is covered by the file's sha256
    pos = len(data) - int(rng.integers(1, 100000))
    bad = bytearray(data)
    bad[pos] ^= 0xFF
    with pytest.raises(ValueError, match="sha256"):
        predict_file(write(tmp_path, "flip.safetensors", bytes(bad)))
    # random bytes in the header: an error or (a change that keeps it valid) points, no crash
    header = int.from_bytes(data[:8], "little") + 8
    for i in range(60):
        bad = bytearray(data)
        for pos in rng.integers(8, header, int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        try:
            out = predict_file(write(tmp_path, f"h{i}.safetensors", bytes(bad)))
            assert out.shape == (1, 5, 2)
        except ValueError:
            pass


def resave(tmp_path, tensors, meta, name="m.safetensors"):
    p = tmp_path / name
    safetensors.save(p, tensors, meta)
    return os.fspath(p)


@pytest.mark.parametrize("change, match", [
    (lambda t, m: m.update(format="deepid2-verifier/1"), "format"),
    (lambda t, m: m.pop("net"), "\"net\" is missing"),
    (lambda t, m: m.update(net="{not json"), "not valid JSON"),
    (lambda t, m: m.update(net=json.dumps({"size": -3})), "size"),
    (lambda t, m: m.update(net=json.dumps({"size": 12})), "too small"),
    (lambda t, m: m.update(net=json.dumps({"size": 39, "colour": 1})), "unknown key"),
    (lambda t, m: m.update(net=json.dumps({"box_scale": 0})), "box_scale"),
    (lambda t, m: m.update(net=json.dumps({"hidden": 119})), "shape"),
    (lambda t, m: t.pop("conv3.w"), "conv3.w\" is missing"),
    (lambda t, m: t.update({"conv1.b": t["conv1.b"].astype(np.float64)}), "dtype"),
    (lambda t, m: t.update({"fc.b": np.full(120, np.inf, np.float32)}), "non-finite"),
    (lambda t, m: t.update({"extra": np.zeros(3, np.float32)}), "unexpected tensor"),
    (lambda t, m: t.pop("level3/nose/0/fc.w"), "missing"),
    (lambda t, m: m.pop("cascade"), "unexpected tensor"),
    (lambda t, m: m.update(cascade=json.dumps({"format": "x", "levels": []})), "format"),
    (lambda t, m: m.update(cascade=m["cascade"].replace('"size": 15', '"size": 9')),
     "too small"),
    (lambda t, m: m.update(cascade=m["cascade"].replace('[1.25, 1.45]', '[1.25, -1]')),
     "patches"),
    (lambda t, m: m.update(cascade=m["cascade"].replace('"level": 3', '"level": 2')), "twice"),
    (lambda t, m: m.update(cascade=m["cascade"].replace('"rotate_frame": true', '"rotate_frame": 1', 1)),
     "rotate_frame"),
])
def test_bad_fields_give_value_errors_naming_them(tmp_path, change, match):
    tensors, meta = safetensors.load(SHIPPED)
    change(tensors, meta)
    with pytest.raises(ValueError, match=match):
        predict_file(resave(tmp_path, tensors, meta))


def test_a_level1_file_runs_level_1_whatever_levels_asks(tmp_path):
    tensors, meta = safetensors.load(SHIPPED)
    meta.pop("cascade")
    path = resave(tmp_path, {k: v for k, v in tensors.items() if not k.startswith("level")},
                  meta)
    rng = np.random.default_rng()
    gray = random_image(rng)
    box = random_box(rng, gray.shape)[None]
    want = _cpu.landmarks_predict(SHIPPED, gray, box, 1)
    for levels in (-1, 1, 3):
        np.testing.assert_array_equal(_cpu.landmarks_predict(path, gray, box, levels), want)
    assert not np.allclose(_cpu.landmarks_predict(SHIPPED, gray, box), want, atol=1e-3)


def test_bad_arguments():
    rng = np.random.default_rng()
    gray = random_image(rng, 50, 60)
    box = np.array([[5.0, 5, 30, 30]])
    ok = _cpu.landmarks_predict(SHIPPED, gray, box)
    assert ok.shape == (1, 5, 2) and ok.dtype == np.float64
    assert _cpu.landmarks_predict(SHIPPED, gray, np.zeros((0, 4))).shape == (0, 5, 2)
    with pytest.raises(TypeError, match="gray"):
        _cpu.landmarks_predict(SHIPPED, gray.astype(np.float32), box)
    with pytest.raises(TypeError, match="boxes"):
        _cpu.landmarks_predict(SHIPPED, gray, box.astype(np.float32))
    with pytest.raises(TypeError, match="boxes"):
        _cpu.landmarks_predict(SHIPPED, gray, [[5.0, 5, 30, 30]])
    with pytest.raises(ValueError, match="H x W"):
        _cpu.landmarks_predict(SHIPPED, np.zeros((50, 60, 3), np.uint8), box)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.landmarks_predict(SHIPPED, gray[:, ::2], box)
    with pytest.raises(ValueError, match="empty"):
        _cpu.landmarks_predict(SHIPPED, np.zeros((0, 5), np.uint8), box)
    with pytest.raises(ValueError, match="n x 4"):
        _cpu.landmarks_predict(SHIPPED, gray, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="levels"):
        _cpu.landmarks_predict(SHIPPED, gray, box, 0)
    h, w = gray.shape
    for bad, match in [([np.nan, 5, 30, 30], "finite"), ([5, 5, np.inf, 30], "finite"),
                       ([5, 5, 0, 30], "positive"), ([5, 5, 30, -2], "positive"),
                       ([w, 5, 30, 30], "outside"), ([-40, 5, 30, 30], "outside"),
                       ([-1e300, 5, 1e308, 30], "too large or too small")]:
        with pytest.raises(ValueError, match=match):
            _cpu.landmarks_predict(SHIPPED, gray, np.array([bad], np.float64))
    # a degenerate but valid box: points, finite
    assert np.isfinite(_cpu.landmarks_predict(SHIPPED, gray, np.array([[5, 5, 1e-300, 30.0]]))).all()
    m = np.array([[1.0, 0, 0], [0, 1, 0]])
    assert _cpu.warp_affine(gray, m, 60, 50).tobytes() == gray.tobytes()
    with pytest.raises(ValueError, match="singular"):
        _cpu.warp_affine(gray, np.zeros((2, 3)), 10, 10)
    with pytest.raises(ValueError, match="finite"):
        _cpu.warp_affine(gray, np.array([[1.0, 0, np.nan], [0, 1, 0]]), 10, 10)
    with pytest.raises(ValueError, match="2 x 3"):
        _cpu.warp_affine(gray, np.eye(3), 10, 10)
    with pytest.raises(ValueError, match="width"):
        _cpu.warp_affine(gray, m, 0, 10)
    with pytest.raises(TypeError, match="m must have dtype"):
        _cpu.warp_affine(gray, m.astype(np.float32), 10, 10)
    with pytest.raises(ValueError, match="H x W"):
        _cpu.warp_affine(np.zeros((4, 4, 2), np.uint8), m, 10, 10)
