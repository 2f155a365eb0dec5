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


def put_args(path: str) -> dict:
    return {"path": path, "offset": 0, "crc32": crc32(b"")}


def mutate(rng, frame: bytes, absolute: str = "/nonexistent/x") -> bytes:
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
        # valid checksums: only path confinement stands between these and a write
        hostile = [
            {"id": 1, "action": "file.put", "args": put_args("../../etc/x")},
            {"id": 1, "action": "file.put", "args": put_args("staging/m/../../../../etc/x")},
            {"id": 1, "action": "file.put", "args": put_args(absolute)},
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
        encode(Code.REQUEST, {"id": 9, "action": "file.stat", "args": {"path": "staging/m/x"}}),
    ]
    absolute = str(tmp_path / "abs" / "x")
    parts = [mutate(rng, seeds[rng.integers(0, len(seeds))], absolute) for _ in range(FUZZ_FRAMES)]
    final = encode(Code.REQUEST, {"id": 424242, "action": "device.info"})
    # deep enough that "../../etc/x" from it still lands inside tmp_path, where it is looked for
    root = tmp_path / "a" / "b" / "root"
    got = serve(b"".join(parts) + final, root)
    errors = [g for g in got if not isinstance(g, str) and g.code == Code.ERROR]
    assert len(errors) > FUZZ_FRAMES // 10
    last = got[-1]
    assert last.code == Code.REPLY and last.header["id"] == 424242
    assert last.header["info"]["edgert_version"]
    assert_nothing_outside(tmp_path, root)


def assert_nothing_outside(top, root):
    """Nothing was written under ``top`` but inside ``root`` (its ancestors aside); the hostile
    paths' targets are all under ``top``."""
    assert (root / "../../etc/x").resolve().is_relative_to(top)
    kept = {root, *root.parents}
    outside = [p for p in top.rglob("*") if root not in p.parents and p not in kept]
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
    f = "staging/m/a"
    got = replies(
        serve(
            request(1, "file.put", {"path": f, "offset": 0, "crc32": crc32(data[:500])},
                    data[:500])
            + request(2, "file.put", {"path": f, "offset": 500, "crc32": "00000000"},
                      data[500:])  # wrong checksum: refused
            + request(3, "file.put", {"path": f, "offset": 900, "crc32": crc32(data[500:])},
                      data[500:])  # a gap: refused
            + request(4, "file.stat", {"path": f})
            + request(5, "file.put", {"path": "../escape", "offset": 0, "crc32": crc32(b"x")},
                      b"x")
            + request(6, "file.put", {"path": f, "offset": 500, "crc32": crc32(data[500:])},
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
    assert (root / "staging" / "m" / "a").read_bytes() == data


def put(rid, path, data=b"x", **extra):
    return request(rid, "file.put", {"path": path, "offset": 0, "crc32": crc32(data), **extra},
                   data)  # fmt: skip


def test_puts_reach_the_staging_area_only(tmp_path):
    """A put cannot write a deployed artifact or a version (which only a verified commit may
    change), nor leave the staging area through a link inside it."""
    root = tmp_path / "root"
    tiny_artifact(root / "staging" / "m", 1.0)
    serve(request(1, "file.commit", {"staging": "staging/m", "name": "m"}), root)
    live = (root / "artifacts" / "m").resolve()
    before = {p: p.read_bytes() for p in live.rglob("*") if p.is_file()}
    (root / "staging" / "evil").mkdir(parents=True)
    (root / "staging" / "evil" / "link").symlink_to(live)
    hostile = [
        "artifacts/m/manifest.json",
        f"versions/{live.name}/manifest.json",
        "staging/../artifacts/m/manifest.json",
        "staging/m/../../versions/x",
        "staging/evil/link/manifest.json",  # lexically fine, resolves into artifacts/
        "staging/m",  # the artifact's directory itself: a file is expected
        "staging/.hidden/x",
        "staging/m/.x",
        "staging/m//x",
        "staging/m/a\\..\\..\\x",
        str(root / "staging" / "m" / "abs"),
    ]
    got = replies(serve(b"".join(put(i, p) for i, p in enumerate(hostile)), root))
    for i, p in enumerate(hostile):
        assert got[i].code == Code.ERROR, p
        err = got[i].header["error"]
        assert "path" in err and ("expected" in err or "leaves the staging area" in err), err
    assert "leaves the agent root" in got[3].header["error"]
    assert "outside the staging area" in got[0].header["error"]
    after = {p: p.read_bytes() for p in live.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in (root / "versions").iterdir()) == [live.name]
    assert not (root / "staging" / "m").exists()  # committed: nothing was put back
    for act, args in [("file.stat", {"path": "artifacts/m/manifest.json"}),
                      ("file.commit", {"staging": "versions/" + live.name, "name": "m"}),
                      ("file.commit", {"staging": "staging/m/weights", "name": "m"})]:  # fmt: skip
        err = replies(serve(request(7, act, args), root))[7]
        assert err.code == Code.ERROR and "expected" in err.header["error"]
    assert live.exists() and (root / "artifacts" / "m").resolve() == live


def test_bad_requests_name_field_value_and_expectation(tmp_path):
    root = tmp_path / "root"
    cases = [
        ("file.put", {"path": "staging/m/a", "crc32": crc32(b"")}, "missing field 'offset'"),
        ("file.put", {"path": "staging/m/a", "offset": "0", "crc32": crc32(b"")},
         "field 'offset' = '0': expected an integer"),
        ("file.put", {"path": "staging/m/a", "offset": 10**30, "crc32": crc32(b"")},
         "field 'offset' = 1000000000000000000000000000000: expected an integer in [0, "),
        ("file.put", {"path": "staging/m/a", "offset": True, "crc32": crc32(b"")},
         "field 'offset' = True"),
        ("file.put", {"path": ["staging"], "offset": 0, "crc32": crc32(b"")}, "field 'path'"),
        ("file.put", {"path": "staging/m/a", "offset": 0, "crc32": 5}, "field 'crc32' = 5"),
        ("run.generate", {"name": "m", "temp": float("nan")}, "field 'temp' = nan"),
        ("run.generate", {"name": "m", "n_predict": -1}, "field 'n_predict' = -1"),
        ("run.generate", {"name": "x" * 500}, "field 'name' = 'xxxxx"),
        ("artifact.load", {"name": "m", "experts": {"policy": "fifo"}},
         "artifact.load.experts: field 'policy' = 'fifo': expected a string"),
        ("artifact.load", {"name": "m", "ffn": {"evil": 1}}, "field 'ffn' = {'evil': 1}"),
        ("artifact.load", {"name": "m", "dram_budget": 1.5}, "field 'dram_budget' = 1.5"),
        ("artifact.unload", {}, "missing field 'name'"),
        ("file.commit", {"staging": "staging/m"}, "missing field 'name'"),
    ]  # fmt: skip
    frames = b"".join(request(i, a, args) for i, (a, args, _) in enumerate(cases))
    frames += encode(Code.REQUEST, {"id": 99, "action": "device.info"})
    got = replies(serve(frames, root))
    for i, (action, _, want) in enumerate(cases):
        assert got[i].code == Code.ERROR, action
        err = got[i].header["error"]
        assert err.startswith(action.split(".")[0]) and want in err, err
        assert len(err) < 400 and "\n" not in err
    assert got[99].code == Code.REPLY


def test_limits_on_headers_payloads_and_ids(tmp_path):
    root = tmp_path / "root"
    big = {"id": 1, "action": "artifact.list", "args": {"pad": "x" * (70 << 10)}}
    got = replies(
        serve(
            encode(Code.REQUEST, big)  # over an ordinary request's header limit
            + request(2, "device.info", {}, b"unexpected")  # an action that takes no payload
            + encode(Code.REQUEST, {"id": [[1]], "action": "device.info"})  # an id not echoed
            + encode(Code.REQUEST, {"id": "y" * 100, "action": "device.info"})
            + request(3, "run.generate", {"name": "m", "prompt": "p" * (200 << 10)}),
            root,
        )
    )
    assert "header of" in got[1].header["error"] and "expected at most" in got[1].header["error"]
    assert "payload of 10 bytes: expected none" in got[2].header["error"]
    assert got[None].code == Code.ERROR and "request id" in got[None].header["error"]
    # a long prompt is allowed (its artifact is not there)
    assert "no artifact 'm'" in got[3].header["error"]


def test_deeply_nested_header_is_answered_not_fatal(tmp_path):
    """A frame whose checksums are right but whose JSON nests thousands deep: an ERROR, then
    the agent serves the next request."""
    deep = b'{"id": 1, "action": "device.info", "args": {"x": ' + b"[" * 100_000 + b"]" * 100_000
    deep += b"}}"
    shallow_but_deep = json.dumps({"id": 2, "action": "device.info",
                                   "args": {"x": json.loads("[" * 40 + "]" * 40)}}).encode()  # fmt: skip
    frames = b""
    for hdr in (deep, shallow_but_deep):
        body_crc = zlib.crc32(hdr) & 0xFFFFFFFF
        head = HEAD.pack(b"EDRT", 1, int(Code.REQUEST), 0, len(hdr), 0, body_crc, 0)[:20]
        frames += head + zlib.crc32(head).to_bytes(4, "little") + hdr
    frames += encode(Code.REQUEST, {"id": 3, "action": "device.info"})
    got = serve(frames, tmp_path / "root")
    errors = [g for g in got if not isinstance(g, str) and g.code == Code.ERROR]
    assert len(errors) == 2 and all("nests deeper than" in e.header["error"] for e in errors)
    assert got[-1].code == Code.REPLY and got[-1].header["id"] == 3


def test_put_refused_when_the_disk_would_fill(tmp_path, monkeypatch):
    import shutil

    from edgert.device import agent as agent_mod

    root = tmp_path / "root"
    real = shutil.disk_usage
    monkeypatch.setattr(agent_mod.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=agent_mod.DISK_MARGIN + 1000))  # fmt: skip
    got = replies(
        serve(
            put(1, "staging/m/big", b"x" * 10, size=5000)  # 5000 announced: does not fit
            + put(2, "staging/m/small", b"x" * 10, size=500)
            + put(3, "staging/m/over", b"x" * 10, size=5),  # longer than it announced
            root,
        )
    )
    err = got[1].header["error"]
    assert got[1].code == Code.ERROR and "no room on the device" in err and "5000" in err
    assert len(err.splitlines()) == 1
    assert not (root / "staging" / "m" / "big").exists()
    assert got[2].code == Code.REPLY
    assert got[3].code == Code.ERROR and "announced size 5" in got[3].header["error"]


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


def test_listing_skips_what_is_not_a_manifest(tmp_path):
    """artifact.list reads every manifest on the device: one that is valid JSON but not an
    object (or with a target that is not one) is left out, not an internal error."""
    from edgert.runtime.onnx import is_dnn_artifact

    for name, text in (("list", "[1, 2]"), ("target", '{"target": [1]}'), ("num", "7")):
        d = tmp_path / "artifacts" / name
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(text)
        assert not is_dnn_artifact(d)
    got = replies(serve(request(1, "artifact.list", {}), tmp_path))
    assert got[1].code == Code.REPLY and got[1].header["artifacts"] == []


def test_names_and_paths_end_where_they_seem_to(tmp_path):
    """An artifact name or staged path with a trailing newline is refused (a regex's `$` alone
    matches before one): no `artifacts/m\\n` on the device."""
    frames = b"".join([
        request(1, "file.put", put_args("staging/m/x\n")),
        request(2, "file.commit", {"staging": "staging/m\n", "name": "m"}),
        request(3, "artifact.load", {"name": "m\n"}),
    ])  # fmt: skip
    got = replies(serve(frames, tmp_path))
    for rid in (1, 2, 3):
        assert got[rid].code == Code.ERROR and "expected" in got[rid].header["error"], got[rid]
    assert not any("\n" in p.name for p in tmp_path.rglob("*"))


def test_schema_ranges_are_the_clis(tmp_path):
    """What the CLI and the sampler refuse, the agent refuses too, before anything runs."""
    frames = b"".join([
        request(1, "run.generate", {"name": "m", "top_p": 0.0}),
        request(2, "artifact.load", {"name": "m", "ffn": {"sparsity": 1.0}}),
        request(3, "run.generate", {"name": "m", "prompt": "x" * 100_000}),  # no extra bound
    ])  # fmt: skip
    got = replies(serve(frames, tmp_path))
    assert "expected a number in (0, 1]" in got[1].header["error"]
    assert "expected a number in [0, 1)" in got[2].header["error"]
    assert "no artifact" in got[3].header["error"] or "not deployed" in got[3].header["error"]
