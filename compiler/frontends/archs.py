"""Per-architecture facts the frontends need, in one registry.

Each entry maps a source architecture name (GGUF ``general.architecture`` or HF ``model_type``) to
the ModelConfig fields that differ between families. Adding an architecture = adding an entry here
(and teaching the reference forward anything genuinely new).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArchSpec:
    arch: str  # edgert's architecture name (ModelConfig.arch)
    rope_style: str  # rotary style of the weights as stored in GGUF
    qkv_bias: bool = False
    qk_norm: bool = False  # over the whole projection (OLMoE)
    qk_norm_per_head: bool = False  # over each head (Qwen3, Gemma 3)
    post_norms: bool = False  # norms on attention and FFN outputs (Gemma 3)
    activation: str = "silu"
    embed_scale_sqrt: bool = False  # embeddings times sqrt(dim) (Gemma)
    expert_weights_norm: bool = False  # default when the file does not say
    hf_permute_qk: bool = False  # HF checkpoints store q/k for "neox" rotation; GGUF permutes them
    hf_norm_offset: bool = False  # HF stores RMSNorm weights as w - 1 (Gemma); GGUF as w
    swa_pattern: int = 0  # every n-th layer global, the others sliding (Gemma 3: 6)
    no_rope_every: int = 0  # every n-th layer without RoPE (SmolLM3: 4)
    fused: bool = False  # q|k|v and gate|up stored as one matrix each (Phi-3)


#: GGUF general.architecture -> spec ("mixtral" GGUFs say "llama" and carry experts)
GGUF_ARCHS = {
    "llama": ArchSpec("llama", "norm", expert_weights_norm=True, hf_permute_qk=True),
    "qwen2": ArchSpec("qwen2", "neox", qkv_bias=True),
    "qwen2moe": ArchSpec("qwen2moe", "neox", qkv_bias=True),
    "qwen3": ArchSpec("qwen3", "neox", qk_norm_per_head=True),
    "qwen3moe": ArchSpec("qwen3moe", "neox", qk_norm_per_head=True, expert_weights_norm=True),
    "olmoe": ArchSpec("olmoe", "neox", qk_norm=True),
    "gemma3": ArchSpec(
        "gemma3",
        "neox",
        qk_norm_per_head=True,
        post_norms=True,
        activation="gelu_tanh",
        embed_scale_sqrt=True,
        hf_norm_offset=True,
        swa_pattern=6,
    ),
    "phi3": ArchSpec("phi3", "neox", fused=True),
    "smollm3": ArchSpec("smollm3", "norm", hf_permute_qk=True, no_rope_every=4),
}

#: HF config.json model_type -> GGUF architecture name
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "qwen2",
    "qwen2_moe": "qwen2moe",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "olmoe": "olmoe",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "phi3": "phi3",
    "smollm3": "smollm3",
}


def swa_layers(n_layers: int, pattern: int) -> list[int]:
    """Sliding-window layers when every ``pattern``-th layer is global (llama.cpp's
    set_swa_pattern: layer i slides iff i % pattern < pattern - 1)."""
    return [i for i in range(n_layers) if i % pattern < pattern - 1]


def no_rope_layers(n_layers: int, every: int) -> list[int]:
    """Layers without RoPE when every ``every``-th has none (SmolLM3: i + 1 divisible by 4)."""
    return [i for i in range(n_layers) if (i + 1) % every == 0]


def embed_scale(spec: ArchSpec, dim: int) -> float:
    """What embeddings are multiplied by: sqrt(dim) in float32 (Gemma), else 1."""
    return float(np.float32(np.sqrt(np.float32(dim)))) if spec.embed_scale_sqrt else 1.0


def fused_blocks(cfg, kind: str) -> list[tuple[str, int, int]]:
    """Phi-3's fused matrices split by rows: (projection, first row, end row) of ``kind``
    ``"qkv"`` (q, k, v) or ``"gate_up"`` (gate, then up)."""
    qd, kd, f = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim
    if kind == "qkv":
        return [("attn_q", 0, qd), ("attn_k", qd, qd + kd), ("attn_v", qd + kd, qd + 2 * kd)]
    return [("ffn_gate", 0, f), ("ffn_up", f, 2 * f)]


def supported_gguf() -> str:
    """The GGUF architectures edgert runs, for error messages."""
    return ", ".join(sorted(GGUF_ARCHS)) + " (mixtral = llama with experts)"


def supported_names() -> str:
    """The HF model types edgert runs, for error messages."""
    return ", ".join(sorted(HF_MODEL_TYPES))
