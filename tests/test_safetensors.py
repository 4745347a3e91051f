import json
import struct

import numpy as np
import pytest

from deepid2_core import safetensors as st


def sample(rng):
    return {"a": rng.standard_normal((3, 4)).astype(np.float32),
            "b/int": rng.integers(-5, 5, size=(7,)).astype(np.int32),
            "c": rng.integers(0, 255, size=(2, 2, 3)).astype(np.uint8),
            "scalar": np.float32(rng.standard_normal()).reshape(())}


def test_round_trip_and_metadata(tmp_path):
    rng = np.random.default_rng(3)
    t = sample(rng)
    st.save(tmp_path / "m.safetensors", t, {"epoch": "3", "name": "x"})
    back, meta = st.load(tmp_path / "m.safetensors")
    assert meta == {"epoch": "3", "name": "x"}
    assert sorted(back) == sorted(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape
        assert back[k].tobytes() == t[k].tobytes()
        assert back[k].flags.writeable
    # the same tensors give the same bytes
    st.save(tmp_path / "n.safetensors", t, {"epoch": "3", "name": "x"})
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "n.safetensors").read_bytes()


def test_header_layout_is_standard(tmp_path):
    st.save(tmp_path / "m.safetensors", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert np.frombuffer(raw[8 + n:], "<f4").tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -1, -13])
def test_truncated_files_are_refused(tmp_path, cut):
    st.save(tmp_path / "m.safetensors", sample(np.random.default_rng(1)))
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    with pytest.raises(st.SafetensorsError):
        st.load(tmp_path / "t.safetensors")


def hostile(tmp_path, header, body=b"\0" * 64, length=None):
    blob = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + body)
    return path


@pytest.mark.parametrize("header,match", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 100]}}, "offsets"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, "offsets"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "offsets"),
    ({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, "bad header"),
    ({"w": {"dtype": "F32", "shape": [4]}}, "bad header"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "overlap"),
    ([1, 2, 3], "not a JSON object"),
])
def test_hostile_headers_are_refused(tmp_path, header, match):
    with pytest.raises(st.SafetensorsError, match=match):
        st.load(hostile(tmp_path, header))


def test_header_length_beyond_the_file(tmp_path):
    with pytest.raises(st.SafetensorsError, match="does not fit"):
        st.load(hostile(tmp_path, {}, length=10 ** 12))
    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(st.SafetensorsError, match="corrupt header"):
        st.load(path)


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    st.save(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()

    class Boom(RuntimeError):
        pass

    def explode(*a, **k):
        raise Boom()
    monkeypatch.setattr(st.os, "fsync", explode)
    with pytest.raises(Boom):
        st.save(path, {"w": np.zeros(1000, np.float32)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp left behind
