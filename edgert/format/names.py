"""Every tensor name edgert uses, in one place: frontends write them, the compiler packs them,
planners and executors look them up. Names follow GGUF's convention (``token_embd.weight``,
``blk.N.attn_q.weight``, ``blk.N.ffn_gate_exps.weight`` ...) whatever file a model came from.

A layer's tensors are ``blk.N.<role>``; the roles a layer may have are listed below by group.
An artifact stores each expert of a mixture on its own (``blk.N.ffn_gate_exps.E.weight``), so
one expert is one contiguous read.
"""

from __future__ import annotations

import re

EMBEDDING = "token_embd.weight"
OUTPUT_NORM = "output_norm.weight"
OUTPUT = "output.weight"  # the head; absent when it is tied to the embedding
#: rotary frequency factors, (rope_dim / 2,): Llama-3.1's ``rope_freqs``; Phi-3's LongRoPE pair
#: (the long one past the original context, the short one within it)
ROPE_FREQS = "rope_freqs.weight"
ROPE_FACTORS_LONG = "rope_factors_long.weight"
ROPE_FACTORS_SHORT = "rope_factors_short.weight"

#: a layer's attention and FFN projections, in the order the C forward pass's layer holds them
ATTN_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output")
FFN_PROJECTIONS = ("ffn_gate", "ffn_up", "ffn_down")
PROJECTIONS = ATTN_PROJECTIONS + FFN_PROJECTIONS
#: an expert's projections (``ffn_<p>_exps``, ``ffn_<p>_shexp``)
EXPERT_PROJECTIONS = ("gate", "up", "down")
#: biases of the q/k/v projections (Qwen2 family)
BIASES = ("attn_q", "attn_k", "attn_v")

#: not weights of the model: what the compiler records for the planner and the sparse FFN
ROUTING_TRACE = "moe_routing_trace"
BUNDLE_INDEX = "ffn_bundle_index"
ACTIVITY_TRACE = "ffn_activity_trace"

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.(\d+)\.weight$")


def block(i: int) -> str:
    """The prefix of layer ``i``'s tensors (also the name of its unit in bit allocation)."""
    return f"blk.{i}"


def layer(i: int, role: str) -> str:
    """``blk.i.role`` (role: ``attn_norm.weight``, ``attn_q.bias`` ...)."""
    return f"{block(i)}.{role}"


def weight(i: int, proj: str) -> str:
    """Layer ``i``'s weight ``proj`` (``attn_q``, ``ffn_down``, ``ffn_gate_inp`` ...)."""
    return f"blk.{i}.{proj}.weight"


def bias(i: int, proj: str) -> str:
    return f"blk.{i}.{proj}.bias"


def attn_norm(i: int) -> str:
    return weight(i, "attn_norm")


def ffn_norm(i: int) -> str:
    return weight(i, "ffn_norm")


def q_norm(i: int) -> str:
    return weight(i, "attn_q_norm")


def k_norm(i: int) -> str:
    return weight(i, "attn_k_norm")


def post_attn_norm(i: int) -> str:
    """The norm of the attention's output before it joins the residual stream (Gemma 3)."""
    return weight(i, "post_attention_norm")


def post_ffn_norm(i: int) -> str:
    """The norm of the FFN's output before it joins the residual stream (Gemma 3)."""
    return weight(i, "post_ffw_norm")


def router(i: int) -> str:
    return weight(i, "ffn_gate_inp")


def experts(i: int, proj: str) -> str:
    """All experts' ``proj`` (gate, up, down) of layer ``i`` stacked (experts, out, in)."""
    return weight(i, f"ffn_{proj}_exps")


def expert(i: int, proj: str, e: int) -> str:
    """Expert ``e``'s ``proj`` of layer ``i`` as an artifact stores it."""
    return f"blk.{i}.ffn_{proj}_exps.{e}.weight"


def expert_tensors(i: int, e: int) -> list[str]:
    """Expert ``e`` of layer ``i``: its gate, up and down projections (stored together)."""
    return [expert(i, p, e) for p in EXPERT_PROJECTIONS]


def parse_expert(name: str) -> tuple[int, str, int] | None:
    """(layer, proj, expert) of an artifact's per-expert name, else None."""
    m = _EXPERT.match(name)
    return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def shared(i: int, proj: str) -> str:
    """The shared expert's ``proj`` of layer ``i`` (Qwen2-MoE)."""
    return weight(i, f"ffn_{proj}_shexp")


def shared_gate(i: int) -> str:
    """The sigmoid gate of layer ``i``'s shared expert, (dim,)."""
    return weight(i, "ffn_gate_inp_shexp")


def bundles(i: int) -> str:
    """Layer ``i``'s FFN as neuron bundles (``--sparse-ffn``)."""
    return f"blk.{i}.ffn_bundles"


def layer_of(name: str) -> int | None:
    """The layer a tensor belongs to, None for the model's own (embedding, head, norms)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None
