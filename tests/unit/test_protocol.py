"""The agent protocol's framing: round trips, corruption caught by the checksums, resync after
noise, limits; and the agent itself fuzzed with random and mutated frames."""

import io
import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgert.device.agent import Agent
from edgert.device.protocol import (
    HEAD,
    MAX_PAYLOAD,
    Code,
    FrameError,
    FrameReader,
    StreamClosed,
    encode,
)
from edgert.format.artifact import ArtifactWriter, crc32

#: frames the fuzz test sends the agent (the acceptance asks for at least 10 000)
FUZZ_FRAMES = 10_000


def read_all(data: bytes) -> list:
    """Every frame (or the FrameError message) a reader gets out of ``data``."""
    r = FrameReader(io.BytesIO(data))
    out = []
    while True:
        try:
            out.append(r.read())
        except FrameError as e:
            out.append(str(e))
        except StreamClosed:
            return out


def test_round_trip():
    frames = [
        (Code.HELLO, {"protocol": 1}, b""),
        (Code.REQUEST, {"id": 7, "action": "x", "args": {"s": "é ; 'q' \"d\""}}, b"\x00\xff" * 9),
        (Code.REPLY, {}, bytes(range(256)) * 100),
    ]
    got = read_all(b"".join(encode(*f) for f in frames))
    assert [(f.code, f.header, f.payload) for f in got] == frames


def test_noise_and_corruption_cost_one_frame():
    good = encode(Code.REQUEST, {"id": 1}, b"payload")
    bad_body = bytearray(good)
    bad_body[-2] ^= 0x10  # payload byte
    bad_len = bytearray(good)
    bad_len[12] ^= 0x7F  # payload length: caught by the head checksum, nothing waited for
    stream = b"line noise" + bytes(bad_body) + good + bytes(bad_len) + good + b"EDR"
    got = read_all(stream)
    frames = [g for g in got if not isinstance(g, str)]
    errors = [g for g in got if isinstance(g, str)]
    assert len(frames) == 2 and all(f.header == {"id": 1} for f in frames)
    assert any("checksum mismatch (corrupted frame)" in e for e in errors)
    assert any("frame head" in e for e in errors)
    assert any("bad magic" in e for e in errors)


def test_limits():
    with pytest.raises(ValueError, match="too large"):
        encode(Code.REPLY, {}, b"\x00" * (MAX_PAYLOAD + 1))
    # a head announcing an oversized body (with a valid head checksum) is refused at once
    head = HEAD.pack(b"EDRT", 1, 3, 0, 10, MAX_PAYLOAD + 1, 0, 0)[:20]
    head += zlib.crc32(head).to_bytes(4, "little")
    assert "exceeds the limits" in read_all(head)[0]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=400))
def test_reader_survives_any_bytes(data):
    for item in read_all(data):
        assert isinstance(item, str) or item.code in Code


# -- the agent under fuzzing --------------------------------------------------------------------
def serve(frames: bytes, root) -> list:
    out = io.BytesIO()
    Agent(io.BytesIO(frames), out, root=root).serve()
    return read_all(out.getvalue())


def mutate(rng, frame: bytes) -> bytes:
    b = bytearray(frame)
    kind = rng.integers(0, 5)
    if kind == 0 and b:  # flip bits
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(0, len(b))] ^= 1 << rng.integers(0, 8)
    elif kind == 1:  # truncate
        b = b[: rng.integers(0, len(b) + 1)]
    elif kind == 2:  # random bytes
        b = bytearray(rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8).tobytes())
    elif kind == 3:  # a valid frame with a hostile request
        hostile = [
            {"id": 1, "action": "file.put", "args": {"path": "../../etc/x", "offset": 0}},
            {"id": 2, "action": "artifact.load", "args": {"name": "../x"}},
            {"id": 3, "action": "run.infer", "args": {"name": None}},
            {"id": 4, "action": ["not", "a", "string"]},
            {"id": 5, "action": "file.stat", "args": "nope"},
            {"id": 6, "action": "file.put", "args": {"path": "a", "offset": -5, "crc32": 3}},
        ]
        b = bytearray(encode(Code.REQUEST, hostile[rng.integers(0, len(hostile))]))
    else:  # a frame of a code the agent does not expect
        b = bytearray(encode(int(rng.choice([Code.REPLY, Code.EVENT, Code.ERROR])), {}))
    return bytes(b)


def test_agent_fuzzed(tmp_path):
    """FUZZ_FRAMES random and mutated frames: the agent never crashes or hangs, answers errors,
    writes nothing outside its root, and still answers a valid request at the end."""
    rng = np.random.default_rng(0)
    seeds = [
        encode(Code.REQUEST, {"id": 9, "action": "device.info"}),
        encode(Code.REQUEST, {"id": 9, "action": "artifact.list", "args": {}}),
        encode(Code.REQUEST, {"id": 9, "action": "file.stat", "args": {"path": "s/x"}}),
    ]
    parts = [mutate(rng, seeds[rng.integers(0, len(seeds))]) for _ in range(FUZZ_FRAMES)]
    final = encode(Code.REQUEST, {"id": 424242, "action": "device.info"})
    root = tmp_path / "root"
    got = serve(b"".join(parts) + final, root)
    errors = [g for g in got if not isinstance(g, str) and g.code == Code.ERROR]
    assert len(errors) > FUZZ_FRAMES // 10
    last = got[-1]
    assert last.code == Code.REPLY and last.header["id"] == 424242
    assert last.header["info"]["edgert_version"]
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_agent_survives_hypothesis_streams(tmp_path_factory, chunks):
    root = tmp_path_factory.mktemp("agent")
    final = encode(Code.REQUEST, {"id": 77, "action": "artifact.list"})
    got = serve(b"".join(chunks) + b"\x00" * 24 + final, root)
    assert got[0].code == Code.HELLO
    assert any(not isinstance(g, str) and g.header.get("id") == 77 for g in got)


# -- files: checksums, paths, atomic commit -----------------------------------------------------
def request(rid, action, args, payload=b""):
    return encode(Code.REQUEST, {"id": rid, "action": action, "args": args}, payload)


def replies(got) -> dict:
    return {g.header.get("id"): g for g in got if not isinstance(g, str) and g.code != Code.HELLO}


def test_file_actions(tmp_path):
    root = tmp_path / "root"
    data = b"hello world" * 100
    got = replies(
        serve(
            request(1, "file.put", {"path": "s/a", "offset": 0, "crc32": crc32(data[:500])},
                    data[:500])
            + request(2, "file.put", {"path": "s/a", "offset": 500, "crc32": "00000000"},
                      data[500:])  # wrong checksum: refused
            + request(3, "file.put", {"path": "s/a", "offset": 900, "crc32": crc32(data[500:])},
                      data[500:])  # a gap: refused
            + request(4, "file.stat", {"path": "s/a"})
            + request(5, "file.put", {"path": "../escape", "offset": 0, "crc32": crc32(b"x")},
                      b"x")
            + request(6, "file.put", {"path": "s/a", "offset": 500, "crc32": crc32(data[500:])},
                      data[500:]),
            root,
        )
    )  # fmt: skip
    assert got[1].code == Code.REPLY and got[1].header["size"] == 500
    assert got[2].code == Code.ERROR and "checksum" in got[2].header["error"]
    assert got[3].code == Code.ERROR and "resume at 500" in got[3].header["error"]
    assert got[4].header["size"] == 500 and got[4].header["crc32"] == crc32(data[:500])
    assert got[5].code == Code.ERROR and "leaves the agent root" in got[5].header["error"]
    assert not (tmp_path / "escape").exists()
    assert got[6].header["size"] == len(data)
    assert (root / "s" / "a").read_bytes() == data


def tiny_artifact(path, value: float):
    with ArtifactWriter(path, force=True) as w:
        w.add_tensor("w", {"data": np.full(4, value, np.float32)})
        w.manifest["kind"] = "test"


def test_commit_verifies_and_switches_atomically(tmp_path):
    root = tmp_path / "root"
    tiny_artifact(root / "artifacts" / "m", 1.0)  # the deployed version
    tiny_artifact(root / "staging" / "m", 2.0)
    man = json.loads((root / "staging" / "m" / "manifest.json").read_text())
    off = man["tensors"]["w"]["buffers"]["data"]["offset"]
    f = root / "staging" / "m" / "weights" / "resident.bin"
    b = bytearray(f.read_bytes())
    b[off] ^= 1  # corrupted in transit
    f.write_bytes(bytes(b))
    got = replies(serve(request(1, "file.commit", {"staging": "staging/m", "name": "m"}), root))
    assert got[1].code == Code.ERROR and "fails its checksum" in got[1].header["error"]
    live = np.frombuffer((root / "artifacts/m/weights/resident.bin").read_bytes()[:16], np.float32)
    assert (live == 1.0).all()  # the previous version is untouched
    tiny_artifact(root / "staging" / "m", 2.0)
    got = replies(serve(request(1, "file.commit", {"staging": "staging/m", "name": "m"}), root))
    assert got[1].code == Code.REPLY
    live = np.frombuffer((root / "artifacts/m/weights/resident.bin").read_bytes()[:16], np.float32)
    assert (live == 2.0).all() and not (root / "staging" / "m").exists()
