"""The C++ inference library (cpp/, deepid2::Model) against the production
Python path, the one `deepid2 verify` runs: Python writes a random verifier
file (format 1, or 2 with one net config per patch), `Verifier.load` reads
it, cuts the patches of random aligned faces and computes their features and
Joint Bayesian scores; the C++ tools built from cpp/ get the same patches and
must agree to 1e-5 relative; malformed files are refused by both.

The tools come from DEEPID2_CPP_TOOLS, or an up-to-date CMake build (build/cpp
or .ci-build, if newer than every source in cpp/), else they are built into a
temporary folder; without cmake or a compiler the tests skip, saying so.
"""
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepid2_core import safetensors
from deepid2_core.face.inputs import PatchSpec
from deepid2_core.face.detect import read_image
from deepid2_core.nets.deepid2 import NetConfig, init_params
from deepid2_core.synth import make_dataset
from deepid2_core.verifier.features import PatchInputs
from deepid2_core.verifier.model import DEFAULT_MODEL, Verifier
from deepid2_core.verifier.model_file import read_verifier_file, save_verifier

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPP = os.path.join(REPO, "cpp")
TOOLS = ("deepid2_dump", "deepid2_verify_patches", "deepid2_write_fixture")


def _newest_source():
    return max(os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(CPP) for f in fs)


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    given = os.environ.get("DEEPID2_CPP_TOOLS")   # ctest's python_agreement: its own build
    if given:
        return {t: os.path.join(given, t) for t in TOOLS}
    newest = _newest_source()
    for build in (os.path.join(REPO, "build", "cpp"), os.path.join(REPO, ".ci-build")):
        paths = [os.path.join(build, t) for t in TOOLS]
        if all(os.path.exists(p) and os.path.getmtime(p) >= newest for p in paths):
            return dict(zip(TOOLS, paths))
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed: cannot build the C++ tools")
    build = str(tmp_path_factory.mktemp("cpp-build"))
    for cmd in (["cmake", "-S", CPP, "-B", build, "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", build, "-j", "2", "--target", *TOOLS]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"C++ build failed (no compiler?): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return {t: os.path.join(build, t) for t in TOOLS}


def _random_verifier(path, cfg, n_patches, d, seed):
    """cfg: one NetConfig for all patches, or a list of one per patch."""
    rng = np.random.default_rng(seed)
    cfgs = cfg if isinstance(cfg, list) else [cfg] * n_patches
    params = []
    for i in range(n_patches):
        p = init_params(cfgs[i], seed + i)
        for k in p:  # non-zero biases, so every parameter matters
            if k.endswith(".b"):
                p[k] = rng.uniform(0.0, 0.1, p[k].shape).astype(np.float32)
        params.append(p)
    D = 2 * n_patches * cfgs[0].feature_dim
    A = rng.standard_normal((d, d)) * 0.1
    G = rng.standard_normal((d, d)) * 0.1
    # the whole-face crop at each network's input size: the patches Verifier.load cuts
    inputs = PatchInputs(tuple(PatchSpec(c.height, c.width, c.channels) for c in cfgs))
    save_verifier(path, params, cfg, [f"patch{i}" for i in range(n_patches)], "test",
                  rng.uniform(0, 0.2, D), rng.standard_normal((D, d)) / np.sqrt(D),
                  (A + A.T) / 2, (G + G.T) / 2, 0.0,
                  extra_meta={"note": "random test model",
                              "patch_inputs": json.dumps(inputs.to_dict())})
    return params


def _faces(n, seed):
    """n random aligned "faces": uint8 250 x 250 x 3 BGR, smooth enough that
    resizing keeps structure, never constant."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 25, 25, 3)).astype(np.uint8)
    return [np.ascontiguousarray(np.repeat(np.repeat(f, 10, 0), 10, 1)
                                 + rng.integers(0, 8, (250, 250, 3), dtype=np.uint8))
            for f in small]


def _cpp_input(verifier, faces):
    """What the C++ tools take: per face its 2P cut patches (the production
    cut), each C x H x W planar, back to back; uint8 (n x input_size)."""
    return np.stack([np.concatenate([q.transpose(2, 0, 1).reshape(-1)
                                     for q in verifier.cut_patches(f)]) for f in faces])


def _normalised(u8):
    return ((u8.astype(np.float32) - np.float32(127.5)) / np.float32(128)).astype(np.float32)


def _check_pair_lines(verifier, stdout, feats):
    lines = [ln.split() for ln in stdout.splitlines() if ln.startswith("pair ")]
    n = len(feats)
    assert len(lines) == n * (n - 1) // 2
    for _, i, j, score, same in lines:
        i, j = int(i), int(j)
        ref = float(verifier.score(feats[i:i + 1], feats[j:j + 1])[0])
        # 1e-5 relative to the size of the score's three terms (they may cancel)
        assert abs(float(score) - ref) <= 1e-5 * _jb_magnitude(verifier, feats[i], feats[j]), \
            (i, j, score, ref)
        assert int(same) == int(bool(verifier.same(feats[i:i + 1], feats[j:j + 1])[0]))


def _jb_magnitude(verifier, a, b):
    z1, z2 = verifier.project(np.atleast_2d(a))[0], verifier.project(np.atleast_2d(b))[0]
    A, G = verifier.jb.A, verifier.jb.G
    return abs(z1 @ A @ z1) + abs(z2 @ A @ z2) + 2 * abs(z1 @ G @ z2)


CASES = [  # (config, patch networks, PCA dim): the paper's net, and a small one with conv3_region
    (NetConfig(n_classes=10), 2, 48),
    (NetConfig(n_classes=5, height=33, width=31, channels=1, feature_dim=24,
               conv3_region=(2, 3)), 3, 20),
]


@pytest.mark.parametrize("cfg,n_patches,d", CASES)
def test_cpp_features_and_scores_match_python(tools, tmp_path, cfg, n_patches, d):
    model_path = str(tmp_path / "model.safetensors")
    _random_verifier(model_path, cfg, n_patches, d, seed=3)
    verifier = Verifier.load(model_path, progress=False)
    n = 5
    faces = _faces(n, seed=1)
    want = verifier.features(faces)
    r = _dump(tools, model_path, tmp_path, _normalised(_cpp_input(verifier, faces)), n)
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "features.f32", np.float32).reshape(n, -1)
    assert got.shape == want.shape == (n, 2 * n_patches * cfg.feature_dim)
    assert np.count_nonzero(want) > want.size // 4  # the ReLUs did not kill everything
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    _check_pair_lines(verifier, r.stdout, want)


def test_cpp_example_verify_agrees_with_python(tools, tmp_path):
    cfg, n_patches = CASES[1][0], CASES[1][1]
    model_path = str(tmp_path / "model.safetensors")
    _random_verifier(model_path, cfg, n_patches, 20, seed=8)
    verifier = Verifier.load(model_path, progress=False)
    faces = _faces(2, seed=2)
    u8 = _cpp_input(verifier, faces)
    u8[0].tofile(tmp_path / "a.u8")                  # normalised by the example itself
    _normalised(u8[1]).tofile(tmp_path / "b.f32")
    r = subprocess.run([tools["deepid2_verify_patches"], model_path, str(tmp_path / "a.u8"),
                        str(tmp_path / "b.f32")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    f = verifier.features(faces)
    ref = float(verifier.score(f[:1], f[1:2])[0])
    # the example prints 6 significant digits
    assert words[0] == "score" and abs(float(words[1]) - ref) <= 1e-5 * _jb_magnitude(verifier, f[0], f[1])
    assert words[2] == ("same" if ref >= verifier.threshold else "different")

    # a bad file: a clear message, exit status 1, no crash
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    r = subprocess.run([tools["deepid2_verify_patches"], str(tmp_path / "bad.safetensors"),
                        str(tmp_path / "a.u8"), str(tmp_path / "b.f32")], capture_output=True, text=True)
    assert r.returncode == 1 and "corrupt header" in r.stderr


def test_python_reads_the_cpp_fixture(tools, tmp_path):
    """The C++ test fixture writer and the Python reader agree on the format."""
    path = str(tmp_path / "fixture.safetensors")
    subprocess.run([tools["deepid2_write_fixture"], path, "--patches", "2"], check=True,
                   capture_output=True)
    model = read_verifier_file(path)
    assert len(model["patch_params"]) == 2 and model["net"].height == 31
    assert model["pca_components"].shape == (2 * 2 * 8, 6)


def test_save_verifier_rejects_bad_shapes(tmp_path):
    cfg = NetConfig(n_classes=3, height=31, width=31, channels=1, feature_dim=4)
    p = init_params(cfg, 0)
    D = 2 * 4
    ok = dict(pca_mean=np.zeros(D), pca_components=np.ones((D, 3)), jb_A=np.eye(3), jb_G=np.eye(3))
    save_verifier(str(tmp_path / "ok.safetensors"), [p], cfg, ["whole"], "whole", threshold=0.5, **ok)
    with pytest.raises(ValueError, match="pca_mean"):
        save_verifier(str(tmp_path / "x.safetensors"), [p], cfg, ["whole"], "whole", threshold=0.5,
                      **{**ok, "pca_mean": np.zeros(D + 1)})
    bad = dict(p)
    bad["conv3.w"] = bad["conv3.w"][:, :, :30]
    with pytest.raises(ValueError, match="conv3.w"):
        save_verifier(str(tmp_path / "x.safetensors"), [bad], cfg, ["whole"], "whole", threshold=0.5, **ok)
    with pytest.raises(ValueError, match="reserved"):
        save_verifier(str(tmp_path / "x.safetensors"), [p], cfg, ["whole"], "whole", threshold=0.5,
                      extra_meta={"format": "x"}, **ok)


@pytest.fixture(scope="module")
def synth_faces():
    """The three procedural faces cpp/examples/faces/make_faces.py cuts (synth
    seed 0; a and b one identity, c another), as aligned BGR arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, 2, 2, seed=0, progress=False, workers=1)
        ids = sorted(os.listdir(tmp))
        out = {}
        for name, (person, k) in {"synth_a": (ids[0], 0), "synth_b": (ids[0], 1),
                                  "synth_c": (ids[1], 0)}.items():
            files = sorted(os.listdir(os.path.join(tmp, person)))
            out[name], why = read_image(os.path.join(tmp, person, files[k]))
            assert why is None, why
    return out


@pytest.mark.parametrize("other", ["synth_b", "synth_c"])
def test_cpp_example_on_the_shipped_model(tools, synth_faces, other):
    """The example with the model `deepid2 verify` ships, on two procedural
    faces: its patch files are the production cut of those faces, and its
    score and verdict are the production `features` + `score`'s."""
    root = Path(__file__).resolve().parents[2]
    verifier = Verifier.load(DEFAULT_MODEL, progress=False)
    files = [root / "cpp" / "examples" / "faces" / f"{n}.u8" for n in ("synth_a", other)]
    faces = [synth_faces["synth_a"], synth_faces[other]]
    for path, cut in zip(files, _cpp_input(verifier, faces)):
        assert np.fromfile(path, np.uint8).tobytes() == cut.tobytes(), \
            f"{path} is not the current cut of its face: rerun cpp/examples/faces/make_faces.py"
    r = subprocess.run([tools["deepid2_verify_patches"], DEFAULT_MODEL, *map(str, files)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    f = verifier.features(faces)
    ref = float(verifier.score(f[:1], f[1:2])[0])
    assert words[0] == "score" and abs(float(words[1]) - ref) <= 1e-5 * _jb_magnitude(verifier, f[0], f[1])
    assert words[2] == ("same" if ref >= verifier.threshold else "different")
    assert (words[2] == "same") == (other == "synth_b")


# ---------------------------------------------------------------------------
# Format 2: one net config per patch (DeepID2's mixed patches: RGB and gray,
# 55x47 and 47x47).
MIXED = [NetConfig(n_classes=10), NetConfig(n_classes=10, height=47, width=47, channels=1),
         NetConfig(n_classes=10, height=47, width=47, channels=3)]


def _dump(tools, model_path, tmp_path, x, n):
    x.astype(np.float32).tofile(tmp_path / "patches.f32")
    return subprocess.run([tools["deepid2_dump"], model_path, str(tmp_path / "patches.f32"), str(n),
                           str(tmp_path / "features.f32")], capture_output=True, text=True)


def test_cpp_mixed_shapes_match_python(tools, tmp_path):
    model_path = str(tmp_path / "mixed.safetensors")
    _random_verifier(model_path, MIXED, 3, 40, seed=5)
    model = read_verifier_file(model_path)
    assert model["metadata"]["format"] == "deepid2-verifier/2" and "net" not in model["metadata"]
    assert model["nets"] == MIXED and model["net"] == MIXED[0]
    assert [json.loads(model["metadata"]["nets"])[i]["channels"] for i in range(3)] == [3, 1, 3]

    verifier = Verifier.load(model_path, progress=False)
    n = 4
    faces = _faces(n, seed=7)
    r = _dump(tools, model_path, tmp_path, _normalised(_cpp_input(verifier, faces)), n)
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "features.f32", np.float32).reshape(n, -1)
    want = verifier.features(faces)
    assert got.shape == want.shape == (n, 2 * 3 * 160)
    for q in range(6):  # every network's block is alive, not only the first
        assert np.count_nonzero(want[:, q * 160:(q + 1) * 160]) > n * 160 // 4, q
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    _check_pair_lines(verifier, r.stdout, want)

    # a patch buffer sized as 2P x patch 0's shape is refused, not over-read
    r = _dump(tools, model_path, tmp_path, np.ones((n, 6, 3, 55, 47), np.float32), n)
    assert r.returncode == 1 and "does not match" in r.stderr


def test_equal_configs_write_format_1(tools, tmp_path):
    """A list of equal configs writes the same bytes as one config (format 1),
    and such a file reads back with nets = [net] * P on both sides."""
    cfg = CASES[1][0]
    one, many = str(tmp_path / "one.safetensors"), str(tmp_path / "many.safetensors")
    _random_verifier(one, cfg, 3, 20, seed=4)
    _random_verifier(many, [cfg] * 3, 3, 20, seed=4)
    assert open(one, "rb").read() == open(many, "rb").read()
    model = read_verifier_file(many)
    assert model["metadata"]["format"] == "deepid2-verifier/1" and "nets" not in model["metadata"]
    assert model["nets"] == [cfg] * 3 and model["net"] == cfg
    verifier = Verifier.load(many, progress=False)
    faces = _faces(2, seed=3)
    r = _dump(tools, many, tmp_path, _normalised(_cpp_input(verifier, faces)), 2)
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "features.f32", np.float32).reshape(2, -1)
    want = verifier.features(faces)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # features of the cut patches are the features of the faces
    np.testing.assert_array_equal(
        verifier.patch_features([verifier.cut_patches(f) for f in faces]), want)


def _edited(tmp_path, src, name, meta_edit=None, tensor_edit=None):
    tensors, meta = safetensors.load(src)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    path = str(tmp_path / f"{name}.safetensors")
    safetensors.save(path, tensors, meta)
    return path


def _nets_edit(fn):
    def edit(meta):
        nets = json.loads(meta["nets"])
        fn(nets)
        meta["nets"] = json.dumps(nets)
    return edit


# (name, metadata edit, tensor edit, what Python's ValueError says, what C++ says)
MALFORMED = [
    ("missing nets", lambda m: m.pop("nets"), None, 'metadata "nets" is missing', '"nets" is missing'),
    ("nets too short", _nets_edit(lambda n: n.pop()), None, "got 2 configs",
     "2 net configs for 3 patches"),
    ("nets too long", _nets_edit(lambda n: n.append(n[0])), None, "got 4 configs",
     "4 net configs for 3 patches"),
    ("both keys", lambda m: m.update(net=json.dumps(MIXED[0].to_dict())), None,
     'both "net" and "nets"', 'both "net" and "nets"'),
    ("feature_dim differs", _nets_edit(lambda n: n[2].update(feature_dim=128)), None,
     "feature_dim 128", "nets[2] has feature_dim 128"),
    ("unknown key", _nets_edit(lambda n: n[1].update(dropout=0.5)), None,
     r"nets\[1\] is not a valid net config: unknown key 'dropout'",
     'nets[1] config has an unknown key "dropout"'),
    ("wrong tensor shape for patch 1", None,
     lambda t: t.update({"patch1/conv1.w": np.full((1, 1, 20, 3, 4, 4), 0.01, np.float32)}),
     r"patch 1: conv1.w has shape \(1, 1, 20, 3, 4, 4\)", '"patch1/conv1.w" has shape (1, 1, 20, 3, 4, 4)'),
    ("config differs from the tensors", _nets_edit(lambda n: n[1].update(channels=3)), None,
     "patch 1: conv1.w", "expected (1, 1, 20, 3, 4, 4) (from nets[1])"),
]


@pytest.mark.parametrize("name,meta_edit,tensor_edit,py_says,cpp_says", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_format_2_refused_by_both(tools, tmp_path, name, meta_edit, tensor_edit,
                                            py_says, cpp_says):
    good = str(tmp_path / "good.safetensors")
    _random_verifier(good, MIXED, 3, 12, seed=1)
    bad = _edited(tmp_path, good, name.replace(" ", "_"), meta_edit, tensor_edit)
    with pytest.raises(ValueError, match=py_says):
        read_verifier_file(bad)
    with pytest.raises(ValueError, match=py_says):
        Verifier.load(bad)
    r = subprocess.run([tools["deepid2_dump"], bad, str(tmp_path / "none.f32"), "1",
                        str(tmp_path / "f.f32")], capture_output=True, text=True)
    assert r.returncode == 1 and cpp_says in r.stderr, r.stderr


def test_format_2_argument_checks(tmp_path):
    """save_verifier and the verifier's patch_features refuse inconsistent configs and patches,
    naming the problem."""
    params = [init_params(c, i) for i, c in enumerate(MIXED)]
    D, d = 2 * 3 * 160, 8
    ok = dict(pca_mean=np.zeros(D), pca_components=np.ones((D, d)), jb_A=np.eye(d), jb_G=np.eye(d),
              threshold=0.0)
    names = ["a", "b", "c"]
    path = str(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="2 net configs for 3 patch networks"):
        save_verifier(path, params, MIXED[:2], names, "test", **ok)
    other_dim = [MIXED[0], MIXED[1], NetConfig(n_classes=10, height=47, width=47, feature_dim=128)]
    with pytest.raises(ValueError, match="patch 2's net config has feature_dim 128"):
        save_verifier(path, params, other_dim, names, "test", **ok)
    with pytest.raises(ValueError, match="patch 1: conv1.w has shape"):
        save_verifier(path, [params[0], params[2], params[1]], MIXED, names, "test", **ok)
    with pytest.raises(ValueError, match="reserved key 'nets'"):
        save_verifier(path, params, MIXED, names, "test", extra_meta={"nets": "[]"}, **ok)

    path = str(tmp_path / "m.safetensors")
    _random_verifier(path, MIXED, 3, 8, seed=2)
    verifier = Verifier.load(path, progress=False)
    patches = verifier.cut_patches(_faces(1, seed=2)[0])
    assert [q.shape for q in patches] == [(55, 47, 3)] * 2 + [(47, 47, 1)] * 2 + [(47, 47, 3)] * 2
    with pytest.raises(ValueError, match="face 0 has 5 patches, this model takes 6"):
        verifier.patch_features([patches[:5]])
    swapped = patches[:2] + [patches[4], patches[3]] + patches[4:]
    with pytest.raises(ValueError, match=r"face 0, patch 2: expected a uint8 array of shape "
                                         r"\(47, 47, 1\) \(h, w, c\), got uint8 \(47, 47, 3\)"):
        verifier.patch_features([swapped])
    with pytest.raises(ValueError, match="patch 0: expected a uint8 array.*got float32"):
        verifier.patch_features([[q.astype(np.float32) for q in patches]])
    with pytest.raises(ValueError, match="fitted on features and has no patch networks"):
        Verifier(verifier.pca, verifier.jb, 0.0).features(_faces(1, seed=2))


DATA = Path(os.environ.get("DEEPID2_DATA", Path(REPO).parent / "shared" / "data"))
PHOTOS = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
          "Abdullah_Gul/Abdullah_Gul_0001.jpg", "George_W_Bush/George_W_Bush_0007.jpg",
          "Pascal_Rheaume/Pascal_Rheaume_0001.jpg", "Adrian_Nastase/Adrian_Nastase_0002.jpg"]


def test_cpp_pipeline_features_equal_pythons_on_lfw_photographs(tools, tmp_path):
    """One implementation: a C++ program (its own JPEG decoder, deepid2::Pipeline) and
    the Python API give the same features, bit for bit, for real photographs."""
    import deepid2_core
    bench = os.path.join(os.path.dirname(tools["deepid2_dump"]), "deepid2_bench_pipeline")
    photos = [str(DATA / "lfw" / p) for p in PHOTOS]
    if not all(os.path.isfile(p) for p in photos):
        pytest.skip(f"{DATA} has no LFW (set DEEPID2_DATA to the shared data folder)")
    if not os.path.isfile(bench):
        pytest.skip(f"{bench} was not built (no libjpeg/libpng found by CMake)")
    out = tmp_path / "features.f32"
    r = subprocess.run([bench, "--models", os.path.join(REPO, "deepid2_core", "models"),
                        "--warmup", "0", "--features", str(out), *photos],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model = deepid2_core.load()
    cpp = np.fromfile(out, np.float32).reshape(len(photos), -1)
    ours = np.stack([model.embed(p) for p in photos])
    assert np.isfinite(cpp).all() and cpp.shape == ours.shape
    np.testing.assert_array_equal(cpp, ours)
    assert len({row.tobytes() for row in cpp}) == len(photos)     # six photos, six vectors
