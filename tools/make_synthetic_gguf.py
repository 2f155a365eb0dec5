"""Write random-weight GGUF models that both edgert and llama.cpp load, any size, in
F32/F16/Q8_0/Q4_0/Q4_1: llama (dense), llama3 (llama with ``rope_freqs`` as Llama 3.1/3.2),
mixtral (llama with experts), qwen2 (qkv bias), qwen2moe (qkv bias, shared expert), qwen3
(per-head q/k norm, head_dim != dim/heads), qwen3moe (qwen3 with 8-of-N experts, renormalised),
olmoe (q/k norm), gemma3 (sliding window on 5 of 6 layers with its own rope base, post norms,
GeGLU, sqrt(dim) embeddings, tied head), phi3 (fused qkv and gate|up, partial rotary, LongRoPE
factors as Phi-4-mini) and smollm3 (no RoPE on every 4th layer). Used for loader and parity tests
and, with the real shapes (``--preset qwen3-30b-a3b``, ``--preset gemma3-1b`` ...), for speed
benchmarks, where the weights do not matter.

    python tools/make_synthetic_gguf.py --arch qwen3moe --preset qwen3-30b-a3b --qtype Q4_0 --out m.gguf

Tensors are generated, quantized and written one at a time (large ones in row chunks), so a
multi-GB model needs little memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgert.runtime.bpe import BYTES_CHAR

ARCHS = (
    "llama", "llama3", "mixtral", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "olmoe", "gemma3",
    "phi3", "smollm3",
)  # fmt: skip
MOE_ARCHS = ("mixtral", "qwen2moe", "qwen3moe", "olmoe")
QTYPES = ("F32", "F16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K", "Q3_K", "Q2_K", "TQ2_0",
          "TQ1_0")  # fmt: skip
#: arch -> GGUF general.architecture (GGUF has no mixtral: it is llama with experts)
GGUF_ARCH = {a: a for a in ARCHS} | {"mixtral": "llama", "llama3": "llama"}
#: arch -> tokenizer.ggml.pre (the split regex llama.cpp applies before BPE)
TOKENIZER_PRE = {a: "gpt-2" for a in ARCHS} | {
    "qwen2": "qwen2", "qwen2moe": "qwen2", "qwen3": "qwen2", "qwen3moe": "qwen2", "olmoe": "olmo",
    "llama3": "llama-bpe", "smollm3": "llama-bpe",
}  # fmt: skip
#: qtype -> general.file_type (llama_ftype)
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
             "Q2_K": 10, "Q3_K": 11, "Q4_K": 14, "TQ1_0": 36, "TQ2_0": 37}  # fmt: skip
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>")
#: rope bases (others: 10000)
ROPE_THETA = {"gemma3": 1000000.0, "llama3": 500000.0}
#: Llama 3.1's rope scaling, as its config.json gives it
LLAMA3_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip
#: --router: uniform random rows, or rows with the structure of trained routers (Clusters)
ROUTERS = ("random", "clustered")
#: a clustered token's embedding: its length along the cluster's direction, relative to the
#: length of its random part
EMBED_PULL = 3.0
#: a clustered router row's length along its cluster's direction, relative to the length of its
#: random part (which alone gives logits of unit scale). With these two, in the 48-layer
#: qwen3-30b-a3b shape (experts narrowed to 64 for the measurement), 100% of a token's experts are its cluster's in layer 0, 85% in layer 11,
#: about 50% from layer 23 on (the random layers' common component grows along the stream)
ROUTER_PULL = 12.0
CHUNK_ELEMS = 1 << 22  # values generated and quantized at a time (16 MiB of float32)
WEIGHT_STD = 0.02


@dataclass(frozen=True)
class Shape:
    """Model dimensions. ``ffn`` is the dense FFN width, and the expert width of mixtral and
    olmoe (llama.cpp sizes their experts by ``feed_forward_length``); ``expert_ffn``
    (0: ``ffn / 2``) and ``shared_ffn`` (0: ``ffn``) are qwen2moe's routed and shared expert
    widths. olmoe has no grouped-query attention: its ``kv_heads`` is always ``heads``."""

    layers: int
    dim: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    experts: int = 0
    top_k: int = 0
    expert_ffn: int = 0
    shared_ffn: int = 0
    ctx: int = 2048
    head_dim: int = 0  # 0: dim / heads
    rope_dim: int = 0  # rotated dims per head; 0: head_dim
    window: int = 0  # gemma3: the sliding window
    swa_pattern: int = 0  # gemma3: every n-th layer global
    orig_ctx: int = 0  # phi3: the context the short LongRoPE factors serve
    tied: int = 0  # 1: no output.weight, the head is the embedding (gemma3 always)

    @property
    def hd(self) -> int:
        return self.head_dim or self.dim // self.heads


PRESETS = {
    # unit tests: well under 2 MB at Q8_0, written in a few ms
    "tiny": Shape(layers=2, dim=64, ffn=128, heads=4, kv_heads=2, vocab=512),
    # TinyLlama-like 1.1B: dims multiples of 256 so llama.cpp's K-quants apply; 0.6 GB at Q4_0
    "1b": Shape(layers=22, dim=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000),
    # mixtral layout, 8 experts top-2, 2.0B parameters: 1.1 GB at Q4_0
    "moe-1g": Shape(
        layers=12, dim=1536, ffn=4096, heads=24, kv_heads=8, vocab=32000, experts=8, top_k=2
    ),
    # the real shapes of the models people run on boards (for benchmarks and plans)
    "qwen3-30b-a3b": Shape(
        layers=48,
        dim=2048,
        ffn=6144,
        heads=32,
        kv_heads=4,
        vocab=151936,
        experts=128,
        top_k=8,
        expert_ffn=768,
        head_dim=128,
        ctx=40960,
    ),
    "qwen3-0.6b": Shape(
        layers=28,
        dim=1024,
        ffn=3072,
        heads=16,
        kv_heads=8,
        vocab=151936,
        head_dim=128,
        ctx=40960,
        tied=1,
    ),
    "qwen2.5-0.5b": Shape(
        layers=24, dim=896, ffn=4864, heads=14, kv_heads=2, vocab=151936, ctx=32768, tied=1
    ),
    # Llama-3.1-8B (arch llama3): 8.0 B parameters, 4.6 GB at Q4_0
    "llama3-8b": Shape(
        layers=32, dim=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256, ctx=131072
    ),
    "llama3.2-1b": Shape(
        layers=16, dim=2048, ffn=8192, heads=32, kv_heads=8, vocab=128256, ctx=131072, tied=1
    ),
    "gemma3-1b": Shape(
        layers=26,
        dim=1152,
        ffn=6912,
        heads=4,
        kv_heads=1,
        vocab=262144,
        head_dim=256,
        window=512,
        swa_pattern=6,
        ctx=32768,
    ),
    "phi4-mini": Shape(
        layers=32,
        dim=3072,
        ffn=8192,
        heads=24,
        kv_heads=8,
        vocab=200064,
        rope_dim=96,
        orig_ctx=4096,
        ctx=131072,
        tied=1,
    ),
    "smollm3-3b": Shape(
        layers=36, dim=2048, ffn=11008, heads=16, kv_heads=4, vocab=128256, ctx=65536, tied=1
    ),
}
#: what each architecture needs beyond the preset's shape (applied where the preset has 0)
ARCH_DEFAULTS = {
    "llama": {},
    "llama3": {},
    "mixtral": {"experts": 4, "top_k": 2},
    "qwen2": {},
    "qwen2moe": {"experts": 8, "top_k": 2},
    "qwen3": {},
    "qwen3moe": {"experts": 8, "top_k": 2},
    "olmoe": {"experts": 8, "top_k": 2},
    "gemma3": {"window": 8, "swa_pattern": 6},
    "phi3": {"orig_ctx": 32},
    "smollm3": {},
}


def make_vocab(size: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE vocabulary of ``size`` tokens: the 256 byte characters, merged tokens (each
    the concatenation of a merge's two earlier tokens), then the special tokens.

    Returns (tokens, token types, merges "a b" in rank order)."""
    byte_chars = dict(BYTES_CHAR)  # GPT-2's reversible byte -> printable character map
    tokens, merges = list(byte_chars.values()), []
    seen = set(tokens)
    rng = np.random.default_rng(seed)
    letters = [byte_chars[b] for b in b" etaoinshrdlucmfwypvbgk"]
    pool = list(letters)
    while len(tokens) < size - len(SPECIAL_TOKENS):
        a = pool[int(rng.integers(len(pool)))]
        b = (
            letters[int(rng.integers(len(letters)))]
            if rng.random() < 0.7
            else pool[int(rng.integers(len(pool)))]
        )
        t = a + b
        if t in seen or len(t) > 12:
            continue
        seen.add(t)
        tokens.append(t)
        merges.append(f"{a} {b}")
        pool.append(t)
    types = [1] * len(tokens) + [3] * len(SPECIAL_TOKENS)  # normal, control
    return tokens + list(SPECIAL_TOKENS), types, merges


def resolve_shape(arch: str, preset: str = "tiny", **overrides: int | None) -> Shape:
    """The preset's shape with the architecture's defaults and ``overrides`` (None: keep) applied,
    checked for what llama.cpp needs."""
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: choose from {', '.join(ARCHS)}")
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: choose from {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Shape)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown shape fields {unknown}: choose from {', '.join(sorted(fields))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    s = PRESETS[preset]
    defaults = {k: v for k, v in ARCH_DEFAULTS[arch].items() if getattr(s, k) == 0}
    s = replace(s, **{**defaults, **given})
    if arch in ("mixtral", "olmoe") and s.expert_ffn and s.expert_ffn != s.ffn:
        if "ffn" in given:
            raise ValueError(
                f"{arch}: experts are ffn wide in llama.cpp; give --ffn or --expert-ffn, not both"
            )
        s = replace(s, ffn=s.expert_ffn)
    if arch in ("mixtral", "olmoe"):
        s = replace(s, expert_ffn=0)
    if arch == "qwen2moe":
        # Qwen-style: routed experts narrower than the shared one (which llama.cpp requires)
        s = replace(s, expert_ffn=s.expert_ffn or s.ffn // 2, shared_ffn=s.shared_ffn or s.ffn)
    if arch == "qwen3moe":
        s = replace(s, expert_ffn=s.expert_ffn or s.ffn // 2)
    if arch in ("qwen3", "qwen3moe", "gemma3") and not s.head_dim and preset == "tiny":
        s = replace(s, head_dim=2 * s.dim // s.heads)  # head_dim != dim / heads, as they have
    if arch == "phi3" and not s.rope_dim and preset == "tiny":
        s = replace(s, rope_dim=s.hd * 3 // 4)  # partial rotary, as Phi-4-mini
    if arch == "olmoe":
        s = replace(s, kv_heads=s.heads)  # llama.cpp's OLMoE q/k norms are both n_embd wide
    if arch in MOE_ARCHS and not s.experts:
        raise ValueError(f"{arch} needs --experts > 0")
    if arch not in MOE_ARCHS and s.experts:
        raise ValueError(f"{arch} is dense: drop --experts")
    if (s.rope_dim or s.hd) % 2 or (s.rope_dim or 0) > s.hd:
        raise ValueError(f"rope_dim {s.rope_dim}: even, at most the head size {s.hd}")
    if s.experts and not 0 < s.top_k <= s.experts:
        raise ValueError(f"top_k {s.top_k}: choose 1..{s.experts} (the expert count)")
    if arch != "qwen2moe" and s.shared_ffn:
        raise ValueError(f"{arch} has no shared expert: drop --shared-ffn (qwen2moe has one)")
    if (not s.head_dim and s.dim % s.heads) or s.heads % s.kv_heads or s.hd % 2:
        raise ValueError(
            f"dim {s.dim}, heads {s.heads}, kv_heads {s.kv_heads}: heads must divide dim into an "
            "even head size, and kv_heads must divide heads"
        )
    if s.vocab < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab {s.vocab}: at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)"
        )
    return s


def tensor_plan(arch: str, s: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape (..., out, in), kind) of every tensor in file order; kind: w (matrix),
    o (matrix writing into the residual stream), n (norm), b (bias), r (router, kept F32)."""
    hd = s.hd
    plan = [("token_embd.weight", (s.vocab, s.dim), "w")]
    half = (s.rope_dim or hd) // 2
    if arch == "llama3":
        plan.append(("rope_freqs.weight", (half,), "f"))
    for i in range(s.layers):
        p = f"blk.{i}."
        plan.append((p + "attn_norm.weight", (s.dim,), "n"))
        if arch == "phi3":
            plan.append((p + "attn_qkv.weight", ((s.heads + 2 * s.kv_heads) * hd, s.dim), "w"))
        else:
            plan += [
                (p + "attn_q.weight", (s.heads * hd, s.dim), "w"),
                (p + "attn_k.weight", (s.kv_heads * hd, s.dim), "w"),
                (p + "attn_v.weight", (s.kv_heads * hd, s.dim), "w"),
            ]
        plan.append((p + "attn_output.weight", (s.dim, s.heads * hd), "o"))
        if arch == "phi3" and i == 0 and s.orig_ctx:  # LongRoPE, read for every layer
            plan += [("rope_factors_long.weight", (half,), "f"),
                     ("rope_factors_short.weight", (half,), "f")]  # fmt: skip
        if arch in ("qwen3", "qwen3moe", "gemma3"):
            plan += [
                (p + "attn_q_norm.weight", (hd,), "n"),
                (p + "attn_k_norm.weight", (hd,), "n"),
            ]
        if arch == "gemma3":
            plan.append((p + "post_attention_norm.weight", (s.dim,), "n"))
        if arch in ("qwen2moe", "qwen2"):
            plan += [
                (p + "attn_q.bias", (s.heads * hd,), "b"),
                (p + "attn_k.bias", (s.kv_heads * hd,), "b"),
                (p + "attn_v.bias", (s.kv_heads * hd,), "b"),
            ]
        if arch == "olmoe":
            plan += [
                (p + "attn_q_norm.weight", (s.heads * hd,), "n"),
                (p + "attn_k_norm.weight", (s.kv_heads * hd,), "n"),
            ]
        plan.append((p + "ffn_norm.weight", (s.dim,), "n"))
        if s.experts:
            f = s.expert_ffn or s.ffn
            plan += [
                (p + "ffn_gate_inp.weight", (s.experts, s.dim), "r"),
                (p + "ffn_gate_exps.weight", (s.experts, f, s.dim), "w"),
                (p + "ffn_up_exps.weight", (s.experts, f, s.dim), "w"),
                (p + "ffn_down_exps.weight", (s.experts, s.dim, f), "o"),
            ]
            if s.shared_ffn:
                plan += [
                    (p + "ffn_gate_inp_shexp.weight", (s.dim,), "r"),
                    (p + "ffn_gate_shexp.weight", (s.shared_ffn, s.dim), "w"),
                    (p + "ffn_up_shexp.weight", (s.shared_ffn, s.dim), "w"),
                    (p + "ffn_down_shexp.weight", (s.dim, s.shared_ffn), "o"),
                ]
        elif arch == "phi3":
            plan += [
                (p + "ffn_up.weight", (2 * s.ffn, s.dim), "w"),
                (p + "ffn_down.weight", (s.dim, s.ffn), "o"),
            ]
        else:
            plan += [
                (p + "ffn_gate.weight", (s.ffn, s.dim), "w"),
                (p + "ffn_up.weight", (s.ffn, s.dim), "w"),
                (p + "ffn_down.weight", (s.dim, s.ffn), "o"),
            ]
        if arch == "gemma3":
            plan.append((p + "post_ffw_norm.weight", (s.dim,), "n"))
    plan.append(("output_norm.weight", (s.dim,), "n"))
    if arch != "gemma3" and not s.tied:  # Gemma ties its head to the embedding
        plan.append(("output.weight", (s.vocab, s.dim), "w"))
    return plan


@dataclass(frozen=True)
class Clusters:
    """The structure of ``--router clustered``. ``k`` = experts / (2 top-k) orthonormal
    directions in the model's space; every token belongs to one cluster, and its embedding leans
    along that cluster's direction (:data:`EMBED_PULL`); in each layer 2 top-k experts belong to
    each cluster (a different draw per layer), and their router rows lean along its direction
    (:data:`ROUTER_PULL`). A token's stream then scores its cluster's experts higher in every
    layer, and the router's random part picks which top-k of them: tokens of a cluster share
    experts, as trained routers route related tokens alike, while the uniform router spreads
    every token over all experts. What stays of the lean in deeper layers (the random layers add
    to the stream) sets how strongly the structure holds there; ``tools/bench_scale.py`` reports
    the hit rates it gives."""

    k: int
    dirs: np.ndarray  # (k, dim), orthonormal rows
    token: np.ndarray  # (vocab,): each token's cluster
    experts: int
    seed: int

    @classmethod
    def make(cls, s: Shape, seed: int) -> Clusters:
        k = max(1, s.experts // (2 * s.top_k))
        rng = np.random.default_rng([seed, zlib.crc32(b"clusters")])
        q, _ = np.linalg.qr(rng.standard_normal((s.dim, k)))
        token = rng.integers(0, k, s.vocab)
        return cls(k, np.ascontiguousarray(q.T, np.float32), token, s.experts, seed)

    def of_experts(self, layer: int) -> np.ndarray:
        """The cluster of each expert of ``layer``."""
        perm = np.random.default_rng([self.seed, zlib.crc32(b"experts"), layer]).permutation(
            self.experts
        )
        out = np.empty(self.experts, np.int64)
        out[perm] = np.arange(self.experts) * self.k // self.experts
        return out

    def lean(self, name: str, r0: int, a: np.ndarray, std: float) -> np.ndarray:
        """Rows ``r0..`` of tensor ``name`` (random values ``a`` of std ``std``) with the lean."""
        dim = a.shape[-1]
        if name == "token_embd.weight":
            pull = EMBED_PULL * std * math.sqrt(dim)
            return a + np.float32(pull) * self.dirs[self.token[r0 : r0 + len(a)]]
        if name.endswith(".ffn_gate_inp.weight"):
            layer = int(name.split(".")[1])
            pull = ROUTER_PULL * std  # the random part's length is std * sqrt(dim)
            return a + np.float32(pull) * self.dirs[self.of_experts(layer)]
        return a


def init_std(kind: str, s: Shape) -> float:
    """Standard deviation of a tensor's random values (norms: of their deviation from 1).

    Matrices 0.02; those adding into the residual stream 0.02 / sqrt(2 layers), so the stream's
    scale stays put over many layers; routers 1 / sqrt(dim), so router logits have unit scale."""
    return {
        "w": WEIGHT_STD,
        "o": WEIGHT_STD / math.sqrt(2 * s.layers),
        "b": WEIGHT_STD,
        "r": 1 / math.sqrt(s.dim),
        "n": 0.05,  # near 1, not exactly: a norm applied in the wrong place shows in parity tests
        "f": 0.0,  # rope frequency factors (see _write_tensor)
    }[kind]


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    # one stream per tensor: a tensor's values depend on seed and name only, not on what precedes
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _write_tensor(
    w, name: str, shape: tuple[int, ...], kind: str, t, s: Shape, seed: int,
    clusters: Clusters | None = None,
) -> int:  # fmt: skip
    """Generate, quantize and write one tensor in row chunks; returns the bytes written."""
    import gguf

    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    if t == F32:
        out = np.empty((rows, cols), np.float32)
    elif t == F16:
        out = np.empty((rows, cols), np.float16)
    else:
        out = np.empty(gguf.quants.quant_shape_to_byte_shape((rows, cols), t), np.uint8)
    rng = _tensor_rng(seed, name)
    std = np.float32(init_std(kind, s))
    step = max(1, CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        a = rng.standard_normal((min(step, rows - r0), cols), dtype=np.float32) * std
        if kind == "n":
            a += np.float32(1.0)
        elif kind == "f" and name == "rope_freqs.weight":  # Llama 3.1's, for this head size
            from edgert.compiler.frontends.hf import llama3_factors

            a = llama3_factors(ROPE_THETA["llama3"], 2 * cols, LLAMA3_SCALING)[None, :]
        elif kind == "f":  # LongRoPE's, drawn from 1..8
            a = rng.uniform(1.0, 8.0, a.shape).astype(np.float32)
        if clusters is not None:
            a = clusters.lean(name, r0, a, float(std))
        if t == F32:
            out[r0 : r0 + len(a)] = a
        elif t == F16:
            out[r0 : r0 + len(a)] = a.astype(np.float16)
        elif t.name.endswith("_K"):  # not in the gguf package: edgert's own K-quant writer
            from edgert.compiler.quant.ggml import encode_blocks

            out[r0 : r0 + len(a)] = encode_blocks(t.name, a)
        else:
            out[r0 : r0 + len(a)] = gguf.quants.quantize(a, t)
    w.write_tensor_data(out)
    return out.nbytes


def make_synthetic_gguf(
    *,
    out: str | Path,
    arch: str = "llama",
    preset: str = "tiny",
    qtype: str = "Q8_0",
    seed: int = 0,
    progress: bool = True,
    chat_template: str | None = None,
    router: str = "random",
    **overrides: int | None,
) -> Path:
    """Write a random-weight GGUF model that llama.cpp and edgert load, and return its path.

    Parameters
    ----------
    out : where to write the ``.gguf`` file.
    arch : one of :data:`ARCHS`; ``mixtral`` is written as GGUF ``llama`` with stacked experts.
    preset : a :data:`PRESETS` shape (``tiny``, ``1b``, ``moe-1g``).
    qtype : storage of the matrices (:data:`QTYPES`); a matrix whose row length is not a multiple
        of the quantization block (256 for the K-quants and the ternary TQ types) stays F32, and norms, biases and routers
        are always F32. K-quants are written by plain rounding per sub-block
        (edgert.compiler.quant.ggml.encode_blocks), not llama.cpp's search.
    seed : the same seed and arguments give the same bytes.
    progress : a progress bar on stderr (when it is a terminal).
    chat_template : a jinja chat template stored as ``tokenizer.chat_template``.
    router : a mixture's routers (:data:`ROUTERS`): ``random`` rows, or ``clustered``
        (:class:`Clusters`: tokens of a cluster prefer the same experts).
    overrides : fields of :class:`Shape` (layers, dim, ffn, heads, kv_heads, vocab, experts,
        top_k, expert_ffn, shared_ffn, ctx) replacing the preset's; None keeps the preset's.

    Tokenizer: byte-level BPE (``gpt2``) of ``vocab`` tokens: 256 byte tokens, merges, and
    ``<|endoftext|>`` (bos and eos) and ``<|im_end|>`` as the last two ids.
    """
    import gguf

    from edgert.progress import Progress

    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: choose from {', '.join(QTYPES)}")
    if router not in ROUTERS:
        raise ValueError(f"router {router!r}: choose from {', '.join(ROUTERS)}")
    s = resolve_shape(arch, preset, **overrides)
    if router == "clustered" and not s.experts:
        raise ValueError(f"--router clustered needs a mixture of experts ({arch} has none)")
    clusters = Clusters.make(s, seed) if router == "clustered" else None
    qt = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[qt][0]

    def stored_type(kind: str, shape: tuple[int, ...]) -> gguf.GGMLQuantizationType:
        if kind in ("w", "o") and shape[-1] % block == 0:
            return qt
        return gguf.GGMLQuantizationType.F32

    out = Path(out)
    ga = GGUF_ARCH[arch]
    tokens, types, merges = make_vocab(s.vocab, seed)
    w = gguf.GGUFWriter(str(out), ga)
    # (a name containing "phi3" makes llama.cpp look for Phi-3's special tokens in the vocabulary)
    w.add_name(f"synthetic-{arch.replace('phi3', 'phi')}-{preset}")
    w.add_file_type(FILE_TYPE[qtype])
    w.add_context_length(s.ctx)
    w.add_embedding_length(s.dim)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(s.rope_dim or s.hd)
    if s.head_dim:
        w.add_key_length(s.hd)
        w.add_value_length(s.hd)
    w.add_rope_freq_base(ROPE_THETA.get(arch, 10000.0))
    if arch == "gemma3":
        w.add_sliding_window(s.window)
        w.add_sliding_window_pattern(s.swa_pattern)
        w.add_rope_freq_base_swa(10000.0)
    if arch == "phi3" and s.orig_ctx:
        w.add_rope_scaling_orig_ctx_len(s.orig_ctx)
        scale = s.ctx / s.orig_ctx
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(s.orig_ctx)))
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.vocab)
    if s.experts:
        w.add_expert_count(s.experts)
        w.add_expert_used_count(s.top_k)
    if arch in ("qwen2moe", "qwen3moe"):
        w.add_expert_feed_forward_length(s.expert_ffn or s.ffn)
        if s.shared_ffn:
            w.add_expert_shared_feed_forward_length(s.shared_ffn)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(TOKENIZER_PRE[arch])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - len(SPECIAL_TOKENS))
    w.add_eos_token_id(len(tokens) - len(SPECIAL_TOKENS))
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    plan = [(n, shape, kind, stored_type(kind, shape)) for n, shape, kind in tensor_plan(arch, s)]
    total = 0
    for name, shape, _, t in plan:
        # shape in numpy order; byte shape for quantized types (GGUFWriter reverses to GGUF order)
        if t == gguf.GGMLQuantizationType.F32:
            nbytes = math.prod(shape) * 4
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        elif t == gguf.GGMLQuantizationType.F16:
            nbytes = math.prod(shape) * 2
            w.add_tensor_info(name, shape, np.dtype(np.float16), nbytes)
        else:
            bshape = gguf.quants.quant_shape_to_byte_shape(shape, t)
            nbytes = math.prod(bshape)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), nbytes, raw_dtype=t)
        total += nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    mib = max(1, total >> 20)
    with Progress(
        mib, f"writing {out.name}", unit=" MiB", enabled=None if progress else False
    ) as p:
        done = 0
        for name, shape, kind, t in plan:
            done += _write_tensor(w, name, shape, kind, t, s, seed, clusters)
            p.update(min(mib, done >> 20) - p.n)
    w.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="llama")
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--qtype", choices=QTYPES, default="Q8_0")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--chat-template", help="a jinja file stored as the model's chat template")
    ap.add_argument("--router", choices=ROUTERS, default="random",
                    help="a mixture's routers: random rows, or clustered (tokens of a cluster "
                         "prefer the same experts, as trained routers)")  # fmt: skip
    fields = [f.name for f in dataclasses.fields(Shape)]
    for f in fields:
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=None, help="(preset's)")
    a = ap.parse_args(argv)
    try:
        p = make_synthetic_gguf(
            out=a.out,
            arch=a.arch,
            preset=a.preset,
            qtype=a.qtype,
            seed=a.seed,
            progress=not a.quiet,
            chat_template=Path(a.chat_template).read_text() if a.chat_template else None,
            router=a.router,
            **{f: getattr(a, f) for f in fields},
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
