"""The 5-point landmark ConvNet (deepid2_core.landmarks): gradients of the whole
network in float64 through the oracle, the cpu backend against the oracle, learning
on a synthetic task, flip augmentation, prediction API and errors, checkpoints and
resume, and (with the MTFL data present) the shipped model's accuracy."""

import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import oracle
import oracle_backend
from oracle import assert_close, check_param_gradients
from deepid2_core import landmarks as L
from deepid2_core import safetensors

DATA = os.path.join(os.environ.get("DEEPID2_DATA", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data")), "mtfl80")
ORACLE = SimpleNamespace(**{k: getattr(oracle_backend, k) for k in dir(oracle_backend)
                            if not k.startswith("_")}, regression_loss=oracle.regression_loss)
TINY = L.LandmarkNetConfig(size=31, hidden=12)  # 28 -> 14 -> 12 -> 6 -> 4 -> 2 -> 1x1 conv4


def loss_and_grads(be, params, x, target):
    net = L.LandmarkNet(TINY, be)
    acts = net.forward(params, x)
    loss, dout = be.regression_loss(acts["out"], target)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, dout, grads)
    return float(loss), grads, acts


def tiny_inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in L.init_params(TINY, seed).items()}
    for k in params:  # non-zero biases, so they matter
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((3, 1, 31, 31)).astype(dtype)
    target = rng.random((3, 10)).astype(dtype)
    return params, x, target


def test_shapes_are_those_of_f1():
    s = L.conv_shapes(L.LandmarkNetConfig())
    assert [c.out_hw for c in s] == [(36, 36), (16, 16), (6, 6), (2, 2)]
    assert [c.region for c in s] == [(36, 36), (16, 16), (3, 3), (1, 1)]
    shapes = L.param_shapes(L.LandmarkNetConfig())
    assert shapes["conv3.w"] == (2, 2, 60, 40, 3, 3) and shapes["conv4.w"] == (2, 2, 80, 60, 2, 2)
    assert shapes["fc.w"] == (320, 120) and shapes["out.w"] == (120, 10)
    with pytest.raises(ValueError, match="too small"):
        L.LandmarkNetConfig(size=12)


def test_whole_network_finite_differences_in_float64():
    params, x, target = tiny_inputs(1, np.float64)
    _, grads, acts = loss_and_grads(ORACLE, params, x, target)
    assert all((acts[k] > 0).any() for k in ("conv1", "conv2", "conv3", "conv4", "fc"))
    check_param_gradients(lambda: loss_and_grads(ORACLE, params, x, target)[0], params, grads)


def test_cpu_backend_matches_the_oracle_on_the_whole_network(be):
    params, x, target = tiny_inputs(2, np.float32)
    loss, grads, acts = loss_and_grads(be, params, x, target)
    rloss, rgrads, racts = loss_and_grads(ORACLE, params, x, target)
    assert abs(loss - rloss) <= 1e-5 * abs(rloss) + 1e-6
    assert_close(acts["out"], racts["out"], rtol=1e-4, atol=1e-5, name="out")
    for k in sorted(grads):
        scale = np.abs(rgrads[k]).max()
        assert_close(grads[k], rgrads[k], rtol=1e-3, atol=1e-4 * scale + 1e-8, name=k)


def test_flip_swaps_left_and_right_points():
    t = np.array([[0.3, 0.4], [0.7, 0.41], [0.5, 0.6], [0.35, 0.8], [0.66, 0.79]])
    f = L.flip_points(t)
    assert np.allclose(f[0], [1 - 0.7, 0.41]) and np.allclose(f[1], [1 - 0.3, 0.4])
    assert np.allclose(f[2], [0.5, 0.6])
    assert np.allclose(f[3], [1 - 0.66, 0.79]) and np.allclose(f[4], [1 - 0.35, 0.8])
    assert f[0, 0] < f[1, 0] and f[3, 0] < f[4, 0]  # still left of right, as seen
    assert np.allclose(L.flip_points(f), t)


def synthetic_cache(n=6, size=39, seed=0, jitter=3):
    """A LandmarkCache of drawn faces: dark eyes, nose and mouth corners on grey."""
    rng = np.random.default_rng(seed)
    c = L.CONTEXT
    ctx = np.full((n, c, c), 120, np.uint8)
    pts = np.empty((n, 5, 2), np.float32)
    for i in range(n):
        base = np.array([[30, 32], [50, 32], [40, 42], [33, 50], [47, 50]], float)
        pts[i] = base + rng.uniform(-jitter, jitter, (5, 2))
        for k, (px, py) in enumerate(pts[i]):
            cv2.circle(ctx[i], (int(round(px)), int(round(py))), 2 + (k == 0), 20 + 40 * k, -1)
    box = [20.0, 20.0, 40.0, 40.0]
    crops, inv = [], []
    for i in range(n):
        m = L.crop_matrix(box, size, 1.2)
        crops.append(L.warp(ctx[i], m, size))
        inv.append(L.invert_affine(m))
    tensors = dict(ctx=ctx, ctx_points=pts, ctx_boxes=np.tile(np.float32([box, box]), (n, 1, 1)),
                   found=np.ones(n, np.uint8), box_ok=np.ones(n, np.uint8), crop=np.stack(crops),
                   crop_inv=np.stack(inv),
                   points=pts.astype(np.float64))
    meta = dict(key="synthetic", paths=json.dumps([f"{i}.png" for i in range(n)]), skipped="[]",
                detector="haar", list_file="synthetic.txt", dropped_bad="0")
    return L.LandmarkCache(tensors, meta)


def test_loss_falls_on_a_synthetic_regression_task(tmp_path, be):
    """Drawn faces whose points move: the real trainer learns where they are."""
    cache = synthetic_cache(96, jitter=6)
    state = trainer(cache, tmp_path, be, epochs=30, batch=16, lr=0.01, val_fraction=0.25).run()
    h = state["history"]  # about 6.0 -> 1.8 and 0.20 -> 0.10 (OpenCV 4.14 and 5.0)
    assert np.mean([r["loss"] for r in h[-3:]]) < 0.5 * h[0]["loss"], [r["loss"] for r in h]
    assert h[-1]["val_nme"] < 0.7 * h[0]["val_nme"], [r["val_nme"] for r in h]


def test_flipped_batches_mirror_the_crop_and_swap_the_labels():
    cache = synthetic_cache(1)
    cfg = L.LandmarkTrainConfig(flip=True, shift=0.0, scale=0.0, rotate=0.0, fallback_share=0.0)
    net_cfg = L.LandmarkNetConfig()
    got = {}
    for seed in range(40):  # make_batch draws the flips first: find one draw of each
        flipped = bool(np.random.default_rng(seed).random(1)[0] < 0.5)
        got.setdefault(flipped, L.make_batch(cache, np.array([0]),
                                             np.random.default_rng(seed), cfg, net_cfg))
    (xp, tp), (xf, tf) = got[False], got[True]
    assert np.allclose(xf[0, 0], xp[0, 0][:, ::-1], atol=1e-4)  # the mirror image
    tp, tf = tp.reshape(5, 2), tf.reshape(5, 2)
    assert np.allclose(tf, L.flip_points(tp), atol=1e-6)
    for t in (tp, tf):  # "left as seen" stays left of "right as seen"
        assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]

    def value_at(x, t, k):
        u = np.clip(np.round(t[k] * 39 - 0.5).astype(int), 0, 38)
        return x[0, 0, u[1], u[0]]

    # the person's eye drawn darkest (image-left, label 0, unflipped) is label 1 once mirrored
    assert value_at(xp, tp, 0) < value_at(xp, tp, 1)
    assert value_at(xf, tf, 1) < value_at(xf, tf, 0)


def test_crop_matrix_round_trip_and_box_centre():
    m = L.crop_matrix((10, 20, 40, 40), 39, 1.0)
    assert np.allclose(L.apply_affine(m, [[29.5, 39.5]]), [[19.0, 19.0]])  # centre to centre
    inv = L.invert_affine(m)
    p = np.array([[13.0, 27.0], [44.0, 51.0]])
    assert np.allclose(L.apply_affine(inv, L.apply_affine(m, p)), p)
    mf = L.crop_matrix((10, 20, 40, 40), 39, 1.0, flip=True)
    assert np.allclose(L.apply_affine(mf, p)[:, 0], 38 - L.apply_affine(m, p)[:, 0])


def random_model(seed=0, out_w=True):
    cfg = L.LandmarkNetConfig()
    params = L.init_params(cfg, seed, [0.5] * 10)
    if not out_w:
        params["out.w"][:] = 0  # every point at the crop's centre
    return L.LandmarkModel(params, cfg, {"detector": "central"})


def test_predict_landmarks_shape_and_box_geometry(be):
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    centre = L.predict_landmarks(random_model(out_w=False), img, [[10, 5, 40, 40],
                                                                  [30.5, 12, 20, 24]])
    assert centre.shape == (2, 5, 2) and centre.dtype == np.float32
    # t = 0.5 is the box centre: pixels 10 .. 49 and 5 .. 44 have theirs at 29.5, 24.5
    assert np.allclose(centre[0], [[29.5, 24.5]] * 5, atol=1e-4)
    assert np.allclose(centre[1], [[40.0, 23.5]] * 5, atol=1e-4)
    model = random_model()
    out = L.predict_landmarks(model, img, [[10, 5, 40, 40], [30.5, 12, 20, 24]])
    assert out.shape == (2, 5, 2) and np.all(np.isfinite(out))
    assert L.predict_landmarks(model, img[:, :, 0], np.zeros((0, 4))).shape == (0, 5, 2)
    assert L.predict_landmarks(model, img, []).shape == (0, 5, 2)
    assert L.predict_landmarks(model, img, (10, 5, 40, 40)).shape == (1, 5, 2)
    # grey, BGR and BGRA give the same answer
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    a = L.predict_landmarks(model, g, [[10, 5, 40, 40]])
    b = L.predict_landmarks(model, img, [[10, 5, 40, 40]])
    c = L.predict_landmarks(model, cv2.cvtColor(img, cv2.COLOR_BGR2BGRA), [[10, 5, 40, 40]])
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_predict_landmarks_errors():
    model = random_model()
    img = np.zeros((50, 50), np.uint8)
    with pytest.raises(TypeError, match="LandmarkModel"):
        L.predict_landmarks("model", img, [[0, 0, 10, 10]])
    with pytest.raises(TypeError, match="numpy array"):
        L.predict_landmarks(model, [[0, 1]], [[0, 0, 10, 10]])
    with pytest.raises(TypeError, match="uint8"):
        L.predict_landmarks(model, img.astype(np.float32), [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="H x W"):
        L.predict_landmarks(model, np.zeros((5, 5, 2), np.uint8), [[0, 0, 3, 3]])
    with pytest.raises(ValueError, match="empty"):
        L.predict_landmarks(model, np.zeros((0, 5), np.uint8), [[0, 0, 3, 3]])
    with pytest.raises(ValueError, match="n x 4"):
        L.predict_landmarks(model, img, [[0, 0, 10]])
    with pytest.raises(ValueError, match="finite"):
        L.predict_landmarks(model, img, [[0, np.nan, 10, 10]])
    with pytest.raises(ValueError, match="non-positive"):
        L.predict_landmarks(model, img, [[0, 0, 10, 0]])
    with pytest.raises(ValueError, match="outside"):
        L.predict_landmarks(model, img, [[60, 0, 10, 10]])
    with pytest.raises(TypeError, match="numbers"):
        L.predict_landmarks(model, img, [["a", 0, 10, 10]])


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        L.load_landmark_model(tmp_path / "missing.safetensors")
    safetensors.save(tmp_path / "other.safetensors", {"a": np.zeros(2, np.float32)},
                     {"format": "something-else"})
    with pytest.raises(ValueError, match="not a deepid2 landmark model"):
        L.load_landmark_model(tmp_path / "other.safetensors")


def test_nme_and_failure_rate():
    gt = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], float)
    pred = gt.copy()
    pred[0, 2, 0] += 4  # nose off by 4 px, inter-ocular 20 px: 20%
    e = L.nme(pred, gt)
    assert np.allclose(e, [[0, 0, 0.2, 0, 0]])
    s = L.summarise(e)
    assert s["nme"] == pytest.approx(0.04) and s["per_point"]["nose"] == pytest.approx(0.2)
    assert s["failure_rate"] == 0.0 and s["point_failure_rate"]["nose"] == 1.0


def tiny_mtfl(root, n=12):
    """An MTFL-style folder: drawn faces, a list file, one net_7876 line ~28 px too high."""
    rng = np.random.default_rng(4)
    lines = []
    for i in range(n):
        img = np.full((80, 80, 3), 110, np.uint8)
        pts = np.array([[30, 34], [50, 34], [40, 44], [33, 54], [47, 54]], float)
        pts += rng.uniform(-4, 4, (5, 2))
        for k, (px, py) in enumerate(pts):
            cv2.circle(img, (int(round(px)), int(round(py))), 2, (30 * k,) * 3, -1)
        sub = "net_7876" if i == 0 else "lfw_5590"
        os.makedirs(root / sub, exist_ok=True)
        cv2.imwrite(str(root / sub / f"f{i}.png"), img)
        if i == 0:
            pts[:, 1] -= 28  # as MTFL80's broken net_7876 lines
        lines.append(f"{sub}/f{i}.png " + " ".join(f"{v:.2f}" for v in
                                                  list(pts[:, 0]) + list(pts[:, 1])))
    for name in (L.TRAIN_LIST, L.TEST_LIST):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_cache_of_an_mtfl_folder(tmp_path):
    root = tiny_mtfl(tmp_path / "mtfl")
    cache = L.build_cache(root, L.TRAIN_LIST, tmp_path / "cache", L.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: None)
    assert len(cache) == 11 and cache.meta["dropped_bad"] == "1"
    assert cache.ctx.dtype == np.uint8 and cache.ctx.shape == (11, L.CONTEXT, L.CONTEXT)
    assert cache.crop.shape == (11, 39, 39) and not cache.found.any() and cache.box_ok.all()
    files = os.listdir(tmp_path / "cache")
    again = L.build_cache(root, L.TRAIN_LIST, tmp_path / "cache", L.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: pytest.fail("rebuilt"))
    assert os.listdir(tmp_path / "cache") == files and np.array_equal(again.ctx, cache.ctx)
    # the crop's own points map back onto the image's
    m = L.invert_affine(cache.crop_inv[3])
    assert np.allclose(L.apply_affine(cache.crop_inv[3], L.apply_affine(m, cache.points[3])),
                       cache.points[3])
    with pytest.raises(ValueError, match="not found"):
        L.read_mtfl(tmp_path, L.TRAIN_LIST)


def test_train_landmarks_main_writes_a_model_with_its_command(tmp_path, be):
    root = tiny_mtfl(tmp_path / "mtfl")
    out = tmp_path / "run"
    s = L.train_landmarks_main(root, out, epochs=2, seed=1, batch=4, detector="central",
                               progress=False, log=lambda *a: None,
                               command="deepid2 train-landmarks --data D --out O")
    for name in (L.FINAL, L.BEST, L.CHECKPOINT, L.LOG, L.PLOT, L.EVAL):
        assert (out / name).stat().st_size > 0
    model = L.load_landmark_model(out / L.FINAL)
    assert model.meta["command"] == "deepid2 train-landmarks --data D --out O"
    assert json.loads(model.meta["train"])["detector"] == "central"
    assert json.loads(model.meta["test"])["n"] == 12 and s["test"]["n"] == 12
    with pytest.raises(ValueError, match="detector"):
        L.train_landmarks_main(root, out, epochs=1, detector="nope", progress=False,
                               log=lambda *a: None)


def trainer(cache, run_dir, be, **kw):
    base = dict(epochs=2, batch=4, lr=0.01, seed=3, val_fraction=0.34, detector="haar")
    base.update(kw)
    return L.LandmarkTrainer(cache, run_dir, L.LandmarkTrainConfig(**base), be,
                             log=lambda *a: None, progress=False)


def test_checkpoint_round_trip_and_exact_resume(tmp_path, be):
    cache = synthetic_cache(12)
    whole = trainer(cache, tmp_path / "whole", be, epochs=3).run()
    for name in (L.CHECKPOINT, L.BEST, L.LOG, L.PLOT):
        assert (tmp_path / "whole" / name).stat().st_size > 0

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(cache, tmp_path / "cut", be, epochs=3).run(on_epoch_end=stop_after_two)
    resumed = trainer(cache, tmp_path / "cut", be, epochs=3).run(resume=True)
    assert (tmp_path / "whole" / L.CHECKPOINT).read_bytes() == \
        (tmp_path / "cut" / L.CHECKPOINT).read_bytes()
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    # the saved model loads and predicts exactly as the trained parameters do
    model = L.load_landmark_model(tmp_path / "whole" / L.BEST)
    assert model.meta["format"] == L.MODEL_FORMAT and model.cfg == L.LandmarkNetConfig()
    ck = L.load_landmark_model(tmp_path / "whole" / L.CHECKPOINT)
    for k, v in L.LandmarkTrainer.model_params(whole).items():
        assert np.array_equal(ck.params[k], v)
    x = L.standardise(cache.crop[:3])
    assert np.array_equal(ck.predict_normalised(x), L.load_landmark_model(
        tmp_path / "whole" / L.BEST).predict_normalised(x)) or whole["best_epoch"] != 3
    with pytest.raises(ValueError, match="different config"):
        trainer(cache, tmp_path / "whole", be, epochs=3, lr=0.02).run(resume=True)


# -- with the MTFL data ----------------------------------------------------------------------
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, L.TEST_LIST)),
                                reason=f"MTFL data not found at {DATA} (set DEEPID2_DATA)")


@needs_data
def test_shipped_model_on_the_first_200_test_images_with_haar_boxes():
    model = L.load_landmark_model()
    res = L.evaluate(model, DATA, L.TEST_LIST, detector="haar", limit=200)
    assert res["n"] == 200 and res["detector"] == "haar"
    assert res["nme"] < 0.10, res["per_point"]


@needs_data
def test_shipped_model_on_the_first_200_test_images_with_central_boxes():
    """Where OpenCV has no Haar cascade, every image gets the central box: the model was
    trained on those too, with a wider error (AFLW's faces fill more than the box)."""
    model = L.load_landmark_model()
    meta = model.meta
    assert meta["format"] == L.MODEL_FORMAT and "command" in meta and "train" in meta
    assert json.loads(meta["test"])["n"] == 2995  # the whole test list, at training time
    res = L.evaluate(model, DATA, L.TEST_LIST, detector="central", limit=200)
    assert res["n"] == 200 and res["haar_found"] is None
    assert res["nme"] < 0.15, res["per_point"]


@needs_data
def test_mtfl_reader_and_the_misannotated_lines():
    rows = L.read_mtfl(DATA, L.TRAIN_LIST)
    assert len(rows) == 10000 and rows[0][1].shape == (5, 2)
    bad = [r for r, p in rows if L.known_bad_annotation(r, p, (80, 80))]
    assert len(bad) == 2347 and all(r.startswith("net_7876/") for r in bad)


def test_flip_average_is_the_mean_of_the_crop_and_its_mirror(be):
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (3, 39, 39), dtype=np.uint8)
    inv = np.tile(L.invert_affine(L.crop_matrix((10, 5, 40, 40), 39, 1.2)), (3, 1, 1))
    model = random_model(3)
    assert model.flip_average          # the default
    plain = L.LandmarkModel(model.params, model.cfg, flip_average=False)
    t = plain.predict_normalised(L.standardise(crops))
    tf = plain.predict_normalised(L.standardise(np.ascontiguousarray(crops[:, :, ::-1])))
    want = 0.5 * (t + L.flip_points(tf)) * 39 - 0.5
    want = np.einsum("nij,npj->npi", inv[:, :, :2], want) + inv[:, None, :, 2]
    np.testing.assert_allclose(model.predict_crops(crops, inv), want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain.predict_crops(crops, inv), want, atol=1e-3)


def test_augmented_target_statistics(tmp_path):
    with pytest.raises(ValueError, match="target_stats"):
        L.LandmarkTrainConfig(target_stats="batch")
    assert L.LandmarkTrainConfig().target_stats == "crops"  # the shipped model's
