"""Synthetic faces (deepid2_core.synth) and the data layer (deepid2_core.data):
layout and determinism of the generator, scanning, the patch cache (bad
files, reuse, rebuild, damage), train/val splits and batch assembly."""
import json
import os

import cv2
import numpy as np
import pytest

from deepid2_core import data
from deepid2_core.backends.cpu import assemble_batch
from deepid2_core.data import PatchCache, build_cache, scan_identities, split_train_val
from deepid2_core.face.inputs import PatchSpec, cut_fixed_patch
from deepid2_core.synth import make_dataset


def files_of(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "faces"
    stats = make_dataset(root, 4, 5, seed=3, progress=False)
    assert stats["identities"] == 4 and stats["images"] == 20
    return root


# ---- synth -----------------------------------------------------------------

def test_synth_layout_and_decodable(synth_root):
    ids = sorted(os.listdir(synth_root))
    assert ids == [f"synth{i:05d}" for i in range(4)]
    for name in ids:
        files = sorted(os.listdir(synth_root / name))
        assert files == [f"{name}_{j:04d}.jpg" for j in range(1, 6)]
        for f in files:
            img = cv2.imread(str(synth_root / name / f))
            assert img is not None and img.shape == (250, 250, 3) and img.dtype == np.uint8
            assert img.std() > 10               # a picture, not a flat fill


def test_synth_deterministic(tmp_path, synth_root):
    make_dataset(tmp_path / "a", 4, 5, seed=3, progress=False)
    ref = files_of(synth_root)
    assert files_of(tmp_path / "a") == ref  # same seed: byte-identical
    # worker processes do not change a byte either
    make_dataset(tmp_path / "w", 4, 5, seed=3, progress=False, workers=2)
    assert files_of(tmp_path / "w") == ref
    make_dataset(tmp_path / "b", 4, 5, seed=4, progress=False)
    other = files_of(tmp_path / "b")
    assert other.keys() == ref.keys()
    assert all(other[k] != ref[k] for k in ref)  # another seed: every image differs
    make_dataset(tmp_path / "s", 1, 2, seed=3, size=120, progress=False)
    assert cv2.imread(str(tmp_path / "s/synth00000/synth00000_0002.jpg")).shape == (120, 120, 3)
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "z", 0, 5, seed=3, progress=False)


def test_synth_identity_beats_nuisance(synth_root, tmp_path):
    """Images of one identity are closer (in patch pixels) than images of two."""
    cache = build_cache(synth_root, tmp_path / "c", progress=False)
    x = cache.patches.reshape(len(cache), -1).astype(np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    same = cache.labels[:, None] == cache.labels[None]
    off = ~np.eye(len(x), dtype=bool)
    assert d[same & off].mean() < 0.8 * d[~same].mean()


# ---- scan ------------------------------------------------------------------

def test_scan_identities(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        scan_identities(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        scan_identities(tmp_path / "empty")
    (tmp_path / "notes" / "bob").mkdir(parents=True)
    (tmp_path / "notes" / "bob" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no identity folders with images"):
        scan_identities(tmp_path / "notes")
    root = tmp_path / "ds"
    for rel in ["zed/b.PNG", "zed/a.jpg", "amy/x.JPEG", "amy/y.txt", ".hidden/h.jpg", "none/n.gif"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    got = scan_identities(root)
    assert [n for n, _ in got] == ["amy", "zed"]
    assert [os.path.basename(p) for p in got[1][1]] == ["a.jpg", "b.PNG"]
    assert got[0][1] == [str(root / "amy" / "x.JPEG")]


def test_patch_spec():
    s = PatchSpec()
    assert (s.height, s.width, s.channels) == (55, 47, 3)
    assert PatchSpec.from_dict(s.to_dict()) == s
    img = np.zeros((250, 250, 3), np.uint8)
    assert cut_fixed_patch(img, s).shape == (55, 47, 3)
    assert cut_fixed_patch(img, PatchSpec(31, 39, 1)).shape == (31, 39, 1)
    for bad in [dict(channels=2), dict(height=0), dict(crop=(0.5, 0.3, 0.4, 0.7)),
                dict(crop=(0.1, 0.3, 0.4, 1.2))]:
        with pytest.raises(ValueError):
            PatchSpec(**bad)


# ---- patch cache -----------------------------------------------------------

@pytest.fixture
def dirty_root(tmp_path):
    """A 3 x 3 synth set plus a corrupt jpg, an empty jpg and a folder of junk only."""
    root = tmp_path / "src"
    make_dataset(root, 3, 3, seed=11, progress=False)
    (root / "synth00001" / "corrupt.jpg").write_bytes(
        np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "synth00002" / "empty.jpg").write_bytes(b"")
    (root / "zz_broken").mkdir()
    (root / "zz_broken" / "only.png").write_bytes(b"\x89PNG not really")
    return root


def test_build_cache_skips_bad_files(dirty_root, tmp_path):
    spec = PatchSpec()
    cache = build_cache(dirty_root, tmp_path / "cache", spec, progress=False)
    assert not cache.reused and len(cache) == 9
    assert cache.patches.dtype == np.uint8 and cache.patches.shape == (9, 55, 47, 3)
    assert isinstance(cache.patches, np.memmap)
    assert cache.labels.dtype == np.int32 and cache.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert cache.identities == ["synth00000", "synth00001", "synth00002"]  # zz_broken dropped
    skipped = dict(cache.skipped)
    assert set(skipped) == {os.path.join("synth00001", "corrupt.jpg"),
                            os.path.join("synth00002", "empty.jpg"),
                            os.path.join("zz_broken", "only.png")}
    assert skipped[os.path.join("synth00002", "empty.jpg")] == "empty file"
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["dropped_identities"] == ["zz_broken"]
    assert index["format_version"] == data.FORMAT_VERSION
    # row k is the patch of paths[k], cut exactly as cut_fixed_patch cuts it (RGB)
    k = 4
    img = cv2.imread(str(dirty_root / cache.paths[k]))
    np.testing.assert_array_equal(cache.patches[k], cut_fixed_patch(img, spec))
    by_hand = cv2.resize(img[71:189, 75:175], (47, 55), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(cache.patches[k][..., ::-1], by_hand)
    # no temp folders left next to the cache
    assert sorted(os.listdir(tmp_path)) == ["cache", "src"]
    grey = build_cache(dirty_root, tmp_path / "grey", PatchSpec(channels=1), progress=False)
    assert grey.patches.shape == (9, 55, 47, 1)


def test_cache_reuse_and_rebuild(dirty_root, tmp_path, monkeypatch):
    cdir = tmp_path / "cache"
    first = build_cache(dirty_root, cdir, progress=False)
    before = np.array(first.patches)
    calls = []
    from deepid2_core.face import image
    monkeypatch.setattr(image.cv2, "imdecode", lambda *a, **k: calls.append(a) or None)
    again = build_cache(dirty_root, cdir, progress=False)
    assert again.reused and calls == []
    np.testing.assert_array_equal(np.asarray(again.patches), before)
    assert again.skipped == first.skipped and again.identities == first.identities
    monkeypatch.undo()
    # a changed source file -> rebuild, with the new content
    victim = dirty_root / first.paths[0]
    img = cv2.imread(str(victim))
    cv2.imwrite(str(victim), 255 - img)
    rebuilt = build_cache(dirty_root, cdir, progress=False)
    assert not rebuilt.reused
    assert not np.array_equal(np.asarray(rebuilt.patches[0]), before[0])
    np.testing.assert_array_equal(np.asarray(rebuilt.patches[1:]), before[1:])
    # a different spec -> rebuild; then the same spec again is reused
    assert not build_cache(dirty_root, cdir, PatchSpec(40, 32), progress=False).reused
    assert build_cache(dirty_root, cdir, PatchSpec(40, 32), progress=False).reused
    # a folder holding other files is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a patch cache"):
        build_cache(dirty_root, tmp_path / "mine", progress=False)


def test_damaged_cache(synth_root, tmp_path):
    cdir = tmp_path / "cache"
    build_cache(synth_root, cdir, progress=False)
    p = cdir / "patches.npy"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged patch cache"):
        PatchCache.load(cdir)
    fixed = build_cache(synth_root, cdir, progress=False)  # a damaged cache is rebuilt
    assert not fixed.reused and len(fixed) == 20
    index = json.loads((cdir / "index.json").read_text())
    (cdir / "index.json").write_text(json.dumps(dict(index, format_version=99)))
    with pytest.raises(ValueError, match="format_version"):
        PatchCache.load(cdir)
    (cdir / "index.json").write_text(json.dumps(dict(index, count=21)))
    with pytest.raises(ValueError, match="damaged"):
        PatchCache.load(cdir)
    (cdir / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json"):
        PatchCache.load(cdir)


# ---- split -----------------------------------------------------------------

def test_split_train_val():
    rng = np.random.default_rng(5)
    counts = np.concatenate([[1, 1, 2, 3, 10, 37], rng.integers(1, 25, 40)])
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)
    tr, va = split_train_val(labels, 0.2, seed=1)
    assert tr.dtype == np.int64 and va.dtype == np.int64
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(len(labels)))
    n_val = np.bincount(labels[va], minlength=len(counts))
    want = np.where(counts >= 2, np.clip(np.floor(0.2 * counts + 0.5), 1, counts - 1), 0)
    np.testing.assert_array_equal(n_val, want)
    assert np.all(np.bincount(labels[tr], minlength=len(counts)) >= 1)  # everyone trains
    again = split_train_val(labels, 0.2, seed=1)
    assert np.array_equal(again[0], tr) and np.array_equal(again[1], va)
    assert not np.array_equal(split_train_val(labels, 0.2, seed=2)[1], va)
    tr0, va0 = split_train_val(labels, 0.0)
    assert va0.size == 0 and tr0.size == len(labels)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split_train_val(labels, bad)


# ---- batches ---------------------------------------------------------------

def reference_batch(patches, idx, flip, mean=127.5, scale=1 / 128.0):
    x = (patches[idx].astype(np.float32) - np.float32(mean)) * np.float32(scale)
    x[flip] = x[flip][:, :, ::-1]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("channels", [3, 1])
def test_assemble_batch(channels):
    rng = np.random.default_rng(channels)
    patches = rng.integers(0, 256, (30, 55, 47, channels), dtype=np.uint8)
    idx = rng.integers(0, 30, 17)              # repeats allowed
    flip = rng.random(17) < 0.5
    got = assemble_batch(patches, idx, flip)
    assert got.dtype == np.float32 and got.shape == (17, channels, 55, 47) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, reference_batch(patches, idx, flip))
    np.testing.assert_array_equal(assemble_batch(patches, idx),
                                  reference_batch(patches, idx, np.zeros(17, bool)))
    out = np.full((17, channels, 55, 47), np.nan, np.float32)
    assert assemble_batch(patches, idx, flip, out=out, mean=3.0, scale=0.5) is out
    np.testing.assert_array_equal(out, reference_batch(patches, idx, flip, 3.0, 0.5))
    assert assemble_batch(patches, idx[:0], flip[:0]).shape == (0, channels, 55, 47)


def test_assemble_batch_from_cache_and_errors(synth_root, tmp_path):
    cache = build_cache(synth_root, tmp_path / "c", progress=False)
    idx, flip = np.array([19, 0, 7, 7]), np.array([True, False, True, False])
    got = assemble_batch(cache.patches, idx, flip)  # a read-only memmap
    np.testing.assert_array_equal(got, reference_batch(np.asarray(cache.patches), idx, flip))
    np.testing.assert_array_equal(got[2], got[3][:, :, ::-1])
    good = np.empty((4, 3, 55, 47), np.float32)
    bad_outs = [good.astype(np.float64), np.empty((4, 3, 47, 55), np.float32),
                np.empty((4, 3, 55, 94), np.float32)[..., ::2], np.empty((5, 3, 55, 47), np.float32)]
    for out in bad_outs:
        with pytest.raises(ValueError, match="out must be"):
            assemble_batch(cache.patches, idx, flip, out=out)
    with pytest.raises(ValueError, match="flip"):
        assemble_batch(cache.patches, idx, flip[:3])
    for bad_idx in ([0, 20], [-1, 2], [[0, 1]]):
        with pytest.raises(ValueError, match="indices"):
            assemble_batch(cache.patches, bad_idx, None)
    with pytest.raises(ValueError, match="uint8"):
        assemble_batch(np.zeros((2, 55, 47, 3), np.float32), [0], None)


def test_scan_identities_follows_symbolic_links(tmp_path):
    """Linked identity folders and linked images are read, as `deepid2 align` reads them;
    a broken link is listed so the cache names it as skipped."""
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "real").mkdir(parents=True)
    other.mkdir()
    img = np.full((120, 120, 3), 128, np.uint8)
    cv2.imwrite(str(root / "real" / "a.jpg"), img)
    cv2.imwrite(str(other / "b.jpg"), img)
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "real" / "c.jpg").symlink_to(other / "b.jpg")
    (root / "real" / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    got = {n: [os.path.basename(p) for p in ps] for n, ps in scan_identities(root)}
    assert got == {"linked": ["b.jpg"], "real": ["a.jpg", "c.jpg", "gone.jpg"]}
    cache = build_cache(root, tmp_path / "cache", progress=False)
    assert len(cache) == 3 and cache.identities == ["linked", "real"]
    assert dict(cache.skipped)[os.path.join("real", "gone.jpg")].startswith("broken symbolic")
