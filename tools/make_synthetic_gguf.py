"""Write random-weight GGUF models that both edgert and llama.cpp load: llama (dense), mixtral
(llama with experts), qwen2moe (qkv bias, shared expert) and olmoe (q/k norm), any size, in
F32/F16/Q8_0/Q4_0/Q4_1. Used for loader tests and for speed benchmarks at 1B+ sizes, where the
weights do not matter.

    python tools/make_synthetic_gguf.py --arch mixtral --preset moe-1g --qtype Q4_0 --out m.gguf

Tensors are generated and written one at a time, so a multi-GB model needs little memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ARCHS = ("llama", "mixtral", "qwen2moe", "olmoe")
QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")


@dataclass(frozen=True)
class Shape:
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


PRESETS = {
    # unit tests: a couple of MB at most
    "tiny": Shape(layers=2, dim=64, ffn=128, heads=4, kv_heads=2, vocab=512),
    # TinyLlama-like 1.1B: dims multiples of 256 so llama.cpp's K-quants apply
    "1b": Shape(layers=22, dim=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000),
    # mixtral layout, ~1.3 GB at Q4_0: 8 experts, top-2
    "moe-1g": Shape(
        layers=12, dim=1024, ffn=3584, heads=16, kv_heads=4, vocab=32000, experts=8, top_k=2
    ),
}
#: what each architecture needs beyond the shape
ARCH_DEFAULTS = {
    "llama": {},
    "mixtral": {"experts": 4, "top_k": 2},
    "qwen2moe": {"experts": 8, "top_k": 2, "shared_ffn": 256},
    "olmoe": {"experts": 8, "top_k": 2},
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_vocab(size: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Byte-level BPE vocabulary of ``size`` tokens: 256 bytes, merged tokens, 2 specials last."""
    specials = ["<|endoftext|>", "<|im_end|>"]
    base = list(bytes_to_unicode().values())
    tokens, merges = list(base), []
    seen = set(tokens)
    rng = np.random.default_rng(seed)
    letters = [bytes_to_unicode()[b] for b in b" etaoinshrdlucmfwypvbgk"]
    pool = list(letters)
    while len(tokens) < size - len(specials):
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
    types = [1] * len(tokens) + [3] * len(specials)
    return tokens + specials, types, merges


def tensor_plan(arch: str, s: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape (out, in), kind) for every tensor; kind: w (matrix), n (norm), b (bias),
    r (router, kept F32)."""
    hd = s.dim // s.heads
    plan = [("token_embd.weight", (s.vocab, s.dim), "w")]
    for i in range(s.layers):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (s.dim,), "n"),
            (p + "attn_q.weight", (s.heads * hd, s.dim), "w"),
            (p + "attn_k.weight", (s.kv_heads * hd, s.dim), "w"),
            (p + "attn_v.weight", (s.kv_heads * hd, s.dim), "w"),
            (p + "attn_output.weight", (s.dim, s.heads * hd), "o"),
        ]
        if arch == "qwen2moe":
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
        else:
            plan += [
                (p + "ffn_gate.weight", (s.ffn, s.dim), "w"),
                (p + "ffn_up.weight", (s.ffn, s.dim), "w"),
                (p + "ffn_down.weight", (s.dim, s.ffn), "o"),
            ]
    plan += [("output_norm.weight", (s.dim,), "n"), ("output.weight", (s.vocab, s.dim), "w")]
    return plan


def _values(kind: str, shape: tuple[int, ...], layers: int, rng) -> np.ndarray:
    if kind == "n":
        return (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    std = {"w": 0.02, "o": 0.02 / math.sqrt(2 * layers), "b": 0.02, "r": 0.5}[kind]
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def make_synthetic_gguf(
    *,
    out: str | Path,
    arch: str = "llama",
    preset: str = "tiny",
    qtype: str = "Q8_0",
    seed: int = 0,
    progress: bool = True,
    **overrides: int,
) -> Path:
    """Write a random-weight GGUF and return its path.

    ``overrides`` replace fields of the preset's :class:`Shape` (layers, dim, ffn, heads, kv_heads,
    vocab, experts, top_k, expert_ffn, shared_ffn). Matrices are stored as ``qtype`` when their
    row length allows it (else F32); norms, biases and routers are F32.
    """
    import gguf

    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: choose from {', '.join(ARCHS)}")
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: choose from {', '.join(QTYPES)}")
    s = PRESETS[preset]
    defaults = {k: v for k, v in ARCH_DEFAULTS[arch].items() if getattr(s, k) == 0}
    s = replace(s, **{**defaults, **{k: v for k, v in overrides.items() if v is not None}})
    if arch == "olmoe" and s.kv_heads != s.heads:
        s = replace(s, kv_heads=s.heads)  # llama.cpp's OLMoE has q/k norms of width n_embd
    if arch in ("mixtral", "qwen2moe", "olmoe") and not s.experts:
        raise ValueError(f"{arch} needs experts > 0")
    gguf_arch = "llama" if arch == "mixtral" else arch
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    block = gguf.GGML_QUANT_SIZES[qt][0]
    out = Path(out)
    tokens, types, merges = make_vocab(s.vocab, seed)
    w = gguf.GGUFWriter(str(out), gguf_arch)
    w.add_name(f"synthetic-{arch}-{preset}")
    w.add_context_length(s.ctx)
    w.add_embedding_length(s.dim)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(s.dim // s.heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.vocab)
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}[qtype])
    if s.experts:
        w.add_expert_count(s.experts)
        w.add_expert_used_count(s.top_k)
        if arch in ("qwen2moe", "olmoe"):
            w.add_expert_feed_forward_length(s.expert_ffn or s.ffn)
        if s.shared_ffn:
            w.add_expert_shared_feed_forward_length(s.shared_ffn)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 2)
    w.add_add_bos_token(False)

    plan = tensor_plan(arch, s)
    rng = np.random.default_rng(seed)

    def stored_type(kind: str, shape: tuple[int, ...]):
        if kind in ("w", "o") and shape[-1] % block == 0 and qtype != "F32":
            return qt
        return gguf.GGMLQuantizationType.F32

    for name, shape, kind in plan:
        t = stored_type(kind, shape)
        if t == gguf.GGMLQuantizationType.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        else:
            bshape = gguf.quants.quant_shape_to_byte_shape(shape, t)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for k, (name, shape, kind) in enumerate(plan):
        a = _values(kind, shape, s.layers, rng)
        t = stored_type(kind, shape)
        data = a if t == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(a, t)
        w.write_tensor_data(data)
        if progress and sys.stderr.isatty():
            sys.stderr.write(f"\rwriting {out.name}: {k + 1}/{len(plan)} tensors")
    if progress and sys.stderr.isatty():
        sys.stderr.write("\n")
    w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="llama")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--qtype", choices=QTYPES, default="Q8_0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    fields = [f.name for f in dataclasses.fields(Shape) if f.name != "ctx"]
    for f in fields:
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=None)
    a = ap.parse_args()
    over = {f: getattr(a, f) for f in fields}
    p = make_synthetic_gguf(
        out=a.out, arch=a.arch, preset=a.preset, qtype=a.qtype, seed=a.seed, **over
    )
    print(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
