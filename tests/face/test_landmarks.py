"""Landmark prediction (face.landmarks): flipped points, the crop matrix, the
prediction API and its errors, loading model files with and without a cascade."""

import json

import cv2
import numpy as np
import pytest

from deepid2_core.nets import landmark as NL
from deepid2_core.face import landmarks as FL
from deepid2_core import safetensors
from deepid2_core.nets import refine as NR
from deepid2_core.face import landmark_cascade as FC
from deepid2_core.training import cascade as TC


def test_flip_swaps_left_and_right_points():
    t = np.array([[0.3, 0.4], [0.7, 0.41], [0.5, 0.6], [0.35, 0.8], [0.66, 0.79]])
    f = FL.flip_points(t)
    assert np.allclose(f[0], [1 - 0.7, 0.41]) and np.allclose(f[1], [1 - 0.3, 0.4])
    assert np.allclose(f[2], [0.5, 0.6])
    assert np.allclose(f[3], [1 - 0.66, 0.79]) and np.allclose(f[4], [1 - 0.35, 0.8])
    assert f[0, 0] < f[1, 0] and f[3, 0] < f[4, 0]  # still left of right, as seen
    assert np.allclose(FL.flip_points(f), t)


def test_crop_matrix_round_trip_and_box_centre():
    m = FL.crop_matrix((10, 20, 40, 40), 39, 1.0)
    assert np.allclose(FL.apply_affine(m, [[29.5, 39.5]]), [[19.0, 19.0]])  # centre to centre
    inv = FL.invert_affine(m)
    p = np.array([[13.0, 27.0], [44.0, 51.0]])
    assert np.allclose(FL.apply_affine(inv, FL.apply_affine(m, p)), p)
    mf = FL.crop_matrix((10, 20, 40, 40), 39, 1.0, flip=True)
    assert np.allclose(FL.apply_affine(mf, p)[:, 0], 38 - FL.apply_affine(m, p)[:, 0])


def random_model(seed=0, out_w=True):
    cfg = NL.LandmarkNetConfig()
    params = NL.init_params(cfg, seed, [0.5] * 10)
    if not out_w:
        params["out.w"][:] = 0  # every point at the crop's centre
    return FL.LandmarkModel(params, cfg, {"detector": "central"})


def test_predict_landmarks_shape_and_box_geometry(be):
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    centre = FL.predict_landmarks(random_model(out_w=False), img, [[10, 5, 40, 40],
                                                                  [30.5, 12, 20, 24]])
    assert centre.shape == (2, 5, 2) and centre.dtype == np.float32
    # t = 0.5 is the box centre: pixels 10 .. 49 and 5 .. 44 have theirs at 29.5, 24.5
    assert np.allclose(centre[0], [[29.5, 24.5]] * 5, atol=1e-4)
    assert np.allclose(centre[1], [[40.0, 23.5]] * 5, atol=1e-4)
    model = random_model()
    out = FL.predict_landmarks(model, img, [[10, 5, 40, 40], [30.5, 12, 20, 24]])
    assert out.shape == (2, 5, 2) and np.all(np.isfinite(out))
    assert FL.predict_landmarks(model, img[:, :, 0], np.zeros((0, 4))).shape == (0, 5, 2)
    assert FL.predict_landmarks(model, img, []).shape == (0, 5, 2)
    assert FL.predict_landmarks(model, img, (10, 5, 40, 40)).shape == (1, 5, 2)
    # grey, BGR and BGRA give the same answer
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    a = FL.predict_landmarks(model, g, [[10, 5, 40, 40]])
    b = FL.predict_landmarks(model, img, [[10, 5, 40, 40]])
    c = FL.predict_landmarks(model, cv2.cvtColor(img, cv2.COLOR_BGR2BGRA), [[10, 5, 40, 40]])
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_predict_landmarks_errors():
    model = random_model()
    img = np.zeros((50, 50), np.uint8)
    with pytest.raises(TypeError, match="LandmarkModel"):
        FL.predict_landmarks("model", img, [[0, 0, 10, 10]])
    with pytest.raises(TypeError, match="numpy array"):
        FL.predict_landmarks(model, [[0, 1]], [[0, 0, 10, 10]])
    with pytest.raises(TypeError, match="uint8"):
        FL.predict_landmarks(model, img.astype(np.float32), [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="H x W"):
        FL.predict_landmarks(model, np.zeros((5, 5, 2), np.uint8), [[0, 0, 3, 3]])
    with pytest.raises(ValueError, match="empty"):
        FL.predict_landmarks(model, np.zeros((0, 5), np.uint8), [[0, 0, 3, 3]])
    with pytest.raises(ValueError, match="n x 4"):
        FL.predict_landmarks(model, img, [[0, 0, 10]])
    with pytest.raises(ValueError, match="finite"):
        FL.predict_landmarks(model, img, [[0, np.nan, 10, 10]])
    with pytest.raises(ValueError, match="non-positive"):
        FL.predict_landmarks(model, img, [[0, 0, 10, 0]])
    with pytest.raises(ValueError, match="outside"):
        FL.predict_landmarks(model, img, [[60, 0, 10, 10]])
    with pytest.raises(TypeError, match="numbers"):
        FL.predict_landmarks(model, img, [["a", 0, 10, 10]])


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        FL.load_landmark_model(tmp_path / "missing.safetensors")
    safetensors.save(tmp_path / "other.safetensors", {"a": np.zeros(2, np.float32)},
                     {"format": "something-else"})
    with pytest.raises(ValueError, match="not a deepid2 landmark model"):
        FL.load_landmark_model(tmp_path / "other.safetensors")


def test_flip_average_is_the_mean_of_the_crop_and_its_mirror(be):
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (3, 39, 39), dtype=np.uint8)
    inv = np.tile(FL.invert_affine(FL.crop_matrix((10, 5, 40, 40), 39, 1.2)), (3, 1, 1))
    model = random_model(3)
    assert model.flip_average          # the default
    plain = FL.LandmarkModel(model.params, model.cfg, flip_average=False)
    t = plain.predict_normalised(FL.standardise(crops))
    tf = plain.predict_normalised(FL.standardise(np.ascontiguousarray(crops[:, :, ::-1])))
    want = 0.5 * (t + FL.flip_points(tf)) * 39 - 0.5
    want = np.einsum("nij,npj->npi", inv[:, :, :2], want) + inv[:, None, :, 2]
    np.testing.assert_allclose(model.predict_crops(crops, inv), want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain.predict_crops(crops, inv), want, atol=1e-3)


def cascade_model(be, seed=0, levels=(2,)):
    rng = np.random.default_rng(seed)
    lvs = []
    for number in levels:
        lc = NR.RefineLevelConfig(patches=(1.2, 1.5))
        params = {(p, j): NR.init_refine_params(lc, rng) for p in range(5) for j in range(2)}
        lvs.append(FC.CascadeLevel(number, lc, params, be))
    base = random_model(seed)
    return FL.LandmarkModel(base.params, base.cfg, {"detector": "haar"}, be,
                           cascade=FC.LandmarkCascade(lvs))


def test_model_file_with_a_cascade_round_trips(tmp_path, be):
    model = cascade_model(be, levels=(2, 3))
    path = tmp_path / "m.safetensors"
    FL.save_model(path, model.params, model.cfg, {"detector": "haar"}, cascade=model.cascade)
    img = np.random.default_rng(2).integers(0, 255, (60, 80), dtype=np.uint8)
    boxes = [[10, 5, 40, 40], [30, 12, 24, 24]]
    got = FL.load_landmark_model(path)
    assert [lv.number for lv in got.cascade.levels] == [2, 3]
    want = FL.predict_landmarks(model, img, boxes)
    # a loaded file runs in C++, which standardises in double (Python: float32): the
    # same points to float rounding; through Python's forward, the same bits
    np.testing.assert_allclose(FL.predict_landmarks(got, img, boxes), want, atol=1e-3)
    got.path = None
    assert np.array_equal(FL.predict_landmarks(got, img, boxes), want)
    one = FL.load_landmark_model(path, levels=1)
    assert one.cascade is None
    plain = FL.predict_landmarks(one, img, boxes)
    assert plain.shape == want.shape == (2, 5, 2) and not np.allclose(plain, want, atol=1e-3)
    # the cascade refines level 1's points: predict_landmarks = refine(level 1)
    ref = model.cascade.refine(img, plain.astype(np.float64))
    np.testing.assert_allclose(want, ref, atol=1e-3)
    assert len(FL.load_landmark_model(path, levels=2).cascade.levels) == 1
    assert FL.predict_landmarks(got, img, np.zeros((0, 4))).shape == (0, 5, 2)
    with pytest.raises(ValueError, match="levels"):
        FL.load_landmark_model(path, levels=0)


def test_cascade_file_errors(tmp_path, be):
    model = cascade_model(be)
    tensors = {**model.params, **model.cascade.tensors()}
    meta = {"format": FL.MODEL_FORMAT, "net": json.dumps(model.cfg.to_dict())}
    safetensors.save(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="no cascade config"):
        FL.load_landmark_model(tmp_path / "a.safetensors")
    spec = json.loads(model.cascade.meta_fields()["cascade"])
    spec["levels"][0]["level"] = 3
    safetensors.save(tmp_path / "b.safetensors", tensors, {**meta, "cascade": json.dumps(spec)})
    with pytest.raises(ValueError, match="no nets"):
        FL.load_landmark_model(tmp_path / "b.safetensors")
    spec["levels"][0].update(level=2, hidden=61)
    safetensors.save(tmp_path / "c.safetensors", tensors, {**meta, "cascade": json.dumps(spec)})
    with pytest.raises(ValueError, match="do not fit"):
        FL.load_landmark_model(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="n x 5 x 2"):
        model.cascade.refine(np.zeros((20, 20), np.uint8), np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="finite"):
        model.cascade.refine(np.zeros((20, 20), np.uint8), np.full((1, 5, 2), np.nan))
    with pytest.raises(ValueError, match="levels"):
        TC.train_cascade_main(tmp_path, tmp_path / "o", levels=(3,), progress=False)
    with pytest.raises(ValueError, match="displace"):
        TC.RefineTrainConfig(displace=-1)
