import hashlib
import json
import os

import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.format.artifact import PAGE, Artifact, ArtifactError, ArtifactWriter


def build(out, **kw):
    rng = np.random.default_rng(0)
    lib = out.parent / "fake.so"
    lib.write_bytes(b"\x7fELF not really a library")
    with ArtifactWriter(out, **kw) as w:
        w.add_file(lib, "lib/model.so")
        w.manifest["libs"] = {"model": "lib/model.so"}
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


def test_truncated_refused_at_open_and_streamed_checked_on_first_read(tmp_path):
    out = build(tmp_path / "m.edgert")
    f = out / "weights" / "streamed.bin"
    good = f.read_bytes()
    f.write_bytes(b"\0" * 8)
    with pytest.raises(ArtifactError, match="tensor b is truncated"):
        Artifact.open(out)  # sizes are checked at open (a stat), contents when read
    f.write_bytes(bytes([good[0] ^ 0x40]) + good[1:])
    art = Artifact.open(out)  # resident data is fine
    with pytest.raises(ArtifactError, match="tensor b fails its checksum"):
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


# -- the manifest is outside data: checked before anything is read or allocated from it ----------
def edit(out, change) -> None:
    """Rewrite ``out``'s manifest through ``change(manifest)``."""
    mf = out / "manifest.json"
    m = json.loads(mf.read_text())
    change(m)
    mf.write_text(json.dumps(m))


def refused(out, *needles) -> str:
    """Artifact.open(out) fails with an ArtifactError on one line holding every needle."""
    with pytest.raises(ArtifactError) as e:
        Artifact.open(out)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_library_sha256_written_and_checked(tmp_path):
    out = build(tmp_path / "m.edgert")
    m = json.loads((out / "manifest.json").read_text())
    lib = out / "lib" / "model.so"
    assert m["lib_sha256"] == {"model": hashlib.sha256(lib.read_bytes()).hexdigest()}
    assert Artifact.open(out).library() == out / "lib" / "model.so"
    lib.write_bytes(lib.read_bytes() + b"\0")
    refused(out, "lib/model.so fails its sha256")


def test_schema_1_artifact_without_checksums_is_refused(tmp_path):
    out = build(tmp_path / "m.edgert")

    def older(m):
        m["schema"] = 1
        del m["lib_sha256"]

    edit(out, older)
    refused(out, "schema 1", "this edgert reads schema 2", "recompile")


@pytest.mark.parametrize("key", ["tensors", "libs", "lib_sha256"])
def test_missing_key(tmp_path, key):
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m.pop(key))
    refused(out, f"lacks '{key}'")


def test_missing_buffer_key(tmp_path):
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m["tensors"]["a"]["buffers"]["planes"].pop("offset"))
    refused(out, "tensors.a.buffers.planes.offset = None", "integer >= 0")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "weights/../../x", "", 7])
def test_tensor_file_outside_the_artifact(tmp_path, path):
    out = build(tmp_path / "m.edgert")
    (tmp_path / "x").write_bytes(b"\0" * 2 * PAGE)
    edit(out, lambda m: m["tensors"]["a"].update(file=path))
    refused(out, "tensors.a.file", "a relative path inside the artifact")


def test_symbolic_link_out_of_the_artifact(tmp_path):
    out = build(tmp_path / "m.edgert")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((out / "weights" / "resident.bin").read_bytes())
    os.symlink(outside, out / "weights" / "link.bin")
    edit(out, lambda m: m["tensors"]["a"].update(file="weights/link.bin"))
    refused(out, "tensors.a.file", "leads out through a link")
    os.symlink("../lib/model.so", out / "weights" / "inside.so")  # a link within is fine
    edit(out, lambda m: m["libs"].update(model="weights/inside.so"))
    edit(out, lambda m: m["tensors"]["a"].update(file="weights/resident.bin"))
    Artifact.open(out)


def test_library_path_outside_the_artifact(tmp_path):
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m["libs"].update(model="../fake.so"))
    refused(out, "libs.model", "inside the artifact")


@pytest.mark.parametrize("dtype", ["garbage", "|O", ">f4", "<c8", 4])
def test_unknown_dtype(tmp_path, dtype):
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m["tensors"]["a"]["buffers"]["scales"].update(dtype=dtype))
    refused(out, "tensors.a.buffers.scales.dtype", "expected one of")


def test_huge_shape_is_refused_before_allocating(tmp_path):
    out = build(tmp_path / "m.edgert")

    def huge(m):  # consistent with its nbytes, far beyond the file
        m["tensors"]["a"]["buffers"]["scales"].update(shape=[1 << 50], nbytes=4 << 50)
        m["tensors"]["a"]["nbytes"] = (4 << 50) + 7 * 33

    edit(out, huge)
    refused(out, "tensor a is truncated", "resident.bin has")


def test_shape_and_nbytes_disagree(tmp_path):
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m["tensors"]["a"]["buffers"]["scales"].update(shape=[7, 3]))
    refused(out, "tensors.a.buffers.scales.nbytes = 56", "expected 84")


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m["tensors"]["a"].update(residency="swap"), "tensors.a.residency"),
        (lambda m: m["tensors"]["a"]["buffers"]["scales"].update(shape=[-1, 2]), "shape"),
        (lambda m: m["tensors"]["a"]["buffers"]["scales"].update(offset="0"), "offset"),
        (lambda m: m.update(tensors=[]), "tensors = []"),
        (lambda m: m.update(target="rpi5"), "target"),
        (lambda m: m.update(model={"arch": "llama"}), "model config lacks"),
        (lambda m: m.update(dram={"budget": -1, "ctx": 64}), "dram.budget"),
    ],
)
def test_bad_values_name_the_key(tmp_path, change, needle):
    out = build(tmp_path / "m.edgert")
    edit(out, change)
    refused(out, needle)


def test_manifest_not_an_object(tmp_path):
    out = build(tmp_path / "m.edgert")
    (out / "manifest.json").write_text("[1, 2]")
    refused(out, "expected a JSON object")


def test_model_config_ranges(tmp_path):
    """The config stored in a manifest passes the same checks as one read from a model file."""
    from edgert.format.model import ModelConfig

    cfg = ModelConfig(
        arch="llama", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
        vocab_size=512,
    )  # fmt: skip
    out = build(tmp_path / "m.edgert")
    edit(out, lambda m: m.update(model=cfg.to_dict()))
    assert Artifact.open(out).config() == cfg
    for key, value in [("n_heads", 0), ("dim", 1 << 40), ("n_kv_heads", 3), ("rms_eps", "x")]:
        edit(out, lambda m: m.update(model={**cfg.to_dict(), key: value}))
        msg = refused(out, "model:")
        assert key in msg or "KV heads" in msg, msg
    with pytest.raises(EdgertError, match="n_layers = 0"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 0})
