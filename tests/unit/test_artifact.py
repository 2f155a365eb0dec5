import json

import numpy as np
import pytest

from edgert.format.artifact import PAGE, Artifact, ArtifactError, ArtifactWriter


def build(out, **kw):
    rng = np.random.default_rng(0)
    with ArtifactWriter(out, **kw) as w:
        w.add_tensor(
            "a",
            {
                "planes": rng.integers(0, 255, (7, 33), dtype=np.uint8),
                "scales": rng.normal(size=(7, 2)).astype(np.float32),
            },
            meta={"format": "uniform", "bits": 2},
        )
        w.add_tensor("b", {"data": rng.normal(size=(5,)).astype(np.float32)}, residency="streamed")
        w.manifest["target"] = {"name": "rpi5", "arch": "aarch64"}
    return out


def test_roundtrip_and_alignment(tmp_path):
    out = build(tmp_path / "m.edgert")
    art = Artifact.open(out)
    a = art.read_tensor("a")
    assert a["planes"].shape == (7, 33) and a["planes"].dtype == np.uint8
    for e in art.tensors.values():
        assert all(b["offset"] % PAGE == 0 for b in e["buffers"].values())
    assert art.tensors["a"]["bits"] == 2
    assert art.nbytes("streamed") == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "x.edgert") as w:
            w.add_tensor("a", {"d": np.zeros(3, np.float32)})
            raise RuntimeError("compile failed")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    out = build(tmp_path / "m.edgert")
    with pytest.raises(ArtifactError, match="already exists"):
        build(out)
    build(out, force=True)


def test_corrupt_resident_byte_names_tensor(tmp_path):
    out = build(tmp_path / "m.edgert")
    f = out / "weights" / "resident.bin"
    data = bytearray(f.read_bytes())
    off = json.loads((out / "manifest.json").read_text())["tensors"]["a"]["buffers"]["scales"]
    data[off["offset"] + 3] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tensor a fails its checksum"):
        Artifact.open(out)


def test_truncated_and_streamed_checked_on_first_read(tmp_path):
    out = build(tmp_path / "m.edgert")
    (out / "weights" / "streamed.bin").write_bytes(b"\0" * 8)
    art = Artifact.open(out)  # resident data is fine
    with pytest.raises(ArtifactError, match="tensor b is truncated"):
        art.read_tensor("b")


def test_schema_and_target(tmp_path):
    out = build(tmp_path / "m.edgert")
    art = Artifact.open(out)
    with pytest.raises(ArtifactError, match="rpi5.*aarch64.*x86_64"):
        art.check_target("x86_64")
    art.check_target("arm64")
    m = json.loads((out / "manifest.json").read_text())
    m["schema"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema 99"):
        Artifact.open(out)
    with pytest.raises(ArtifactError, match="not an edgert artifact"):
        Artifact.open(tmp_path)
