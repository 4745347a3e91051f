"""Multi-patch feature extraction against a float64 reference network on
patches cut one at a time, the mirror symmetry of the feature order, the
on-disk cache, paths vs arrays, errors."""
import cv2
import numpy as np
import pytest

import oracle_backend
from deepid2_core.face.patches import PatchLayout, Region, cut_flipped, cut_patch
from deepid2_core.face.align import MEAN_SHAPE, to_pixels
from deepid2_core.nets.deepid2 import DeepID2, NetConfig, init_params
from deepid2_core.verifier import features as F

FD = 160


def small_layout():
    """2 landmark regions (a mirror pair) + 1 symmetric region, 1 scale, RGB + grey."""
    regions = (Region("left_eye", "square", (0, 0), 0.2, 0),
               Region("right_eye", "square", (0, 0), 0.2, 1),
               Region("face", "rect", (0.5, 0.55), 0.5))
    return PatchLayout("small", regions, (1.0,), ("rgb", "gray"), (39, 31), (31, 31))


def networks(layout, seed=0):
    out = []
    for k in range(len(layout)):
        h, w, c = layout.patch_shape(k)
        cfg = NetConfig(n_classes=3, height=h, width=w, channels=c)
        params = init_params(cfg, seed + k)
        params = {n: (v + np.float32(0.05) if n.endswith(".b") else v) for n, v in params.items()}
        out.append(F.PatchNetwork(params, cfg))
    return out


def faces(n, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (n, 120, 100, 3), np.uint8).reshape(-1, 100, 3),
                            (0, 0), 2).reshape(n, 120, 100, 3)
    return [np.ascontiguousarray(f) for f in base]


def reference_features(face, layout, nets):
    """float64 network on each patch cut alone (cut_patch / cut_flipped)."""
    lm = to_pixels(MEAN_SHAPE, (face.shape[1], face.shape[0]))
    out = []
    for k, (params, cfg) in enumerate(nets):
        net = DeepID2(cfg, oracle_backend)
        p64 = {n: v.astype(np.float64) for n, v in params.items()}
        for patch in (cut_patch(face, lm, layout, k), cut_flipped(face, lm, layout, k)):
            x = ((patch.astype(np.float64) - 127.5) / 128).transpose(2, 0, 1)[None]
            out.append(net.features(p64, x)[0])
    return np.concatenate(out)


def test_features_match_a_float64_reference(be):
    layout = small_layout()
    nets = networks(layout)
    imgs = faces(3)
    got = F.FeatureExtractor(layout, nets, be, batch=2, progress=False).extract(imgs)
    assert got.shape == (3, 2 * len(layout) * FD) and got.dtype == np.float32
    ref = np.stack([reference_features(f, layout, nets) for f in imgs])
    assert (ref > 0).mean() > 0.2, "reference features mostly zero: the test would be weak"
    bad = np.abs(got - ref) > 1e-4 + 1e-3 * np.abs(ref)
    assert not bad.any(), f"max |x-ref| {np.abs(got - ref).max():.3g}"


def test_mirrored_face_swaps_each_patch_with_its_flipped_counterpart(be):
    layout = small_layout()
    ext = F.FeatureExtractor(layout, networks(layout), be, progress=False)
    face = faces(1, seed=4)[0]
    a, b = ext.extract([face, np.ascontiguousarray(face[:, ::-1])])
    pairs_a, pairs_b = a.reshape(len(layout), 2, FD), b.reshape(len(layout), 2, FD)
    np.testing.assert_allclose(pairs_b[:, 0], pairs_a[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pairs_b[:, 1], pairs_a[:, 0], rtol=1e-5, atol=1e-6)
    assert np.abs(pairs_a[:, 0] - pairs_a[:, 1]).max() > 1e-3      # not trivially equal


def test_whole_face_layout(be):
    layout = F.PatchInputs.whole()
    cfg = NetConfig(n_classes=2)
    nets = [F.PatchNetwork(init_params(cfg, 1), cfg)]
    face = faces(1, seed=2)[0]
    big = cv2.resize(face, (250, 250))
    got = F.FeatureExtractor(layout, nets, be, progress=False).extract([big])[0]
    net = DeepID2(cfg, oracle_backend)
    p64 = {n: v.astype(np.float64) for n, v in nets[0].params.items()}
    patch = F.cut_fixed_patch(big, layout.specs[0])
    for k, p in enumerate((patch, patch[:, ::-1])):
        x = ((p.astype(np.float64) - 127.5) / 128).transpose(2, 0, 1)[None]
        ref = net.features(p64, x)[0]
        assert not (np.abs(got[k * FD:(k + 1) * FD] - ref) > 1e-4 + 1e-3 * np.abs(ref)).any()
    assert F.patch_names(layout) == ["whole"]
    # a version 1 file's form, so the feature cache and gallery keys made from it stay
    spec = F.PatchSpec(lighting="hist")
    assert F.PatchInputs.whole(spec).to_dict() == {"name": "whole", "spec": spec.to_dict()}
    assert F.PatchInputs.from_dict(F.PatchInputs.whole(spec).to_dict()) == F.PatchInputs.whole(spec)
    assert F.PatchInputs((spec,)).to_dict() == {"name": "patches", "inputs": [spec.to_dict()]}
    with pytest.raises(ValueError, match="holds one PatchSpec"):
        F.PatchInputs((spec, spec), "whole")


def test_cache_paths_and_model_identity(be, tmp_path, monkeypatch):
    layout = small_layout()
    nets = networks(layout)
    imgs = faces(3, seed=5)
    paths = []
    for i, f in enumerate(imgs):
        paths.append(str(tmp_path / f"face{i}.png"))
        cv2.imwrite(paths[-1], f)
    cache = tmp_path / "cache"
    ext = F.FeatureExtractor(layout, nets, be, cache_dir=cache, progress=False)
    first = ext.extract(paths)
    np.testing.assert_array_equal(first, ext.extract(imgs))      # PNG is lossless
    monkeypatch.setattr(F.FeatureExtractor, "_compute", lambda *a: pytest.fail("cache missed"))
    np.testing.assert_array_equal(F.FeatureExtractor(layout, nets, be, cache_dir=cache,
                                                     progress=False).extract(paths), first)
    monkeypatch.undo()
    changed = networks(layout, seed=1)
    assert F.model_key(layout, changed) != F.model_key(layout, nets)
    other = F.FeatureExtractor(layout, changed, be, cache_dir=cache, progress=False)
    assert np.abs(other.extract(paths) - first).max() > 1e-3
    imgs[0][0, 0] ^= 1                                            # one pixel: another key
    assert F._image_key(imgs[0], None)[0] != F._image_key(faces(1, seed=5)[0], None)[0]


def test_errors(be, tmp_path):
    layout = small_layout()
    nets = networks(layout)
    with pytest.raises(ValueError, match="has 6 patches but 5 networks"):
        F.FeatureExtractor(layout, nets[:5], be)
    with pytest.raises(ValueError, match=r"patch 1 is \(31, 31, 1\)"):
        F.FeatureExtractor(layout, [nets[0]] * 6, be)
    ext = F.FeatureExtractor(layout, nets, be, progress=False)
    with pytest.raises(ValueError, match="cannot read face image .*nope.png"):
        ext.extract([str(tmp_path / "nope.png")])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg: not a decodable image"):
        ext.extract([str(tmp_path / "bad.jpg")])
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        ext.extract([np.zeros((50, 50, 3), np.float32)])


def test_gpu_backend_when_present():
    from deepid2_core.backends import BackendUnavailable, get_backend
    try:
        gpu = get_backend("gpu")
    except BackendUnavailable as e:
        pytest.skip(f"no gpu backend: {e}")
    layout = small_layout()
    nets = networks(layout)
    imgs = faces(2)
    got = F.FeatureExtractor(layout, nets, gpu, progress=False).extract(imgs)
    ref = F.FeatureExtractor(layout, nets, get_backend("cpu"), progress=False).extract(imgs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
