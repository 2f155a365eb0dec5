"""Outside data is checked where it enters: GGUF files (header and metadata), safetensors files
and config.json, artifact manifests. A bad value is an EdgertError naming the field, the value and
what was expected — never another exception, a hang, or an allocation sized by the bad value.

Hypothesis mutates valid inputs (prefixes, every number of a GGUF header, metadata values of any
type, safetensors headers, manifest keys and values) and runs what the CLI does with them up to
the first forward pass; plain tests pin the cases each check exists for."""

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import SMALL_MODEL, alarm_after, compile_synthetic
from edgert.compiler.frontends import load_model
from edgert.compiler.frontends.gguf import config_from_metadata, load_gguf
from edgert.compiler.frontends.gguf_tokenizer import tokenizer_from_gguf
from edgert.compiler.frontends.hf import load_hf
from edgert.compiler.frontends.safetensors import SafetensorsFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_synthetic_gguf import make_synthetic_gguf
from test_hf_archs import hf_checkpoint

from edgert.errors import EdgertError, ModelFormatError
from edgert.format.artifact import Artifact, ArtifactError
from edgert.format.model import ModelGraph

#: a fuzzed input is handled within this many seconds (a corrupt count must not make us loop)
DEADLINE_S = 5
# tmp_path is one directory for all of a test's examples: each example overwrites its input there
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SHAPE = dict(SMALL_MODEL, layers=1, dim=64, ffn=128)


class Hang(Exception):
    pass


@contextlib.contextmanager
def within(seconds: float = DEADLINE_S):
    """Raise Hang (a test failure) in the code under test if it runs longer than ``seconds``."""

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    with alarm_after(seconds, alarm):
        yield


def put(path, data: bytes):
    """Write ``path`` as a new file (a memory map of the previous example's stays intact)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def only_edgert_errors(fn, *args) -> EdgertError | None:
    """Run ``fn``: it may succeed or raise an EdgertError (returned, checked to be one line);
    anything else propagates and fails the test."""
    try:
        with within():
            fn(*args)
    except EdgertError as e:
        assert "\n" not in str(e), str(e)
        return e
    return None


# -- GGUF ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen2moe", "phi3"])
def gguf_file(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"gguf-{request.param}")
    return make_synthetic_gguf(
        out=d / "m.gguf", arch=request.param, qtype="F32", progress=False, **SHAPE
    )


@pytest.fixture(scope="module")
def gguf_layout(gguf_file):
    """The valid file's bytes, its header's numbers and where its tensor data starts."""
    return gguf_file.read_bytes(), gguf_numbers(gguf_file), gguf.GGUFReader(gguf_file).data_offset


def gguf_numbers(path) -> list[tuple[int, int, bool]]:
    """(byte offset, size, whether it is a metadata value) of each number in a GGUF header:
    counts, string and array lengths, value types, scalar values, the first elements of arrays,
    tensor dimensions, types and offsets."""
    r = gguf.GGUFReader(str(path))
    base = r.data.__array_interface__["data"][0]
    out = []
    # the file's counts last: hypothesis draws a list's first items more often
    own = sorted(r.fields.values(), key=lambda f: f.name.startswith("GGUF."))
    for f in [*own, *(t.field for t in r.tensors)]:
        for i, part in enumerate(f.parts[:12]):  # an array's first elements
            if part.dtype == np.uint8 and part.size > 1:
                continue  # a string's bytes
            at = part.__array_interface__["data"][0] - base
            for j in range(min(part.size, 4)):
                value = i in f.data and f.name in r.fields
                out.append((at + j * part.itemsize, part.itemsize, value))
    return out


def materialized(path) -> None:
    """What `edgert compile` and `edgert generate` do with a model file before using it."""
    m = load_model(path)
    m.materialize(progress=False)


EDGES = [0, 1, 2, 3, 4, 7, 8, 31, 32, 64, 255, 256, 1 << 15, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
         1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1]  # fmt: skip


@st.composite
def number_bytes(draw, size: int) -> bytes:
    """A value for a ``size``-byte field: a boundary, any value, or a float's bits."""
    top = (1 << (8 * size)) - 1
    v = draw(st.one_of(st.sampled_from([e & top for e in EDGES]), st.integers(0, top)))
    if size in (4, 8) and draw(st.booleans()):
        x = draw(st.floats(allow_nan=True, allow_infinity=True, width=8 * size))
        return struct.pack("<f" if size == 4 else "<d", x)
    return v.to_bytes(size, "little")


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_gguf_header_numbers_fuzzed(gguf_layout, tmp_path, data):
    """Any number of the header (counts, lengths, types, values, dims, offsets) set to any value,
    a few at a time."""
    good, slots, _ = gguf_layout
    raw = bytearray(good)
    values = [s for s in slots if s[2]]  # as likely as all the structure's numbers together
    for _ in range(data.draw(st.integers(1, 3))):
        at, size, _ = data.draw(st.one_of(st.sampled_from(values), st.sampled_from(slots)))
        raw[at : at + size] = data.draw(number_bytes(size))
    only_edgert_errors(materialized, put(tmp_path / "m.gguf", bytes(raw)))


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_gguf_bytes_and_prefixes_fuzzed(gguf_layout, tmp_path, data):
    """A prefix of the file, with a few bytes of its header overwritten."""
    good, _, header = gguf_layout
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, header - 1))
        raw[at] = data.draw(st.integers(0, 255))
    n = data.draw(st.one_of(st.integers(0, header + 64), st.integers(0, len(raw))))
    only_edgert_errors(materialized, put(tmp_path / "m.gguf", bytes(raw[:n])))


@pytest.fixture(scope="module")
def gguf_meta(gguf_file):
    """A valid GGUF's metadata, tensor infos and embedding rows, as load_gguf reads them."""
    m = load_gguf(gguf_file)
    rows = m.infos["token_embd.weight"].shape[0]
    stored = {t.name: t for t in gguf.GGUFReader(str(gguf_file)).tensors}
    return m.metadata, rows, set(stored), list(m.infos.values())


scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGES), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["linear", "longrope", "gpt2", "llama", "llama-bpe", "a b", ""]),
)  # fmt: skip
values = st.one_of(scalars, st.lists(scalars, max_size=6), st.lists(st.booleans(), max_size=70))


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_gguf_metadata_values_fuzzed(gguf_meta, data):
    """Metadata keys removed, added, or given values of any type."""
    meta, rows, stored, infos = gguf_meta
    meta = dict(meta)
    arch = meta["general.architecture"]
    keys = sorted(meta) + [f"{arch}.{k}" for k in (
        "attention.key_length", "vocab_size", "attention.sliding_window",
        "attention.sliding_window_pattern", "rope.scaling.type", "rope.scaling.factor",
        "expert_count", "expert_used_count", "final_logit_softcapping")]  # fmt: skip
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()):
            meta.pop(key, None)
        else:
            meta[key] = data.draw(values)

    def build():
        cfg = config_from_metadata(meta, "m.gguf", rows, stored)
        ModelGraph(cfg, infos, lambda n: None, source="m.gguf").validate()
        tokenizer_from_gguf(meta, "m.gguf")

    only_edgert_errors(build)


def set_field(path, key: str, value, part: int | None = None) -> None:
    """Overwrite a number of a GGUF file in place: metadata ``key``'s value, or its ``part``."""
    r = gguf.GGUFReader(str(path), "r+")
    f = r.fields[key]
    f.parts[f.data[0] if part is None else part][0] = value
    r.data.flush()


@pytest.fixture
def small_gguf(tmp_path):
    return make_synthetic_gguf(
        out=tmp_path / "m.gguf", arch="llama", qtype="F32", progress=False, **SHAPE
    )


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("llama.attention.head_count", 0, "llama.attention.head_count = 0, expected an integer"),
        ("llama.embedding_length", (1 << 32) - 1, "llama.embedding_length = 4294967295, expected"),
        ("llama.embedding_length", 0, "llama.embedding_length = 0"),
        (
            "llama.block_count",
            1 << 20,
            "llama.block_count = 1048576, expected an integer in 1..4096",
        ),
        ("llama.context_length", 0, "llama.context_length = 0"),
        ("llama.attention.head_count_kv", 3, "4 attention heads are not a multiple of 3 KV"),
        ("llama.attention.head_count", 3, "embedding_length = 64 is not a multiple of llama"),
        # in range, but not what the tensors say
        ("llama.embedding_length", 96, "token_embd.weight has shape (512, 64), expected (512, 96)"),
        ("llama.feed_forward_length", 100, "ffn_gate.weight has shape (128, 64), expected (100"),
        ("llama.vocab_size", 1000, "token_embd.weight has shape (512, 64), expected (1000, 64)"),
        ("llama.rope.freq_base", float("nan"), "llama.rope.freq_base = nan, expected a finite"),
    ],
)
def test_bad_gguf_metadata_named(small_gguf, key, value, needle):
    set_field(small_gguf, key, value)
    with pytest.raises(ModelFormatError) as e, within():
        load_model(small_gguf)
    assert needle in str(e.value) and "m.gguf" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "key,part,value,needle",
    [
        # an array of 2**62 token types: gguf's reader would loop that many times
        ("tokenizer.ggml.token_type", 4, 1 << 62, "length of tokenizer.ggml.token_type = 46116"),
        ("tokenizer.ggml.tokens", 4, 1 << 40, "length of tokenizer.ggml.tokens = 1099511627776"),
        ("GGUF.kv_count", 0, 1 << 60, "metadata count = 1152921504606846976, more than"),
        ("GGUF.tensor_count", 0, 1 << 60, "tensor count = 1152921504606846976, more than"),
        ("general.architecture", 3, 1 << 62, "general.architecture at byte"),
        ("general.architecture", 0, 1 << 62, "key length = 4611686018427387904, expected at most"),
        ("GGUF.version", 0, 1, "GGUF version 1"),
    ],
)
def test_bad_gguf_header_named(small_gguf, key, part, value, needle):
    set_field(small_gguf, key, value, part)
    with pytest.raises(EdgertError) as e, within():
        load_model(small_gguf)
    assert needle in str(e.value), str(e.value)


def test_bad_gguf_tensor_info_named(small_gguf):
    r = gguf.GGUFReader(str(small_gguf))
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    raw = bytearray(small_gguf.read_bytes())
    base = r.data.__array_interface__["data"][0]

    def put(part: int, value: int, size: int = 8) -> None:
        at = embd.field.parts[part].__array_interface__["data"][0] - base
        raw[at : at + size] = value.to_bytes(size, "little")
        small_gguf.write_bytes(bytes(raw))

    def refused(*needles):
        with pytest.raises(ModelFormatError) as e, within():
            load_model(small_gguf)
        for n in needles:
            assert n in str(e.value), str(e.value)

    good = bytes(raw)
    put(5, 1 << 50)  # its data far past the end of the file
    refused("truncated GGUF file: tensor token_embd.weight needs bytes")
    put(5, 3)
    refused("tensor token_embd.weight at offset 3, expected a multiple of the alignment 32")
    raw[:] = good
    put(2, 9, 4)  # nine dimensions
    refused("tensor token_embd.weight has 9 dimensions, expected 1..4")
    raw[:] = good
    put(4, 999, 4)
    refused("tensor token_embd.weight has unknown GGML type 999")
    raw[:] = good
    put(3, 1 << 40)  # a huge first dimension
    refused("truncated GGUF file: tensor token_embd.weight needs bytes")


def test_gguf_cut_inside_the_header(small_gguf):
    raw = small_gguf.read_bytes()
    small_gguf.write_bytes(raw[:5000])
    with pytest.raises(
        ModelFormatError, match="truncated GGUF file: .* needs .* the file has 5000"
    ):
        load_model(small_gguf)


# -- safetensors and config.json ----------------------------------------------------------------
def write_st(path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.fixture(scope="module")
def st_file(tmp_path_factory):
    """A safetensors file's header and data: F32, F16 and BF16 tensors, and __metadata__."""
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(4, 8)).astype(np.float32),
              "b": rng.normal(size=(16,)).astype(np.float16),
              "c": rng.integers(0, 1 << 16, size=(2, 3, 4)).astype(np.uint16)}  # fmt: skip
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for (name, a), dt in zip(arrays.items(), ("F32", "F16", "BF16")):
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + a.nbytes]}  # fmt: skip
        data += a.tobytes()
    return header, data


def read_all_tensors(path) -> None:
    f = SafetensorsFile(path)
    for n in f.names():
        f.get(n)


json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_safetensors_header_fuzzed(st_file, tmp_path, data):
    header, blob = json.loads(json.dumps(st_file[0])), st_file[1]
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(header) + ["new"]))
        key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        plausible = {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "X", ""]),
            "shape": st.lists(st.sampled_from(EDGES[:12] + [-1]), max_size=9),
            "data_offsets": st.lists(st.sampled_from(EDGES[:14] + [-1, 96, 128]), max_size=3),
        }.get(key, json_values)
        value = data.draw(st.one_of(plausible, json_values))
        if key is None or not isinstance(header.get(name), dict):
            header[name] = value
        elif data.draw(st.booleans()):
            header[name].pop(key, None)
        else:
            header[name][key] = value
    raw = json.dumps(header).encode()
    prefix = struct.pack("<Q", data.draw(st.one_of(st.just(len(raw)), st.sampled_from(EDGES))))
    cut = data.draw(st.one_of(st.just(None), st.integers(0, len(raw) + len(blob) + 8)))
    p = put(tmp_path / "m.safetensors", (prefix + raw + blob)[:cut])
    only_edgert_errors(read_all_tensors, p)


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda h: h["a"].update(data_offsets=[0, 1 << 50]), "truncated"),
        (lambda h: h["a"].update(data_offsets=[64, 0]), "expected begin <= end"),
        (lambda h: h["a"].update(shape=[4, 9]), "tensor a has 128 bytes, expected 144"),
        (lambda h: h["a"].update(shape=[-4, 8]), "tensor a has shape [-4, 8]"),
        (lambda h: h["b"].update(dtype="X"), 'tensor b has dtype "X"'),
        (lambda h: h.update(a=[1, 2]), "tensor a has header entry [1, 2]"),
        (lambda h: h.update(__metadata__=[1]), "__metadata__ is not a JSON object"),
    ],
)
def test_bad_safetensors_header_named(st_file, tmp_path, change, needle):
    header = json.loads(json.dumps(st_file[0]))
    change(header)
    write_st(tmp_path / "m.safetensors", header, st_file[1])
    with pytest.raises(ModelFormatError) as e:
        read_all_tensors(tmp_path / "m.safetensors")
    assert needle in str(e.value).replace("'", '"'), str(e.value)


def make_hf(tmp_path_factory, arch: str):
    """An HF checkpoint directory of a small synthetic model of ``arch``."""
    d = tmp_path_factory.mktemp(f"hf-{arch}")
    g = make_synthetic_gguf(out=d / "m.gguf", arch=arch, qtype="F32", progress=False, **SHAPE)
    m = load_model(g)
    g.unlink()
    hf_checkpoint(m, d, arch)
    return d


def with_config(src, d, cfg: dict):
    """``d``: the checkpoint ``src`` with config.json ``cfg``."""
    for f in src.glob("*.safetensors"):
        (d / f.name).symlink_to(f)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module", params=["qwen2moe", "gemma3", "phi3", "smollm3"])
def hf_dir(request, tmp_path_factory):
    return make_hf(tmp_path_factory, request.param)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_hf_config_fuzzed(hf_dir, tmp_path, data):
    cfg = json.loads((hf_dir / "config.json").read_text())
    keys = sorted(cfg) + ["head_dim", "rope_scaling", "sliding_window_pattern", "num_experts",
                          "partial_rotary_factor", "query_pre_attn_scalar"]  # fmt: skip
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.booleans()):
            cfg.pop(key, None)
        else:
            cfg[key] = data.draw(json_values)
    d = tmp_path / "h"
    if not d.exists():
        d.mkdir()
        with_config(hf_dir, d, {})
    (d / "config.json").write_text(json.dumps(cfg))

    def loaded():
        load_hf(d).materialize(progress=False)

    only_edgert_errors(loaded)


@pytest.fixture(scope="module")
def hf_smollm3(tmp_path_factory):
    return make_hf(tmp_path_factory, "smollm3")


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("num_attention_heads", 0, "config.json num_attention_heads = 0, expected an integer"),
        ("hidden_size", 1 << 40, "config.json hidden_size = 1099511627776"),
        ("hidden_size", "64", "config.json hidden_size = '64'"),
        ("num_key_value_heads", 3, "not a multiple of 3 KV heads"),
        ("intermediate_size", 100, "ffn_gate.weight has shape (128, 64), expected (100, 64)"),
        ("rms_norm_eps", -1, "config.json rms_norm_eps = -1, expected a finite number > 0"),
    ],
)
def test_bad_hf_config_named(hf_smollm3, tmp_path, key, value, needle):
    cfg = json.loads((hf_smollm3 / "config.json").read_text())
    cfg[key] = value
    with pytest.raises(ModelFormatError) as e:
        load_hf(with_config(hf_smollm3, tmp_path, cfg))
    assert needle in str(e.value), str(e.value)


# -- artifact manifests -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small compiled artifact (one layer, host target, round to nearest)."""
    from edgert.compiler.quant.scheme import QuantScheme

    d = tmp_path_factory.mktemp("art")
    out = compile_synthetic(
        d, "llama", QuantScheme("uniform", 4, 32), layers=1, quant_method="rtn"
    ).out
    return Path(out), json.loads((Path(out) / "manifest.json").read_text())


def json_paths(v, path=()):
    """Every (path of keys) in a JSON value, the root included."""
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from json_paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v[:4]):
            yield from json_paths(x, (*path, i))


HOSTILE = ["../x", "/etc/passwd", "weights/../../x", "weights", "manifest.json", "lib/model.so",
           "weights/resident.bin", "", ".", "a\x00b", "|O", "<c8", ">f4", "<f4", "|u1",
           "ffffffff", "0" * 64]  # fmt: skip


def opened(path) -> None:
    """What loading an artifact does before its library runs: the manifest, every checksum,
    the config, the library."""
    art = Artifact.open(path)
    art.verify()
    art.config()
    art.library()
    art.check_target()


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_manifest_fuzzed(artifact, tmp_path, data):
    src, manifest = artifact
    m = json.loads(json.dumps(manifest))
    paths = [*list(json_paths(m))[1:], ()]  # the root last: hypothesis favours the first
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent, key = m, None
        try:
            for k in path[:-1]:
                parent = parent[k]
            key = path[-1] if path else None
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed it
        value = data.draw(st.one_of(json_values, st.sampled_from(HOSTILE),
                                    st.sampled_from(EDGES + [-1, 2.5, 1e308])))  # fmt: skip
        if key is None:
            m = value
        elif isinstance(parent, dict) and data.draw(st.booleans()):
            parent.pop(key, None)
        elif isinstance(parent, (dict, list)):
            with contextlib.suppress(IndexError, TypeError):
                parent[key] = value
    d = tmp_path / "m.edgert"
    if not d.exists():  # reading an artifact never writes to it: one copy serves every example
        shutil.copytree(src, d)
    (d / "manifest.json").write_text(json.dumps(m))
    only_edgert_errors(opened, d)


def test_manifest_fuzz_base_is_valid(artifact):
    """The artifact the manifest fuzzer mutates opens as it is (else it tests nothing)."""
    opened(artifact[0])
    assert artifact[1]["lib_sha256"]["model"]


def test_compiled_library_checksum_mismatch(artifact, tmp_path):
    d = tmp_path / "m.edgert"
    shutil.copytree(artifact[0], d)
    lib = d / "lib" / "model.so"
    raw = bytearray(lib.read_bytes())
    raw[len(raw) // 2] ^= 1
    lib.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="lib/model.so fails its sha256 checksum"):
        Artifact.open(d)
