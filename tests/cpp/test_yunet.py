"""The C++ YuNet (cpp/src/face/yunet*.cpp through deepid2_core._cpu) against
cv2.FaceDetectorYN and face.box's "yunet" rule, and its model file: the
converted tensors, and clean errors for damaged or hostile files."""
import glob
import json
import os
import shutil
import tempfile

import cv2
import numpy as np
import pytest

from deepid2_core import _cpu, safetensors
from deepid2_core.face import box as B
from deepid2_core.face.detect import YUNET_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "deepid2_core", "models", "yunet.safetensors")
DATA = os.environ.get("DEEPID2_DATA", os.path.join(ROOT, "..", "shared", "data"))


def cv2_detect(img, score=0.6):
    det = cv2.FaceDetectorYN.create(YUNET_MODEL, "", (img.shape[1], img.shape[0]), score, 0.3, 5000)
    _, faces = det.detect(img)
    return np.zeros((0, 15), np.float32) if faces is None else faces


def assert_same_faces(ref, out, tol=1.0):
    assert out.dtype == np.float32 and out.shape[1:] == (15,)
    assert len(out) == len(ref), f"C++ found {len(out)} faces, cv2 {len(ref)}"
    for r in ref:  # each cv2 face has a C++ face within tol (order may differ at score ties)
        d = np.abs(out[:, :14] - r[:14]).max(1)
        assert d.min() <= tol, f"nearest C++ face is {d.min():.3f} px off"
        assert abs(out[d.argmin(), 14] - r[14]) < 1e-3


@pytest.fixture(scope="module")
def synth_faces():
    from deepid2_core.synth import make_dataset
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, 2, 2, seed=0, progress=False, workers=1)
        files = sorted(glob.glob(os.path.join(tmp, "*", "*.jpg")))
        return [cv2.imread(f) for f in files]


# --- the converted file ------------------------------------------------------------

def test_converted_tensors_are_the_onnx_initialisers():
    onnx = pytest.importorskip("onnx", reason="the converter's check needs onnx")
    from onnx import numpy_helper
    model = onnx.load(YUNET_MODEL)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tensors, meta = safetensors.load(MODEL)
    assert meta["format"] == "deepid2-yunet/1" and meta["license"].startswith("MIT")
    for name, a in tensors.items():
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, inits[name], err_msg=name)
    conv_params = {n for node in model.graph.node if node.op_type == "Conv" for n in node.input[1:]}
    assert set(tensors) == conv_params
    graph = json.loads(meta["graph"])
    assert [n["op"] for n in graph["nodes"]] == [n.op_type for n in model.graph.node]


def test_converter_reproduces_the_committed_file(tmp_path):
    pytest.importorskip("onnx", reason="the converter needs onnx")
    import importlib.util
    spec = importlib.util.spec_from_file_location("convert_yunet",
                                                  os.path.join(ROOT, "cpp", "tools", "convert_yunet.py"))
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    out = tmp_path / "y.safetensors"
    conv.convert(YUNET_MODEL, str(out))
    assert out.read_bytes() == open(MODEL, "rb").read(), \
        "yunet.safetensors is stale: rerun cpp/tools/convert_yunet.py"


# --- detect against cv2.FaceDetectorYN ----------------------------------------------

def test_synthetic_faces_match_cv2(synth_faces):
    found = 0
    for img in synth_faces:
        ref = cv2_detect(img)
        found += len(ref)
        assert_same_faces(ref, _cpu.yunet_detect(MODEL, img))
    assert found >= 2, "the procedural faces should be found"


@pytest.mark.parametrize("shape", [(240, 320), (97, 131), (33, 64), (250, 250), (1, 1), (8, 500)])
def test_noise_at_a_low_threshold_matches_cv2(shape):
    """Blurred noise at score 0.02: many candidate boxes, so NMS and the
    padding to a multiple of 32 are exercised on odd sizes."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    img = rng.integers(0, 256, shape + (3,), np.uint8)
    if min(shape) > 4:
        img = cv2.GaussianBlur(img, (0, 0), 2)
    assert_same_faces(cv2_detect(img, 0.02), _cpu.yunet_detect(MODEL, img, 0.02))


def test_faces_cut_by_the_border_and_several_faces(synth_faces):
    a, b = synth_faces[0], synth_faces[2]
    canvas = np.concatenate([a, cv2.flip(b, 1), a[:, 60:]], 1)  # the last one cut on its left
    canvas = np.ascontiguousarray(canvas[20:])
    ref = cv2_detect(canvas)
    assert len(ref) >= 2
    assert_same_faces(ref, _cpu.yunet_detect(MODEL, canvas))


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "lfw")),
                    reason=f"no LFW under {DATA} (set DEEPID2_DATA)")
def test_lfw_images_match_cv2():
    files = sorted(glob.glob(os.path.join(DATA, "lfw", "*", "*.jpg")))[::260][:50]
    assert len(files) == 50
    for f in files:
        img = cv2.imread(f)
        assert_same_faces(cv2_detect(img), _cpu.yunet_detect(MODEL, img))


# --- find_faces against face.box's "yunet" rule -------------------------------------

def python_rule(img, pick="largest"):
    raw, scores = B.yunet_raw_boxes(img, max_side=1024)
    order = B.order_faces(raw, img.shape, pick)
    return B.yunet_to_haar(raw[order]), scores[order]


def assert_rule_matches(img, pick="largest"):
    boxes, scores = python_rule(img, pick)
    out = _cpu.yunet_find_faces(MODEL, img, pick)
    assert out.dtype == np.float64 and out.shape == (len(boxes), 15)
    np.testing.assert_allclose(out[:, :4], boxes, atol=1.0)
    np.testing.assert_allclose(out[:, 14], scores, atol=1e-3)
    return out


def test_small_image_found_by_the_retry(synth_faces):
    small = cv2.resize(synth_faces[0], (64, 64), interpolation=cv2.INTER_AREA)
    assert len(cv2_detect(small)) == 0, "this case should need the 2x retry"
    out = assert_rule_matches(small)
    assert len(out) == 1
    # landmarks: cv2 on the upscaled image, mapped back as the rule maps boxes
    up = cv2.resize(small, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    ref = cv2_detect(up)
    pad = 0
    if len(ref) == 0:
        pad = 40
        ref = cv2_detect(cv2.copyMakeBorder(up, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
    lm = (ref[0, 4:14].astype(np.float64) - pad + 0.5) / 2 - 0.5
    np.testing.assert_allclose(out[0, 4:14], lm, atol=0.5)


def test_image_over_max_side_is_shrunk(synth_faces):
    a, b = synth_faces[0], synth_faces[3]
    big = np.full((1100, 1400, 3), 90, np.uint8)
    big[100:800, 50:750] = cv2.resize(a, (700, 700))
    big[400:920, 800:1320] = cv2.resize(b, (520, 520))
    out = assert_rule_matches(big)
    assert len(out) == 2
    assert out[0, 2] > out[1, 2]  # largest first
    centre = assert_rule_matches(big, "center")
    assert len(centre) == 2


def test_find_faces_on_images_without_faces():
    assert _cpu.yunet_find_faces(MODEL, np.zeros((3, 3, 3), np.uint8)).shape == (0, 15)
    assert _cpu.yunet_find_faces(MODEL, np.full((40, 30, 3), 128, np.uint8)).shape == (0, 15)


# --- arguments and damaged files ----------------------------------------------------

def test_argument_checks():
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        _cpu.yunet_detect(MODEL, img.astype(np.float32))
    with pytest.raises(TypeError, match="ndarray"):
        _cpu.yunet_detect(MODEL, [[1, 2, 3]])
    with pytest.raises(ValueError, match="H x W x 3"):
        _cpu.yunet_detect(MODEL, img[:, :, 0])
    with pytest.raises(ValueError, match="H x W x 3"):
        _cpu.yunet_detect(MODEL, np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.yunet_detect(MODEL, img[:, ::2])
    with pytest.raises(ValueError, match="score_threshold"):
        _cpu.yunet_detect(MODEL, img, 1.5)
    with pytest.raises(ValueError, match="pick"):
        _cpu.yunet_find_faces(MODEL, img, "left")
    with pytest.raises(OSError, match="cannot open"):
        _cpu.yunet_detect(os.path.join(ROOT, "no-such-model.safetensors"), img)


def test_truncated_and_corrupted_files_are_clean_errors(tmp_path):
    data = open(MODEL, "rb").read()
    img = np.zeros((40, 40, 3), np.uint8)
    cases = {"truncated": data[: len(data) // 2], "header-only": data[:100], "empty": b"",
             "flipped": data[:-10] + bytes([data[-10] ^ 0x40]) + data[-9:]}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match="yunet|safetensors|sha256") as e:
            _cpu.yunet_detect(str(p), img)
        assert str(p) in str(e.value)


def _graph_and_tensors():
    tensors, meta = safetensors.load(MODEL)
    return tensors, dict(meta), json.loads(meta["graph"])


def _edit(graph, what):
    nodes = graph["nodes"]
    conv = next(n for n in nodes if n["op"] == "Conv")
    if what == "unknown op":
        nodes[3]["op"] = "Gemm"
    elif what == "undefined input":
        nodes[5]["inputs"][0] = "nowhere"
    elif what == "stride 0":
        conv["attrs"]["strides"] = [0, 0]
    elif what == "huge stride":
        conv["attrs"]["strides"] = [1 << 40, 1]
    elif what == "wrong group":
        conv["attrs"]["group"] = 5
    elif what == "bad reshape":
        next(n for n in nodes if n["op"] == "Reshape")["attrs"]["shape"] = [1, -1, 7]
    elif what == "bad perm":
        next(n for n in nodes if n["op"] == "Transpose")["attrs"]["perm"] = [0, 0, 3, 1]
    elif what == "resize scale":
        next(n for n in nodes if n["op"] == "Resize")["attrs"]["scales"] = [1, 1, 1e9, 2]
    elif what == "missing output":
        graph["outputs"] = graph["outputs"][:-1]
    elif what == "duplicate output":
        nodes[4]["outputs"] = nodes[2]["outputs"]
    elif what == "cycle":
        nodes[0]["inputs"][0] = nodes[-1]["outputs"][0]
    elif what == "not a list":
        graph["nodes"] = {"a": 1}
    return graph


@pytest.mark.parametrize("what", ["unknown op", "undefined input", "stride 0", "huge stride",
                                  "wrong group", "bad reshape", "bad perm", "resize scale",
                                  "missing output", "duplicate output", "cycle", "not a list",
                                  "wrong weight shape", "unused tensor", "format", "not json"])
def test_hostile_graphs_are_format_errors(tmp_path, what):
    tensors, meta, graph = _graph_and_tensors()
    if what == "wrong weight shape":
        name = next(iter(sorted(tensors)))
        tensors[name] = tensors[name].reshape(-1)[:-1].copy()
    elif what == "unused tensor":
        tensors["extra"] = np.zeros(3, np.float32)
    elif what == "format":
        meta["format"] = "deepid2-yunet/9"
    elif what == "not json":
        meta["graph"] = meta["graph"][:-3]
    else:
        meta["graph"] = json.dumps(_edit(graph, what))
    p = tmp_path / "m.safetensors"
    safetensors.save(str(p), tensors, meta)
    with pytest.raises(ValueError, match="yunet model"):
        _cpu.yunet_detect(str(p), np.zeros((64, 64, 3), np.uint8))


def test_an_edited_file_is_reloaded(tmp_path):
    p = tmp_path / "m.safetensors"
    shutil.copy(MODEL, p)
    img = np.zeros((64, 64, 3), np.uint8)
    _cpu.yunet_detect(str(p), img)
    tensors, meta, graph = _graph_and_tensors()
    meta["format"] = "other"
    safetensors.save(str(p), tensors, meta)
    os.utime(p, ns=(1, 1))
    with pytest.raises(ValueError, match="format"):
        _cpu.yunet_detect(str(p), img)
