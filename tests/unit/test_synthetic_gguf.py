"""Synthetic GGUFs (tools/make_synthetic_gguf.py): the file as gguf's reader sees it (names,
shapes, types, metadata, value scale), and that they load and run through the reference path."""

import math
import re

import gguf
import numpy as np
import pytest
from edgert.compiler.frontends import load_model
from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES
from make_synthetic_gguf import (
    ARCHS,
    CHUNK_ELEMS,
    GGUF_ARCH,
    QTYPES,
    init_std,
    main,
    make_synthetic_gguf,
    resolve_shape,
    tensor_plan,
)

from edgert.runtime.generate import Sampler, generate
from edgert.runtime.reference import ReferenceEngine

EXPECT = {  # arch -> (edgert arch, experts, a tensor only that arch has, if it has one)
    "llama": ("llama", 0, "blk.0.ffn_gate.weight"),
    "mixtral": ("llama", 4, "blk.1.ffn_down_exps.weight"),
    "qwen2moe": ("qwen2moe", 8, "blk.0.ffn_gate_inp_shexp.weight"),
    "olmoe": ("olmoe", 8, "blk.1.attn_k_norm.weight"),
    "llama3": ("llama", 0, "rope_freqs.weight"),
    "qwen2": ("qwen2", 0, "blk.1.attn_v.bias"),
    "qwen3": ("qwen3", 0, "blk.1.attn_q_norm.weight"),
    "qwen3moe": ("qwen3moe", 8, "blk.1.attn_q_norm.weight"),
    "gemma3": ("gemma3", 0, "blk.1.post_ffw_norm.weight"),
    "phi3": ("phi3", 0, "rope_factors_long.weight"),
    "smollm3": ("smollm3", 0, None),  # what only SmolLM3 has: layers without RoPE (NO_ROPE)
}
#: arch -> (layers of its test model, those without RoPE): SmolLM3 drops it on every 4th layer;
#: every other architecture ropes every layer
NO_ROPE = {"smollm3": (4, [3])}
#: relative error of a tensor's sample std against the init std: sampling (>= 1024 values: ~2%)
#: plus quantization noise (Q4_0 adds ~10% of the std in quadrature)
STD_RTOL = 0.15


def _names_llama_cpp_knows(arch: str) -> list[re.Pattern]:
    ga = {v: k for k, v in MODEL_ARCH_NAMES.items()}[GGUF_ARCH[arch]]
    pats = [TENSOR_NAMES[t].replace(".", r"\.").replace("{bid}", r"\d+") for t in MODEL_TENSORS[ga]]
    return [re.compile(p + r"\.(weight|bias)") for p in pats]


def _field(r: gguf.GGUFReader, key: str):
    return r.fields[key].contents()


#: types of 256-weight blocks (K-quants, ternary): the tiny preset's 64-wide rows stay F32
K_QTYPES = [q for q in QTYPES if gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]][0] == 256]


@pytest.mark.parametrize("qtype", [q for q in QTYPES if q not in K_QTYPES])
@pytest.mark.parametrize("arch", ARCHS)
def test_file_as_read_back(tmp_path, arch, qtype):
    path = make_synthetic_gguf(out=tmp_path / "m.gguf", arch=arch, qtype=qtype, progress=False)
    assert path.stat().st_size < 2 << 20
    s = resolve_shape(arch)
    r = gguf.GGUFReader(str(path))
    ga = GGUF_ARCH[arch]
    assert _field(r, "general.architecture") == ga
    assert _field(r, f"{ga}.block_count") == s.layers
    assert _field(r, f"{ga}.embedding_length") == s.dim
    assert _field(r, f"{ga}.attention.head_count_kv") == s.kv_heads
    if not s.experts:
        assert f"{ga}.expert_count" not in r.fields
    else:
        assert _field(r, f"{ga}.expert_count") == s.experts
        assert _field(r, f"{ga}.expert_used_count") == s.top_k
    if arch in ("qwen2moe", "qwen3moe"):
        assert _field(r, f"{ga}.expert_feed_forward_length") == s.ffn // 2
    if arch == "qwen2moe":
        assert _field(r, "qwen2moe.expert_shared_feed_forward_length") == s.shared_ffn

    tokens = _field(r, "tokenizer.ggml.tokens")
    merges = _field(r, "tokenizer.ggml.merges")
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert len(tokens) == len(set(tokens)) == s.vocab == len(_field(r, "tokenizer.ggml.token_type"))
    assert tokens[_field(r, "tokenizer.ggml.eos_token_id")] == "<|endoftext|>"
    assert len(merges) == s.vocab - 256 - 2
    assert all(m.replace(" ", "", 1) == t for m, t in zip(merges, tokens[256:]))

    plan = {name: (shape, kind) for name, shape, kind in tensor_plan(arch, s)}
    known = _names_llama_cpp_knows(arch)
    assert [t.name for t in r.tensors] == list(plan)
    for t in r.tensors:
        shape, kind = plan[t.name]
        assert any(p.fullmatch(t.name) for p in known), t.name
        assert tuple(int(d) for d in t.shape) == shape[::-1]  # GGUF lists the row length first
        want = qtype if kind in ("w", "o") else "F32"
        assert t.tensor_type.name == want, t.name
        if t.name.startswith(("blk.0.", "output")) and t.n_elements >= 1024:
            v = gguf.quants.dequantize(t.data, t.tensor_type)
            assert v.shape == shape and np.isfinite(v).all()
            dev = v - 1.0 if kind == "n" else v
            assert dev.std() == pytest.approx(init_std(kind, s), rel=STD_RTOL), t.name


#: NMSE of edgert's K-quant writer (plain rounding per sub-block) on the Gaussian weights, and
#: of the gguf package's ternary quantizer (d = the block's largest magnitude: most weights 0)
K_NMSE = {"Q4_K": 0.01, "Q3_K": 0.04, "Q2_K": 0.15, "TQ1_0": 0.7, "TQ2_0": 0.7}


@pytest.mark.parametrize("qtype", K_QTYPES)
def test_k_quant_files(tmp_path, qtype):
    """Matrices whose rows are whole 256-weight super-blocks are written in the type;
    the gguf package's (llama.cpp's) dequantization of them is within the type's rounding of the
    values the same seed writes in F32; shorter rows stay F32."""
    kw = {"arch": "llama", "progress": False, "dim": 256, "ffn": 512, "heads": 4, "kv_heads": 2}
    f = load_model(make_synthetic_gguf(out=tmp_path / "f.gguf", qtype="F32", **kw))
    q = load_model(make_synthetic_gguf(out=tmp_path / "q.gguf", qtype=qtype, **kw))
    stored = [n for n in q.names() if q.infos[n].source_type == qtype]
    assert len(stored) == 7 * resolve_shape("llama").layers + 2  # + embedding and head
    for n in stored:
        a, b = q.tensor(n), f.tensor(n)
        assert ((a - b) ** 2).sum() / (b**2).sum() < K_NMSE[qtype], n
    tiny = make_synthetic_gguf(out=tmp_path / "t.gguf", arch="llama", qtype=qtype, progress=False)
    assert {i.source_type for i in load_model(tiny).infos.values()} == {"F32"}  # 64-wide rows


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
@pytest.mark.parametrize("arch", ARCHS)
def test_loads_and_generates(tmp_path, arch, qtype):
    layers, no_rope = NO_ROPE.get(arch, (None, []))
    path = make_synthetic_gguf(out=tmp_path / "m.gguf", arch=arch, qtype=qtype, progress=False,
                               layers=layers)  # fmt: skip
    m = load_model(path)
    want_arch, experts, special = EXPECT[arch]
    assert m.config.arch == want_arch and m.config.n_experts == experts
    assert special is None or special in m
    assert m.config.no_rope_layers == no_rope
    w = m.tensor("blk.0.attn_q.weight")
    assert np.isfinite(w).all() and 0.015 < w.std() < 0.025
    eng = ReferenceEngine(m, max_ctx=64)
    res = generate(
        eng, prompt="the cat sat on", n_predict=6, sampler=Sampler(temp=0), stop_at_eos=False
    )
    assert len(res.tokens) == 6
    if experts:
        assert eng.expert_counts.sum() > 0


def test_deterministic_and_tokenizer_roundtrip(tmp_path):
    a = make_synthetic_gguf(out=tmp_path / "a.gguf", arch="mixtral", seed=3, progress=False)
    b = make_synthetic_gguf(out=tmp_path / "b.gguf", arch="mixtral", seed=3, progress=False)
    c = make_synthetic_gguf(out=tmp_path / "c.gguf", arch="mixtral", seed=4, progress=False)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    tok = load_model(a).tokenizer
    text = "hello world, the 2 cats!"
    assert tok.decode(tok.encode(text)) == text


#: values in a tiny model at most: as float32, under test_file_as_read_back's 2 MiB
TINY_MAX_VALUES = (2 << 20) // 4


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_is_cheap(tmp_path, monkeypatch, arch):
    """The tiny preset, which the tests make over and over, stays quick to make: few values,
    each drawn once, in chunks of at most CHUNK_ELEMS (the work counted, not timed)."""
    import make_synthetic_gguf as maker

    drawn = []
    tensor_rng = maker._tensor_rng

    class Counting:
        def __init__(self, rng):
            self.rng = rng

        def standard_normal(self, size, **kw):  # every tensor's values start as these
            drawn.append(math.prod(size))
            return self.rng.standard_normal(size, **kw)

        def __getattr__(self, name):
            return getattr(self.rng, name)

    monkeypatch.setattr(maker, "_tensor_rng", lambda seed, name: Counting(tensor_rng(seed, name)))
    make_synthetic_gguf(out=tmp_path / "m.gguf", arch=arch, progress=False)
    planned = sum(math.prod(shape) for _, shape, _ in tensor_plan(arch, resolve_shape(arch)))
    assert sum(drawn) == planned <= TINY_MAX_VALUES
    assert max(drawn) <= CHUNK_ELEMS


def test_overrides(tmp_path):
    p = make_synthetic_gguf(
        out=tmp_path / "m.gguf",
        arch="qwen2moe",
        layers=1,
        experts=4,
        top_k=1,
        expert_ffn=64,
        shared_ffn=96,
        progress=False,
    )
    c = load_model(p).config
    assert (c.n_layers, c.n_experts, c.n_experts_used) == (1, 4, 1)
    assert (c.expert_ffn_dim, c.shared_expert_ffn_dim) == (64, 96)


def test_shape_rules():
    # mixtral/olmoe experts are ffn wide in llama.cpp; olmoe's q/k norms need kv_heads == heads
    assert resolve_shape("mixtral", expert_ffn=96).ffn == 96
    assert resolve_shape("olmoe", heads=4, kv_heads=2).kv_heads == 4
    with pytest.raises(ValueError, match="not both"):
        resolve_shape("olmoe", ffn=64, expert_ffn=96)
    with pytest.raises(ValueError, match="experts"):
        resolve_shape("mixtral", experts=0)
    with pytest.raises(ValueError, match="top_k"):
        resolve_shape("mixtral", top_k=5)
    with pytest.raises(ValueError, match="shared"):
        resolve_shape("olmoe", shared_ffn=64)
    with pytest.raises(ValueError, match="preset"):
        resolve_shape("llama", "huge")
    assert resolve_shape("mixtral", "moe-1g").experts == 8


def test_cli(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["--arch", "mixtral", "--out", str(out), "--layers", "1", "--qtype", "Q4_1"]) == 0
    r = gguf.GGUFReader(str(out))
    assert _field(r, "llama.block_count") == 1
    assert {t.tensor_type.name for t in r.tensors} == {"F32", "Q4_1"}
    assert main(["--arch", "olmoe", "--out", str(out), "--shared-ffn", "64", "--quiet"]) == 2
    assert "shared" in capsys.readouterr().err


#: (arch, preset) -> the model's published parameter count
REAL_SHAPES = {
    ("qwen3moe", "qwen3-30b-a3b"): 30.5e9,
    ("qwen3", "qwen3-0.6b"): 0.596e9,
    ("qwen2", "qwen2.5-0.5b"): 0.494e9,
    ("llama3", "llama3.2-1b"): 1.236e9,
    ("llama3", "llama3-8b"): 8.030e9,
    ("gemma3", "gemma3-1b"): 1.0e9,
    ("phi3", "phi4-mini"): 3.836e9,
    ("smollm3", "smollm3-3b"): 3.075e9,
}


@pytest.mark.parametrize("arch,preset", list(REAL_SHAPES))
def test_real_shape_presets_have_the_models_size(arch, preset):
    """The presets for benchmarks are the real models' shapes: their tensors add up to the
    published parameter count (tied heads included), and llama.cpp knows every name."""
    import math

    s = resolve_shape(arch, preset)
    plan = tensor_plan(arch, s)
    assert sum(math.prod(shape) for _, shape, _ in plan) == pytest.approx(
        REAL_SHAPES[(arch, preset)], rel=0.01
    )
    known = _names_llama_cpp_knows(arch)
    assert all(any(p.fullmatch(n) for p in known) for n, _, _ in plan)
