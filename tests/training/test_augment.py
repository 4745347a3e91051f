"""Training augmentation (training/augment.py, issue 16): margin caches whose centre
is the plain patch, the host augmentation steps, their stream drawn from (seed,
epoch, step), micro-batches, exact resume, and the checks of bad settings."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.cli import main
from deepid2_core.data import build_cache
from deepid2_core.face.inputs import LayoutPatch, PatchSpec
from deepid2_core.synth import make_dataset
from deepid2_core.training import augment as aug
from deepid2_core.training.augment import AugmentConfig, AugmentParams
from deepid2_core.training.checkpoint import CHECKPOINT, LOG
from deepid2_core.training.deepid2 import DeepID2Task, TrainConfig, micro_rows
from deepid2_core.training.loop import Loop

MARGIN = AugmentConfig().margin(55, 47)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug") / "faces"
    make_dataset(root, identities=5, images_per_identity=6, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def caches(faces, tmp_path_factory):
    """{name: (plain cache, margin cache)} for a PatchSpec and a lit grey and RGB layout patch."""
    out = tmp_path_factory.mktemp("caches")
    specs = {"whole": PatchSpec(), "whole_grey_clahe": PatchSpec(channels=1, lighting="clahe"),
             "eye_hist": LayoutPatch("deepid2", "left_eye@1/rgb", "mean", "hist"),
             "mouth_grey": LayoutPatch("deepid2", "right_mouth_chin@1.2/gray", "mean")}
    return {k: (build_cache(faces, out / k, s, progress=False),
                build_cache(faces, out / (k + "-m"), replace(s, margin=MARGIN), progress=False))
            for k, s in specs.items()}


def smooth_crops(rng, b, h, w, c):
    """Random smooth uint8 images (blurred noise), so resampling errors stay small."""
    x = rng.random((b, h // 10 + 2, w // 10 + 2, c)).astype(np.float32) * 255
    big = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c)
                    for im in x])
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def random_shape(rng):
    h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    py, px = int(rng.integers(0, 8)), int(rng.integers(0, 8))
    return h, w, py, px, int(rng.choice([1, 3])), int(rng.integers(1, 6))


# -- the margin cache -------------------------------------------------------------
@pytest.mark.parametrize("name", ["whole", "whole_grey_clahe", "eye_hist", "mouth_grey"])
def test_centre_of_a_margin_cache_is_the_plain_cache(caches, name):
    plain, big = caches[name]
    py, px = big.spec.pad
    assert py > 0 and px > 0 and big.patches.shape[1:] == big.spec.cache_shape
    assert big.spec.plain() == plain.spec and plain.spec.to_dict() == plain.index["spec"]
    hw = plain.patches.shape[1:3]
    got = aug.light(aug.centre(np.array(big.patches), hw), big.spec.lighting)
    want = np.array(plain.patches)
    if isinstance(plain.spec, LayoutPatch):   # the same sampling grid: bit for bit
        assert got.tobytes() == want.tobytes()
        gotf = aug.light(aug.centre(np.array(big.flipped), hw), big.spec.lighting)
        assert gotf.tobytes() == np.array(plain.flipped).tobytes()
        assert not np.array_equal(big.flipped, big.patches)
    else:   # INTER_AREA's grid in numpy: float rounding may move a pixel by one level
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= (1 if big.spec.lighting == "none" else 255)
        assert (diff == 0).mean() > (0.999 if big.spec.lighting == "none" else 0.97)
    # the margin holds real surround, not a replicated border
    assert np.abs(np.diff(np.array(big.patches[:, :py].astype(int)), axis=2)).sum() > 0


def test_without_a_margin_specs_and_configs_write_what_they_wrote():
    assert PatchSpec().to_dict() == {"height": 55, "width": 47, "channels": 3,
                                     "crop": [0.285, 0.30, 0.755, 0.70]}
    assert "margin" not in LayoutPatch("deepid2", 3, "mean").to_dict()
    assert LayoutPatch("deepid2", 3, "mean", margin=0.2).to_dict()["margin"] == 0.2
    assert PatchSpec.from_dict(PatchSpec(margin=0.3).to_dict()) == PatchSpec(margin=0.3)
    assert "augment" not in TrainConfig().to_dict()
    d = TrainConfig(augment=AugmentConfig(rotate=3)).to_dict()
    assert d["augment"]["rotate"] == 3.0
    assert TrainConfig(augment=json.loads(json.dumps(d["augment"]))).augment \
        == AugmentConfig(rotate=3)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="margin must be a number in"):
            PatchSpec(margin=bad)


# -- apply ------------------------------------------------------------------------
def test_identity_parameters_give_exactly_the_centre_crop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w, py, px, c, b = random_shape(rng)
        big = rng.integers(0, 256, (b, h + 2 * py, w + 2 * px, c), dtype=np.uint8)
        want = big[:, py:py + h, px:px + w]
        assert aug.apply(big, AugmentParams.identity(b), (h, w)).tobytes() == want.tobytes()
        assert aug.centre(big, (h, w)).tobytes() == want.tobytes()


def test_a_whole_pixel_shift_moves_the_window_by_that_pixel():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w, py, px, c, b = random_shape(rng)
        py, px = py + 2, px + 2
        big = rng.integers(0, 256, (b, h + 2 * py, w + 2 * px, c), dtype=np.uint8)
        dx, dy = int(rng.integers(-px, px + 1)), int(rng.integers(-py, py + 1))
        p = AugmentParams.identity(b)._replace(shift=np.tile([dx / w, dy / h], (b, 1)))
        got = aug.apply(big, p, (h, w))
        assert got.tobytes() == big[:, py + dy:py + dy + h, px + dx:px + dx + w].tobytes()


def test_rotation_there_and_back_is_close_to_identity_on_the_interior():
    rng = np.random.default_rng(2)
    for _ in range(10):
        h, w, c, b = int(rng.integers(30, 50)), int(rng.integers(30, 50)), 3, 3
        big = smooth_crops(rng, b, h, w, c)
        r = rng.uniform(5, 20, b)
        zoom = rng.uniform(0.9, 1.1, b)
        there = AugmentParams.identity(b)._replace(angle=r, zoom=zoom)
        back = AugmentParams.identity(b)._replace(angle=-r, zoom=1 / zoom)
        rot = aug.apply(big, there, (h, w))
        moved = np.abs(rot.astype(int) - big)[:, 8:-8, 8:-8].mean()
        again = aug.apply(rot, back, (h, w)).astype(int)
        err = np.abs(again - big)[:, 8:-8, 8:-8]      # two bilinear resamplings' blur
        assert err.mean() < min(2.5, 0.15 * moved) and np.percentile(err, 99) <= 10, \
            (moved, err.mean(), err.max())


def test_each_photometric_step_moves_pixels_its_way():
    rng = np.random.default_rng(3)
    b, h, w = 8, 30, 26
    big = smooth_crops(rng, b, h, w, 3) // 2 + 64            # room both ways
    one = AugmentParams.identity(b)
    base = big.astype(float)

    def run(**kw):
        return aug.apply(big, one._replace(**kw), (h, w)).astype(float)

    up, down = run(brightness=np.full(b, 0.1)), run(brightness=np.full(b, -0.1))
    assert np.allclose(up.mean((1, 2, 3)), base.mean((1, 2, 3)) + 25.5, atol=0.6)
    assert np.allclose(down.mean((1, 2, 3)), base.mean((1, 2, 3)) - 25.5, atol=0.6)
    more, less = run(contrast=np.full(b, 1.3)), run(contrast=np.full(b, 0.7))
    assert (more.std((1, 2, 3)) > 1.2 * base.std((1, 2, 3))).all()
    assert (less.std((1, 2, 3)) < 0.8 * base.std((1, 2, 3))).all()
    assert np.allclose(more.mean((1, 2, 3)), base.mean((1, 2, 3)), atol=0.6)
    gain = np.ones((b, 3))
    gain[:, 2] = 1.2
    red = run(gain=gain)
    assert (red[..., 2].mean((1, 2)) > base[..., 2].mean((1, 2)) * 1.15).all()
    assert np.array_equal(red[..., :2], base[..., :2])

    def roughness(x):
        return np.abs(np.diff(x, axis=2)).mean()

    noisy = rng.integers(0, 256, big.shape, dtype=np.uint8)
    blurred = aug.apply(noisy, one._replace(blur_sigma=np.full(b, 1.0)), (h, w)).astype(float)
    assert roughness(blurred) < 0.5 * roughness(noisy.astype(float))
    jpeg = aug.apply(noisy, one._replace(jpeg_quality=np.full(b, 20)), (h, w)).astype(float)
    assert np.abs(jpeg - noisy).mean() > 5 and abs(jpeg.mean() - noisy.mean()) < 5


def test_grey_patches_ignore_the_colour_gain_and_keep_one_channel():
    rng = np.random.default_rng(4)
    p = aug.draw(rng, 6, AugmentConfig(colour=0.5), channels=1)
    assert (p.gain == 1).all()
    big = rng.integers(0, 256, (6, 20, 18, 1), dtype=np.uint8)
    out = aug.apply(big, p, (12, 10))
    assert out.shape == (6, 12, 10, 1) and out.dtype == np.uint8


def test_draw_is_a_pure_function_of_the_generator_and_its_order_is_fixed():
    cfg = AugmentConfig(blur_p=0.5, jpeg_p=0.5)
    a = aug.draw(np.random.default_rng([1, 2, 3]), 64, cfg, 3)
    b = aug.draw(np.random.default_rng([1, 2, 3]), 64, cfg, 3)
    c = aug.draw(np.random.default_rng([1, 2, 4]), 64, cfg, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a.angle, c.angle)
    # zero ranges draw the same number of values: the stream after it is unchanged
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    aug.draw(r1, 10, cfg, 3)
    aug.draw(r2, 10, AugmentConfig().scaled(0), 1)
    assert r1.random() == r2.random()
    assert (np.abs(a.angle) <= 10).all() and (np.abs(a.zoom - 1) <= 0.1).all()
    assert set(np.unique(a.jpeg_quality)) - {0} <= set(range(60, 96))
    assert 0 < (a.blur_sigma > 0).sum() < 64


def test_apply_refuses_bad_batches():
    big = np.zeros((2, 20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="even margin"):
        aug.apply(big, AugmentParams.identity(2), (15, 16))
    with pytest.raises(ValueError, match="for 3 images, crops for 2"):
        aug.apply(big, AugmentParams.identity(3), (16, 16))
    with pytest.raises(ValueError, match="uint8"):
        aug.apply(big.astype(np.float32), AugmentParams.identity(2), (16, 16))


@pytest.mark.parametrize("kw, msg", [
    (dict(shift=0.6), "augment shift must be in"), (dict(scale=0.5), "augment scale must be in"),
    (dict(rotate=-1), "augment rotate must be in"), (dict(blur_p=2), "augment blur_p"),
    (dict(contrast="x"), "augment contrast must be a number"),
    (dict(blur_sigma=(1.0, 0.5)), "augment blur_sigma"), (dict(blur_sigma=3), "(low, high)"),
    (dict(jpeg_quality=(50, 101)), "augment jpeg_quality"),
    (dict(jpeg_quality=(50.5, 60)), "augment jpeg_quality"),
])
def test_bad_augment_settings_are_one_line_value_errors(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        AugmentConfig(**kw)
    assert "\n" not in str(e.value)


def test_unknown_setting_and_bad_strength():
    with pytest.raises(ValueError, match="unknown augment setting 'spin'"):
        AugmentConfig.from_dict({"spin": 1})
    with pytest.raises(ValueError, match="strength"):
        AugmentConfig().scaled(-1)
    with pytest.raises(ValueError, match="AugmentConfig or None"):
        TrainConfig(augment=3)
    assert AugmentConfig().scaled(2).rotate == 20
    assert AugmentConfig(jpeg_p=0.5).scaled(3).jpeg_p == 1


def test_the_margin_covers_the_worst_corner():
    rng = np.random.default_rng(5)
    for _ in range(20):
        cfg = AugmentConfig(shift=rng.uniform(0, 0.1), scale=rng.uniform(0, 0.2),
                            rotate=rng.uniform(0, 20))
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        py, px = PatchSpec(h, w, margin=cfg.margin(h, w)).pad
        # the corner of the output at the largest rotation, smallest zoom and shift
        p = AugmentParams(np.array([[cfg.shift, cfg.shift]]), np.array([1 - cfg.scale]),
                          np.array([cfg.rotate]), *AugmentParams.identity(1)[3:])
        m = aug._matrix(p, 0, (h + 2 * py, w + 2 * px), (h, w))
        corners = np.array([[x, y, 1.0] for x in (-0.5, w - 0.5) for y in (-0.5, h - 0.5)])
        src = corners @ m.T
        assert (src >= -0.5 - 0.5).all() and (src[:, 0] <= w + 2 * px - 0.5 + 0.5).all() \
            and (src[:, 1] <= h + 2 * py - 0.5 + 0.5).all(), (cfg, src)


# -- in training ------------------------------------------------------------------
def task(cache, run_dir, be, **kw):
    cfg = TrainConfig(**{**dict(epochs=2, batch=8, lr=0.02, seed=4, val_fraction=0.25,
                                augment=AugmentConfig(blur_p=0.5, jpeg_p=0.5)), **kw})
    return DeepID2Task(cache, run_dir, cfg, be)


@pytest.mark.parametrize("name", ["whole", "eye_hist"])
def test_batches_depend_on_seed_epoch_and_step_only(caches, tmp_path, be, name):
    big = caches[name][1]
    t1, t2 = task(big, tmp_path / "a", be), task(big, tmp_path / "b", be)

    def batch_bytes(t, epoch, step):
        images, flips, _, _, _, params = t.batch(epoch, step)
        c, h, w = t.net_cfg.channels, t.net_cfg.height, t.net_cfg.width
        out = np.full((len(images), c, h, w), np.nan, np.float32)  # poisoned: every value written
        x = t.assemble(images, flips, out, params)
        assert np.isfinite(x).all()
        return x.tobytes(), t.host_batch(images, flips, params)

    a, pa = batch_bytes(t1, 1, 2)
    assert a == batch_bytes(t2, 1, 2)[0]
    assert a != batch_bytes(t1, 1, 3)[0] and a != batch_bytes(t1, 2, 2)[0]
    # the images and flips are those of a run without augmentation
    plain = task(caches[name][0], tmp_path / "c", be, augment=None)
    (i1, f1, *r1), (i2, f2, *r2) = t1.batch(1, 2), plain.batch(1, 2)
    assert np.array_equal(i1, i2) and np.array_equal(f1, f2) and r2[-1] is None
    # validation's patches: the plain cache's, unaugmented
    idx = np.arange(len(big))
    none = np.zeros(len(idx), bool)
    want = plain.assemble(idx, none)
    got = t1.assemble(idx, none)
    if name == "eye_hist":
        assert got.tobytes() == want.tobytes()
    else:
        assert np.abs(got - want).max() <= 1 / 128 + 1e-6
    assert not np.array_equal(pa, t1.host_batch(*t1.batch(1, 2)[:2]))


def test_micro_batches_take_the_serial_batch_rows_byte_for_byte(caches, tmp_path, be):
    big = caches["eye_hist"][1]
    serial = task(big, tmp_path / "s", be)
    for epoch, step in ((0, 0), (1, 3)):
        batch = serial.batch(epoch, step)
        images, flips, _, _, py, params = batch
        whole = np.array(serial.assemble(images, flips, None, params))
        for g in range(2):
            mi, mf, _, _, _, mp = batch.part(2, g)
            rows = micro_rows(len(images), len(py), 2, g)
            assert np.array_equal(mi, images[rows])
            got = serial.assemble(mi, mf, None, mp)
            assert got.tobytes() == whole[rows].tobytes()


def _train(faces, out, *options):
    return main(["train", "--data", str(faces), "--out", str(out), "--epochs", "2", "--batch",
                 "8", "--seed", "2", "--augment"] + list(options))


def test_augmented_run_resumes_exactly_and_refuses_other_augmentation(faces, tmp_path, be,
                                                                        caches):
    assert _train(faces, tmp_path / "whole") == 0
    cache = caches["whole"][1]   # the margin --augment gives, built from the same faces
    cfg = TrainConfig(epochs=2, batch=8, seed=2, augment=AugmentConfig())

    def stop(state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Loop(DeepID2Task(cache, tmp_path / "cut", cfg, be), log=lambda *a: None,
             progress=False).run(on_epoch_end=stop)
    assert safetensors.load(tmp_path / "cut" / CHECKPOINT)[1]["epoch"] == "1"
    Loop(DeepID2Task(cache, tmp_path / "cut", cfg, be), log=lambda *a: None,
         progress=False).run(resume=True)
    assert (tmp_path / "cut" / CHECKPOINT).read_bytes() == \
        (tmp_path / "whole" / CHECKPOINT).read_bytes()
    assert (tmp_path / "cut" / LOG).read_text().count("\n") == 2
    meta = safetensors.load(tmp_path / "whole" / "best.safetensors")[1]
    assert json.loads(meta["train"])["augment"] == AugmentConfig().to_dict()
    # another strength, or none, is refused
    for extra in (["--augment-strength", "0.5"], None):
        if extra is None:
            rc = main(["train", "--data", str(faces), "--out", str(tmp_path / "whole"),
                       "--epochs", "2", "--batch", "8", "--seed", "2", "--resume"])
        else:
            rc = _train(faces, tmp_path / "whole", "--resume", *extra)
        assert rc == 2


def test_augmented_micro_batches_match_serial_within_tolerance(faces, tmp_path):
    assert _train(faces, tmp_path / "s") == 0
    assert _train(faces, tmp_path / "m", "--micro-batches", "2") == 0
    a, _ = safetensors.load(tmp_path / "s" / CHECKPOINT)
    b, _ = safetensors.load(tmp_path / "m" / CHECKPOINT)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, rtol=0, err_msg=k)


@pytest.mark.parametrize("options, msg", [
    (["--augment-strength", "2"], "--augment-strength needs --augment"),
    (["--augment", "--augment-strength", "-1"], "--augment-strength must be a number >= 0"),
    (["--augment", "--augment-strength", "nan"], "--augment-strength must be a number >= 0"),
    (["--augment", "--augment-strength", "12"], "--augment-strength 12 is too strong: augment"),
])
def test_bad_augment_options_exit_2_with_one_line_before_any_image_is_read(tmp_path, capsys,
                                                                          options, msg):
    rc = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
              + options)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
