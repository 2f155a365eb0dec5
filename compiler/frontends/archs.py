"""Per-architecture facts the frontends need, in one registry.

Each entry maps a source architecture name (GGUF ``general.architecture`` or HF ``model_type``) to
the ModelConfig fields that differ between families. Adding an architecture = adding an entry here
(and teaching the reference forward anything genuinely new).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    arch: str  # edgert's architecture name (ModelConfig.arch)
    rope_style: str  # rotary style of the weights as stored in GGUF
    qkv_bias: bool = False
    qk_norm: bool = False
    expert_weights_norm: bool = False  # default when the file does not say
    hf_permute_qk: bool = False  # HF checkpoints store q/k for "neox" rotation; GGUF permutes them


#: GGUF general.architecture -> spec ("mixtral" GGUFs say "llama" and carry experts)
GGUF_ARCHS = {
    "llama": ArchSpec("llama", "norm", expert_weights_norm=True, hf_permute_qk=True),
    "qwen2moe": ArchSpec("qwen2moe", "neox", qkv_bias=True),
    "olmoe": ArchSpec("olmoe", "neox", qk_norm=True),
}

#: HF config.json model_type -> GGUF architecture name
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2_moe": "qwen2moe",
    "olmoe": "olmoe",
}


def supported_names() -> str:
    return ", ".join(sorted(set(GGUF_ARCHS) | set(HF_MODEL_TYPES)))
