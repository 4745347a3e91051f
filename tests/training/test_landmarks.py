"""The 5-point landmark ConvNet (nets.landmark, face.landmarks, training.landmarks):
gradients of the whole network in float64 through the oracle, the cpu backend against
the oracle, learning on a synthetic task, flip augmentation, prediction API and errors,
checkpoints and resume, and (with the MTFL data present) the shipped model's accuracy."""

import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import oracle
import oracle_backend
from oracle import assert_close, check_param_gradients
from deepid2_core.nets import landmark as NL
from deepid2_core.face import landmarks as FL
from deepid2_core.face import box as FB
from deepid2_core.training import checkpoint as TK
from deepid2_core.training import landmark_eval as TE
from deepid2_core.training import landmarks as TL
from deepid2_core.training import mtfl as TM
from deepid2_core.training.loop import Loop
from deepid2_core import safetensors

DATA = os.path.join(os.environ.get("DEEPID2_DATA", os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data")), "mtfl80")
ORACLE = SimpleNamespace(**{k: getattr(oracle_backend, k) for k in dir(oracle_backend)
                            if not k.startswith("_")}, regression_loss=oracle.regression_loss)
TINY = NL.LandmarkNetConfig(size=31, hidden=12)  # 28 -> 14 -> 12 -> 6 -> 4 -> 2 -> 1x1 conv4


def loss_and_grads(be, params, x, target):
    net = NL.LandmarkNet(TINY, be)
    acts = net.forward(params, x)
    loss, dout = be.regression_loss(acts["out"], target)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, dout, grads)
    return float(loss), grads, acts


def tiny_inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in NL.init_params(TINY, seed).items()}
    for k in params:  # non-zero biases, so they matter
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((3, 1, 31, 31)).astype(dtype)
    target = rng.random((3, 10)).astype(dtype)
    return params, x, target


def test_shapes_are_those_of_f1():
    s = NL.conv_shapes(NL.LandmarkNetConfig())
    assert [c.out_hw for c in s] == [(36, 36), (16, 16), (6, 6), (2, 2)]
    assert [c.region for c in s] == [(36, 36), (16, 16), (3, 3), (1, 1)]
    shapes = NL.param_shapes(NL.LandmarkNetConfig())
    assert shapes["conv3.w"] == (2, 2, 60, 40, 3, 3) and shapes["conv4.w"] == (2, 2, 80, 60, 2, 2)
    assert shapes["fc.w"] == (320, 120) and shapes["out.w"] == (120, 10)
    with pytest.raises(ValueError, match="too small"):
        NL.LandmarkNetConfig(size=12)


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
    f = FL.flip_points(t)
    assert np.allclose(f[0], [1 - 0.7, 0.41]) and np.allclose(f[1], [1 - 0.3, 0.4])
    assert np.allclose(f[2], [0.5, 0.6])
    assert np.allclose(f[3], [1 - 0.66, 0.79]) and np.allclose(f[4], [1 - 0.35, 0.8])
    assert f[0, 0] < f[1, 0] and f[3, 0] < f[4, 0]  # still left of right, as seen
    assert np.allclose(FL.flip_points(f), t)


def synthetic_cache(n=6, size=39, seed=0, jitter=3):
    """A LandmarkCache of drawn faces: dark eyes, nose and mouth corners on grey."""
    rng = np.random.default_rng(seed)
    c = TM.CONTEXT
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
        m = FL.crop_matrix(box, size, 1.2)
        crops.append(FL.warp(ctx[i], m, size))
        inv.append(FL.invert_affine(m))
    tensors = dict(ctx=ctx, ctx_points=pts, ctx_boxes=np.tile(np.float32([box, box]), (n, 1, 1)),
                   found=np.ones(n, np.uint8), box_ok=np.ones(n, np.uint8), crop=np.stack(crops),
                   crop_inv=np.stack(inv),
                   points=pts.astype(np.float64))
    meta = dict(key="synthetic", paths=json.dumps([f"{i}.png" for i in range(n)]), skipped="[]",
                detector="haar", list_file="synthetic.txt", dropped_bad="0")
    return TM.LandmarkCache(tensors, meta)


def test_loss_falls_on_a_synthetic_regression_task(tmp_path, be):
    """Drawn faces whose points move: the real trainer learns where they are."""
    cache = synthetic_cache(96, jitter=6)
    state = trainer(cache, tmp_path, be, epochs=30, batch=16, lr=0.01, val_fraction=0.25).run()
    h = state["history"]  # about 6.0 -> 1.8 and 0.20 -> 0.10 (OpenCV 4.14 and 5.0)
    assert np.mean([r["loss"] for r in h[-3:]]) < 0.5 * h[0]["loss"], [r["loss"] for r in h]
    assert h[-1]["val_nme"] < 0.7 * h[0]["val_nme"], [r["val_nme"] for r in h]


def test_flipped_batches_mirror_the_crop_and_swap_the_labels():
    cache = synthetic_cache(1)
    cfg = TL.LandmarkTrainConfig(flip=True, shift=0.0, scale=0.0, rotate=0.0, fallback_share=0.0)
    net_cfg = NL.LandmarkNetConfig()
    got = {}
    for seed in range(40):  # make_batch draws the flips first: find one draw of each
        flipped = bool(np.random.default_rng(seed).random(1)[0] < 0.5)
        got.setdefault(flipped, TL.make_batch(cache, np.array([0]),
                                             np.random.default_rng(seed), cfg, net_cfg))
    (xp, tp), (xf, tf) = got[False], got[True]
    assert np.allclose(xf[0, 0], xp[0, 0][:, ::-1], atol=1e-4)  # the mirror image
    tp, tf = tp.reshape(5, 2), tf.reshape(5, 2)
    assert np.allclose(tf, FL.flip_points(tp), atol=1e-6)
    for t in (tp, tf):  # "left as seen" stays left of "right as seen"
        assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]

    def value_at(x, t, k):
        u = np.clip(np.round(t[k] * 39 - 0.5).astype(int), 0, 38)
        return x[0, 0, u[1], u[0]]

    # the person's eye drawn darkest (image-left, label 0, unflipped) is label 1 once mirrored
    assert value_at(xp, tp, 0) < value_at(xp, tp, 1)
    assert value_at(xf, tf, 1) < value_at(xf, tf, 0)


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


def test_nme_and_failure_rate():
    gt = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], float)
    pred = gt.copy()
    pred[0, 2, 0] += 4  # nose off by 4 px, inter-ocular 20 px: 20%
    e = TE.nme(pred, gt)
    assert np.allclose(e, [[0, 0, 0.2, 0, 0]])
    s = TE.summarise(e)
    assert s["nme"] == pytest.approx(0.04) and s["per_point"]["nose"] == pytest.approx(0.2)
    assert s["failure_rate"] == 0.0 and s["point_failure_rate"]["nose"] == 1.0


def test_cache_of_an_mtfl_folder(tmp_path):
    root = tiny_mtfl(tmp_path / "mtfl")
    cache = TM.build_cache(root, TM.TRAIN_LIST, tmp_path / "cache", NL.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: None)
    assert len(cache) == 11 and cache.meta["dropped_bad"] == "1"
    assert cache.ctx.dtype == np.uint8 and cache.ctx.shape == (11, TM.CONTEXT, TM.CONTEXT)
    assert cache.crop.shape == (11, 39, 39) and not cache.found.any() and cache.box_ok.all()
    files = os.listdir(tmp_path / "cache")
    again = TM.build_cache(root, TM.TRAIN_LIST, tmp_path / "cache", NL.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: pytest.fail("rebuilt"))
    assert os.listdir(tmp_path / "cache") == files and np.array_equal(again.ctx, cache.ctx)
    # the crop's own points map back onto the image's
    m = FL.invert_affine(cache.crop_inv[3])
    assert np.allclose(FL.apply_affine(cache.crop_inv[3], FL.apply_affine(m, cache.points[3])),
                       cache.points[3])
    with pytest.raises(ValueError, match="not found"):
        TM.read_mtfl(tmp_path, TM.TRAIN_LIST)


def test_train_landmarks_main_writes_a_model_with_its_command(tmp_path, be):
    root = tiny_mtfl(tmp_path / "mtfl")
    out = tmp_path / "run"
    s = TL.train_landmarks_main(root, out, epochs=2, seed=1, batch=4, detector="central",
                               progress=False, log=lambda *a: None,
                               command="deepid2 train-landmarks --data D --out O")
    for name in (TL.FINAL, TK.BEST, TK.CHECKPOINT, TK.LOG, TK.PLOT, TL.EVAL):
        assert (out / name).stat().st_size > 0
    model = FL.load_landmark_model(out / TL.FINAL)
    assert model.meta["command"] == "deepid2 train-landmarks --data D --out O"
    assert json.loads(model.meta["train"])["detector"] == "central"
    assert json.loads(model.meta["test"])["n"] == 12 and s["test"]["n"] == 12
    with pytest.raises(ValueError, match="detector"):
        TL.train_landmarks_main(root, out, epochs=1, detector="nope", progress=False,
                               log=lambda *a: None)


def trainer(cache, run_dir, be, **kw):
    base = dict(epochs=2, batch=4, lr=0.01, seed=3, val_fraction=0.34, detector="haar")
    base.update(kw)
    return Loop(TL.LandmarkTask(cache, run_dir, TL.LandmarkTrainConfig(**base), be),
                log=lambda *a: None, progress=False)


def test_checkpoint_round_trip_and_exact_resume(tmp_path, be):
    cache = synthetic_cache(12)
    whole = trainer(cache, tmp_path / "whole", be, epochs=3).run()
    for name in (TK.CHECKPOINT, TK.BEST, TK.LOG, TK.PLOT):
        assert (tmp_path / "whole" / name).stat().st_size > 0

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(cache, tmp_path / "cut", be, epochs=3).run(on_epoch_end=stop_after_two)
    resumed = trainer(cache, tmp_path / "cut", be, epochs=3).run(resume=True)
    assert (tmp_path / "whole" / TK.CHECKPOINT).read_bytes() == \
        (tmp_path / "cut" / TK.CHECKPOINT).read_bytes()
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    # the saved model loads and predicts exactly as the trained parameters do
    model = FL.load_landmark_model(tmp_path / "whole" / TK.BEST)
    assert model.meta["format"] == FL.MODEL_FORMAT and model.cfg == NL.LandmarkNetConfig()
    ck = FL.load_landmark_model(tmp_path / "whole" / TK.CHECKPOINT)
    for k, v in TL.LandmarkTask.model_params(whole).items():
        assert np.array_equal(ck.params[k], v)
    x = FL.standardise(cache.crop[:3])
    assert np.array_equal(ck.predict_normalised(x), FL.load_landmark_model(
        tmp_path / "whole" / TK.BEST).predict_normalised(x)) or whole["best_epoch"] != 3
    with pytest.raises(ValueError, match="different config"):
        trainer(cache, tmp_path / "whole", be, epochs=3, lr=0.02).run(resume=True)


# -- with the MTFL data ----------------------------------------------------------------------
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, TM.TEST_LIST)),
                                reason=f"MTFL data not found at {DATA} (set DEEPID2_DATA)")


@needs_data
def test_shipped_model_on_the_first_200_test_images_with_haar_boxes():
    model = FL.load_landmark_model()
    res = TE.evaluate(model, DATA, TM.TEST_LIST, detector="haar", limit=200)
    assert res["n"] == 200 and res["detector"] == "haar"
    assert res["nme"] < 0.10, res["per_point"]


@needs_data
def test_shipped_model_on_the_first_200_test_images_with_central_boxes():
    """Where OpenCV has no Haar cascade, every image gets the central box: the model was
    trained on those too, with a wider error (AFLW's faces fill more than the box)."""
    model = FL.load_landmark_model()
    meta = model.meta
    assert meta["format"] == FL.MODEL_FORMAT and "command" in meta and "train" in meta
    assert json.loads(meta["test"])["n"] == 2995  # the whole test list, at training time
    res = TE.evaluate(model, DATA, TM.TEST_LIST, detector="central", limit=200)
    assert res["n"] == 200 and res["found"] is None
    assert res["nme"] < 0.15, res["per_point"]


@needs_data
def test_mtfl_reader_and_the_misannotated_lines():
    rows = TM.read_mtfl(DATA, TM.TRAIN_LIST)
    assert len(rows) == 10000 and rows[0][1].shape == (5, 2)
    bad = [r for r, p in rows if TM.known_bad_annotation(r, p, (80, 80))]
    assert len(bad) == 2347 and all(r.startswith("net_7876/") for r in bad)


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


def test_augmented_target_statistics(tmp_path):
    with pytest.raises(ValueError, match="target_stats"):
        TL.LandmarkTrainConfig(target_stats="batch")
    assert TL.LandmarkTrainConfig().target_stats == "crops"  # the shipped model's


# -- the cascade's refinement levels (nets.refine, face.landmark_cascade, training.cascade) ----
from deepid2_core.nets import refine as NR  # noqa: E402
from deepid2_core.face import landmark_cascade as FC  # noqa: E402
from deepid2_core.training import cascade as TC  # noqa: E402
from mtfl_synth import tiny_mtfl

TINY_LEVEL = NR.RefineLevelConfig(patches=(1.2,), size=11, conv1=4, conv2=5, hidden=6)


def refine_loss_and_grads(be, params, x, target, cfg=TINY_LEVEL):
    net = NR.RefineNet(cfg, be)
    acts = net.forward(params, x)
    loss, dout = be.regression_loss(acts["out"], target)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    net.backward(params, acts, dout, grads)
    return float(loss), grads, acts


def refine_inputs(seed, dtype, cfg=TINY_LEVEL, n=3):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in NR.init_refine_params(cfg, rng).items()}
    for k in params:
        if k.endswith(".b"):
            params[k] = (0.05 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((n, 1, cfg.size, cfg.size)).astype(dtype)
    return params, x, rng.random((n, 2)).astype(dtype)


def test_refine_net_shapes_are_those_of_the_paper():
    cfg = NR.RefineLevelConfig()
    assert cfg.size == 15 and NR.refine_shapes(cfg) == (12, 6, 4, 2)
    s = NR.refine_param_shapes(cfg)
    assert s["conv1.w"] == (1, 1, 20, 1, 4, 4) and s["conv2.w"] == (1, 1, 40, 20, 3, 3)
    assert s["fc.w"] == (160, 60) and s["out.w"] == (60, 2)
    assert NR.refine_shapes(TINY_LEVEL) == (8, 4, 2, 1)
    for bad in (dict(size=9), dict(patches=()), dict(patches=(1.0, -1.0)), dict(hidden=0)):
        with pytest.raises(ValueError):
            NR.RefineLevelConfig(**bad)
    assert NR.RefineLevelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("size", [11, 14])  # odd and even pool inputs
def test_refine_net_finite_differences_in_float64(size):
    cfg = NR.RefineLevelConfig(patches=(1.0,), size=size, conv1=4, conv2=5, hidden=6)
    params, x, target = refine_inputs(5, np.float64, cfg)
    _, grads, acts = refine_loss_and_grads(ORACLE, params, x, target, cfg)
    assert all((acts[k] > 0).any() for k in ("conv1", "conv2", "fc"))
    check_param_gradients(lambda: refine_loss_and_grads(ORACLE, params, x, target, cfg)[0],
                          params, grads)


def test_refine_net_cpu_matches_the_oracle(be):
    params, x, target = refine_inputs(6, np.float32, NR.RefineLevelConfig(), n=5)
    loss, grads, acts = refine_loss_and_grads(be, params, x, target, NR.RefineLevelConfig())
    rloss, rgrads, racts = refine_loss_and_grads(ORACLE, params, x, target,
                                                 NR.RefineLevelConfig())
    assert abs(loss - rloss) <= 1e-5 * abs(rloss) + 1e-6
    assert_close(acts["out"], racts["out"], rtol=1e-4, atol=1e-5, name="out")
    for k in sorted(grads):
        scale = np.abs(rgrads[k]).max()
        assert_close(grads[k], rgrads[k], rtol=1e-3, atol=1e-4 * scale + 1e-8, name=k)


def ramp_image(h=60, w=80):
    """I(x, y) = x + 2 y: bilinear sampling of it is exact inside the image."""
    y, x = np.mgrid[0:h, 0:w]
    return (x + 2 * y).astype(np.uint8)


def test_patch_geometry_on_a_ramp():
    img = ramp_image()
    images, hw = img[None], np.array([img.shape])
    centre = np.array([[30.0, 20.0], [40.5, 25.25]])
    angle = np.array([0.0, np.pi / 2])  # the second patch's x axis points down the image
    x, y = FC.patch_grid(centre, angle, np.array([10.0, 5.0]), 5)
    assert x.shape == (2, 5, 5)
    assert np.allclose([x[0, 2, 2], y[0, 2, 2]], centre[0])   # odd size: centre pixel
    assert np.allclose(np.diff(x[0], axis=1), 2.0) and np.allclose(np.diff(y[0], axis=0), 2.0)
    assert np.allclose(x[0, 0, 0], 26.0) and np.allclose(y[0, 0, 0], 16.0)
    assert np.allclose(np.diff(y[1], axis=1), 1.0) and np.allclose(np.diff(x[1], axis=0), -1.0)
    p = FC.sample_patches(images, hw, np.zeros(2, int), x, y)
    assert np.allclose(p, x + 2 * y, atol=1e-4)
    # border replicated: far outside, the nearest edge pixel's value
    p = FC.sample_patches(images, hw, np.zeros(1, int), np.array([[[-5.0, 100.0]]]),
                         np.array([[[3.0, 70.0]]]))
    assert np.allclose(p, [[[0 + 2 * 3, 79 + 2 * 59]]])
    # flip: the coordinates are those of the mirror image
    xm, ym = FC.patch_grid([[20.0, 30.0]], [0.3], [12.0], 7)
    a = FC.sample_patches(images, hw, [0], xm, ym, flip=[True])
    b = FC.sample_patches(np.ascontiguousarray(img[:, ::-1])[None], hw, [0], xm, ym)
    assert np.allclose(a, b, atol=1e-4)


def test_frame_offsets_and_mirror_round_trip():
    pts = np.array([[[30, 34], [50, 30], [40, 44], [33, 54], [47, 52]]], float)
    a, r = FC.shape_frame(pts)
    assert np.allclose(a, np.arctan2(-4, 20))
    assert np.allclose(r, np.sqrt(np.mean(np.sum((pts[0] - pts[0].mean(0)) ** 2, 1))))
    assert np.allclose(FC.shape_frame(pts, rotate_frame=False)[0], 0)
    assert FC.shape_frame(np.ones((1, 5, 2)))[1][0] == FC.MIN_RADIUS  # degenerate: a floor
    truth = pts + np.random.default_rng(0).normal(0, 2, pts.shape)
    side = np.array([[12.0, 15.0]])
    off = FC.points_to_offsets(pts, a, side, truth)
    assert off.shape == (1, 5, 2, 2)
    assert np.allclose(FC.offsets_to_points(pts, a, side, off), truth[:, :, None])
    m = FC.mirror_points(pts, 80)
    assert np.allclose(m[0, 0], [79 - 50, 30]) and np.allclose(m[0, 3], [79 - 47, 52])
    assert np.allclose(FC.mirror_points(m, 80), pts)


def dots_images(n, seed=0, size=64):
    """Grey images with 5 dark dots at jittered face-like places, and their points."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size), 150, np.uint8)
    pts = np.empty((n, 5, 2))
    base = np.array([[22, 24], [42, 24], [32, 34], [25, 44], [39, 44]], float)
    for i in range(n):
        pts[i] = base + rng.uniform(-3, 3, (5, 2))
        for px, py in pts[i]:  # a dot of radius 2.5 px, anti-aliased
            yy, xx = np.mgrid[0:size, 0:size]
            d = np.hypot(xx - px, yy - py)
            imgs[i] = np.minimum(imgs[i], np.clip(30 + 120 * (d - 2.0), 30, 150)).astype(np.uint8)
    return TC.TrainImages(imgs, np.tile([size, size], (n, 1)), pts)


def test_training_samples_put_the_truth_where_the_targets_say():
    data = dots_images(4)
    cfg = TC.RefineTrainConfig(displace=0.2, max_displace=0.3, rotate=15.0, scale=0.1, flip=True)
    lc = NR.RefineLevelConfig(patches=(1.2, 1.6), size=15)
    patches, target = TC.make_samples(data, np.arange(4), np.random.default_rng(1), cfg, lc)
    assert patches.shape == (4, 5, 2, 1, 15, 15) and target.shape == (4, 5, 2, 2)
    assert np.abs(target).max() < 0.5  # the truth stays inside every patch
    # where its target says, each patch shows its dot: as dark as the darkest pixel, and
    # the patch centre is not there (displaced)
    moved = 0
    for i in range(4):
        for p in range(5):
            for j in range(2):
                q = patches[i, p, j, 0]
                u, v = np.round(target[i, p, j] * 15 + 7).astype(int)
                lo, hi = q.min(), q.max()
                assert q[v, u] <= lo + 0.2 * (hi - lo), (i, p, j, (u, v), q[v, u], lo, hi)
                moved += np.hypot(*(target[i, p, j] * 15)) > 1
    assert moved > 20


def train_dots_level(tmp_path, be, epochs=20, n=96, **kw):
    data = dots_images(n, seed=1)
    cfg = TC.RefineTrainConfig(epochs=epochs, batch=16, lr=0.02, displace=0.12, rotate=10.0,
                              seed=2, **kw)
    lc = NR.RefineLevelConfig(patches=(1.3,), size=15, conv1=8, conv2=16, hidden=24)
    start = data.points[:8] + 1.5
    tr = Loop(TC.CascadeTask(data, np.arange(8, n), np.arange(8), start, tmp_path, 2, lc, cfg,
                             be), log=lambda *a: None, progress=False)
    return tr, tr.run()


def test_refinement_moves_a_displaced_prediction_toward_the_truth(tmp_path, be):
    tr, state = train_dots_level(tmp_path, be)
    level = tr.task.model_level(state)
    test = dots_images(6, seed=9)
    rng = np.random.default_rng(3)
    _, r = FC.shape_frame(test.points, False)
    start = test.points + rng.normal(0, 0.15, test.points.shape) * r[:, None, None]
    before = np.linalg.norm(start - test.points, axis=2)
    cas = FC.LandmarkCascade([level])
    after = np.stack([np.linalg.norm(cas.refine(test.images[i], start[i:i + 1])[0]
                                     - test.points[i], axis=1) for i in range(6)])
    assert after.mean() < 0.4 * before.mean(), (before.mean(), after.mean())  # 2.2 -> 0.5 px
    assert (after < before).mean() > 0.9
    h = state["history"]
    assert h[-1]["val_nme"] < h[0]["val_nme"] and h[-1]["loss"] < 0.7 * h[0]["loss"]


def test_cascade_training_is_reproducible_and_resumes_exactly(tmp_path, be):
    _, whole = train_dots_level(tmp_path / "whole", be, epochs=3, n=48)

    def stop_after_two(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    data = dots_images(48, seed=1)
    cfg = TC.RefineTrainConfig(epochs=3, batch=16, lr=0.02, displace=0.12, rotate=10.0, seed=2)
    lc = NR.RefineLevelConfig(patches=(1.3,), size=15, conv1=8, conv2=16, hidden=24)
    mk = lambda: Loop(TC.CascadeTask(data, np.arange(8, 48), np.arange(8),  # noqa: E731
                                     data.points[:8] + 1.5, tmp_path / "cut", 2, lc, cfg, be),
                      log=lambda *a: None, progress=False)
    with pytest.raises(KeyboardInterrupt):
        mk().run(on_epoch_end=stop_after_two)
    resumed = mk().run(resume=True)
    ck = "level2/checkpoint.safetensors"
    assert (tmp_path / "whole" / ck).read_bytes() == (tmp_path / "cut" / ck).read_bytes()
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in whole["history"]]
    with pytest.raises(ValueError, match="different config"):
        Loop(TC.CascadeTask(data, np.arange(8, 48), np.arange(8), data.points[:8],
                            tmp_path / "cut", 2, lc, TC.RefineTrainConfig(epochs=3, batch=16,
                                                                          lr=0.03), be),
             log=lambda *a: None, progress=False).run(resume=True)


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


def test_train_cascade_main_writes_a_model_with_both_levels(tmp_path, be):
    root = tiny_mtfl(tmp_path / "mtfl", n=24)
    TL.train_landmarks_main(root, tmp_path / "l1", epochs=1, batch=4, detector="central",
                           progress=False, log=lambda *a: None, evaluate_test=False)
    out = tmp_path / "cas"
    s = TC.train_cascade_main(root, out, level1=tmp_path / "l1" / TL.FINAL, epochs=2, batch=4,
                             progress=False, log=lambda *a: None,
                             command="deepid2 train-landmark-cascade --data D --out O")
    model = FL.load_landmark_model(out / TL.FINAL)
    assert [lv.number for lv in model.cascade.levels] == [2]
    assert model.meta["cascade_command"] == "deepid2 train-landmark-cascade --data D --out O"
    assert json.loads(model.meta["train"])["detector"] == "central"  # level 1's, kept
    assert json.loads(model.meta["cascade_test"])["n"] == 24 == s["test"]["n"]
    assert len(json.loads(model.meta["cascade_val"])) == 2
    for name in ("level2/checkpoint.safetensors", "level2/best.safetensors", "level2/log.jsonl",
                 TL.EVAL):
        assert (out / name).stat().st_size > 0
    # the command line: the same run, its command recorded
    from deepid2_core.cli import main
    args = ["train-landmark-cascade", "--data", str(root), "--level1",
            str(tmp_path / "l1" / TL.FINAL), "--levels", "2", "--epochs", "2", "--batch", "4"]
    assert main(args + ["--out", str(tmp_path / "cli")]) == 0
    again = FL.load_landmark_model(tmp_path / "cli" / TL.FINAL)
    assert again.meta["cascade_command"].startswith("deepid2 train-landmark-cascade --data ")
    for k, v in model.cascade.tensors().items():
        assert np.array_equal(again.cascade.tensors()[k], v), k  # the same bits
    assert main(args + ["--out", str(tmp_path / "bad"), "--displace", "0.1", "0.2"]) == 2


@needs_data
def test_shipped_cascade_refines_level_1_on_the_first_200_test_images():
    """The shipped file holds levels 2 and 3; on the same Haar boxes they lower level 1's
    error (on all 2,995 test images: 10.37% -> 9.59%, README)."""
    model = FL.load_landmark_model()
    assert [lv.number for lv in model.cascade.levels] == [2, 3]
    assert "cascade_command" in model.meta and json.loads(model.meta["cascade_test"])["n"] == 2995
    one = FL.load_landmark_model(levels=1)
    errs = {1: [], 3: []}
    for rel, pts in TM.read_mtfl(DATA, TM.TEST_LIST)[:200]:
        gray = cv2.imread(os.path.join(DATA, rel), cv2.IMREAD_GRAYSCALE)
        box, _ = FB.face_box(gray, "haar")
        for k, m in ((1, one), (3, model)):
            errs[k].append(TE.nme(FL.predict_landmarks(m, gray, box), pts[None])[0])
    e1, e3 = np.mean(errs[1]), np.mean(errs[3])
    assert e3 < e1 - 0.003, (e1, e3)


# -- issue 15, point 2: arguments checked before any work; damaged checkpoints ------------
def cli_error(capsys, args):
    from deepid2_core.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize("option, value, named", [
    ("--lr", "-1", "learning rate (--lr) must be a finite number above 0, got -1.0"),
    ("--lr", "0", "learning rate (--lr) must be a finite number above 0, got 0.0"),
    ("--epochs", "0", "epochs and batch must be at least 1, got 0, 4"),
    ("--batch", "0", "epochs and batch must be at least 1, got 1, 0"),
    ("--shift", "-1", "shift must be at least 0, got -1.0"),
    ("--fallback-share", "2", "fallback_share must be in [0, 1], got 2.0"),
    ("--seed", "-1", "seed (--seed) must be at least 0, got -1"),
])
def test_train_landmarks_refuses_bad_arguments_before_any_work(tmp_path, capsys, option, value,
                                                               named):
    root, out = tiny_mtfl(tmp_path / "mtfl"), tmp_path / "run"
    err = cli_error(capsys, ["train-landmarks", "--data", str(root), "--out", str(out),
                             "--epochs", "1", "--batch", "4", option, value])
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("option, value, named", [
    ("--lr", "-1", "learning rate (--lr) must be a finite number above 0, got -1.0"),
    ("--epochs", "0", "epochs and batch must be at least 1, got 0, 4"),
    ("--scale", "-0.1", "scale must be at least 0, got -0.1"),
    ("--displace", "-1", "displace must be at least 0, got -1.0"),
])
def test_train_landmark_cascade_refuses_bad_arguments_before_any_work(tmp_path, capsys, option,
                                                                      value, named):
    root, out = tiny_mtfl(tmp_path / "mtfl"), tmp_path / "run"
    err = cli_error(capsys, ["train-landmark-cascade", "--data", str(root), "--out", str(out),
                             "--levels", "2", "--epochs", "1", "--batch", "4", option, value])
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


def flip_tensor_bytes(path):
    raw = bytearray(path.read_bytes())
    raw[-200:-100] = bytes(b ^ 0xFF for b in raw[-200:-100])
    path.write_bytes(bytes(raw))


def test_resume_of_a_damaged_landmark_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    from deepid2_core.cli import main
    root = tiny_mtfl(tmp_path / "mtfl", n=24)
    l1 = ["train-landmarks", "--data", str(root), "--out", str(tmp_path / "l1"), "--epochs",
          "1", "--batch", "4", "--detector", "central"]
    assert main(l1) == 0
    ckpt = tmp_path / "l1" / TK.CHECKPOINT
    flip_tensor_bytes(ckpt)
    capsys.readouterr()
    line = cli_error(capsys, l1 + ["--resume", "--epochs", "2"])[-1]
    assert line.startswith(f"deepid2 train-landmarks: error: {ckpt}: tensor data damaged"), line

    cas = ["train-landmark-cascade", "--data", str(root), "--out", str(tmp_path / "cas"),
           "--level1", str(tmp_path / "l1" / TL.FINAL), "--levels", "2", "--epochs", "1",
           "--batch", "4"]
    assert main(cas) == 0
    ckpt = tmp_path / "cas" / "level2" / TK.CHECKPOINT
    flip_tensor_bytes(ckpt)
    capsys.readouterr()
    line = cli_error(capsys, cas + ["--resume", "--epochs", "2"])[-1]
    assert line.startswith(f"deepid2 train-landmark-cascade: error: {ckpt}: tensor data "
                           f"damaged"), line
    assert not (tmp_path / "cas" / ".lock").exists() and not (tmp_path / "l1" / ".lock").exists()
