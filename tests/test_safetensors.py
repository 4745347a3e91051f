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


def parts(path):
    """(header dict, data bytes) of a file as written."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def rewrite(path, header, data):
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_checksum_is_of_exactly_the_data_bytes(tmp_path):
    import hashlib
    path = tmp_path / "m.safetensors"
    st.save(path, sample(np.random.default_rng(4)), {"epoch": "1"})
    header, data = parts(path)
    assert header["__metadata__"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert header["__metadata__"]["epoch"] == "1"
    assert all(isinstance(v, str) for v in header["__metadata__"].values())  # still safetensors
    # no metadata given: the checksum alone
    st.save(tmp_path / "bare.safetensors", {"w": np.zeros(0, np.float32)})
    header, data = parts(tmp_path / "bare.safetensors")
    assert data == b"" and header["__metadata__"] == {"sha256": hashlib.sha256(b"").hexdigest()}
    # the key is the container's: not returned, and not accepted from callers
    assert st.load(path)[1] == {"epoch": "1"}
    with pytest.raises(ValueError, match="reserved"):
        st.save(path, {"w": np.ones(1, np.float32)}, {"sha256": "0" * 64})


@pytest.mark.parametrize("where", [0, 17, -1])
def test_a_flipped_data_byte_is_refused_naming_the_file(tmp_path, where, capsys):
    path = tmp_path / "m.safetensors"
    st.save(path, sample(np.random.default_rng(5)))
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n + where if where >= 0 else where] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(st.SafetensorsError) as e:
        st.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: tensor data damaged (sha256 mismatch: stored ")
    assert ", computed " in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_old_file_without_checksum_loads_with_one_warning(tmp_path, capsys):
    path = tmp_path / "old.safetensors"
    t = sample(np.random.default_rng(6))
    st.save(path, t, {"epoch": "2"})
    header, data = parts(path)
    del header["__metadata__"]["sha256"]
    rewrite(path, header, data)
    back, meta = st.load(path)
    assert meta == {"epoch": "2"} and all(back[k].tobytes() == t[k].tobytes() for k in t)
    err = capsys.readouterr().err
    assert err == (f"warning: {path}: no sha256 checksum (written before checksums); "
                   "tensor data not verified\n")
    st.load(path)  # once per path
    assert capsys.readouterr().err == ""
    # no __metadata__ at all: the same
    del header["__metadata__"]
    rewrite(tmp_path / "older.safetensors", header, data)
    st.load(tmp_path / "older.safetensors")
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("value", ["", "abc", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63])
def test_a_malformed_checksum_is_refused(tmp_path, value):
    path = tmp_path / "m.safetensors"
    st.save(path, {"w": np.ones(4, np.float32)})
    header, data = parts(path)
    header["__metadata__"]["sha256"] = value
    rewrite(path, header, data)
    with pytest.raises(st.SafetensorsError, match=r"metadata sha256 is not a hex SHA-256"):
        st.load(path)
    header["__metadata__"]["sha256"] = 7  # not a string either
    rewrite(path, header, data)
    with pytest.raises(st.SafetensorsError, match=r"metadata sha256 is not a hex SHA-256"):
        st.load(path)


def test_a_wrong_checksum_in_a_well_formed_header_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    st.save(path, {"w": np.ones(4, np.float32)})
    header, data = parts(path)
    header["__metadata__"]["sha256"] = "AB" * 32  # upper case is read, but wrong
    rewrite(path, header, data)
    with pytest.raises(st.SafetensorsError, match=r"stored abababababababab\.\.\., computed "):
        st.load(path)


def test_shipped_models_carry_a_checksum(capsys):
    import os
    from deepid2_core import safetensors as s
    models = os.path.join(os.path.dirname(s.__file__), "models")
    for name in sorted(os.listdir(models)):
        if name.endswith(".safetensors"):
            raw = open(os.path.join(models, name), "rb").read(1 << 16)
            (n,) = struct.unpack("<Q", raw[:8])
            assert "sha256" in json.loads(raw[8:8 + n])["__metadata__"], name
    st.load(os.path.join(models, "landmarks.safetensors"))  # verified, without a warning
    assert capsys.readouterr().err == ""
