"""The in-memory model description every frontend produces: a config plus named tensors.

Tensor names follow GGUF's convention (``token_embd.weight``, ``blk.N.attn_q.weight``,
``blk.N.ffn_gate_exps.weight`` ...) whatever file the model came from, and weights are laid out
(out_features, in_features). Rotary embedding style is part of the config, so frontends convert
weights once and every consumer sees one convention.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from edgert.errors import ModelFormatError
from edgert.format import names

log = logging.getLogger(__name__)

#: architectures the reference forward executes; "mixtral" is llama with experts
ARCHITECTURES = (
    "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "olmoe", "gemma3", "phi3", "smollm3"
)  # fmt: skip
ACTIVATIONS = ("silu", "gelu_tanh")
#: how the rotary frequencies are divided per dimension: "" not at all, "freqs" by
#: ``rope_freqs.weight`` (Llama 3.1), "longrope" by Phi-3's long or short factors
ROPE_FACTORS = ("", "freqs", "longrope")


@dataclass
class ModelConfig:
    arch: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    rope_dim: int = 0  # rotated dims per head; 0 = head_dim
    rope_style: str = "norm"  # "norm": adjacent pairs rotate (llama.cpp NORM); "neox": halves
    rms_eps: float = 1e-5
    context_length: int = 2048
    # mixture of experts (0 experts = dense FFN)
    n_experts: int = 0
    n_experts_used: int = 0
    expert_ffn_dim: int = 0
    shared_expert_ffn_dim: int = 0
    expert_weights_norm: bool = False  # renormalize the top-k router probabilities to sum to 1
    #: every chosen expert counts with weight 1 (experts split from one dense FFN: the chosen
    #: experts' neurons add up as in that FFN; all experts chosen = the dense model)
    expert_weights_unit: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm over the whole q / k projection (OLMoE)
    qk_norm_per_head: bool = False  # RMSNorm over each head of q and k (Qwen3, Gemma 3)
    post_norms: bool = False  # RMSNorm on the attention's and the FFN's outputs (Gemma 3)
    activation: str = "silu"  # the FFN's gate: silu (SwiGLU) or gelu_tanh (GeGLU)
    embed_scale: float = 1.0  # embeddings are multiplied by this (Gemma: sqrt(dim))
    attn_scale: float = 0.0  # attention scores times this; 0: 1 / sqrt(head_dim)
    rope_scale: float = 1.0  # linear rope scaling: positions times this (1 / factor)
    rope_factors: str = ""  # see ROPE_FACTORS
    rope_orig_ctx: int = 0  # LongRoPE: the long factors apply to contexts longer than this
    rope_attn_factor: float = 1.0  # cos and sin times this (LongRoPE)
    #: sliding-window attention: the layers in ``swa_layers`` see the last ``sliding_window``
    #: positions (their own included), with their own rope base and scale
    sliding_window: int = 0
    swa_layers: list[int] = field(default_factory=list)
    rope_theta_swa: float = 0.0  # 0: rope_theta
    rope_scale_swa: float = 1.0
    no_rope_layers: list[int] = field(default_factory=list)  # layers without RoPE (SmolLM3)
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # unknown metadata kept aside

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ModelFormatError(
                f"unsupported architecture {self.arch!r}",
                f"edgert runs {', '.join(ARCHITECTURES)} (mixtral = llama with experts)",
            )
        if self.rope_dim == 0:
            self.rope_dim = self.head_dim
        if self.n_heads % self.n_kv_heads:
            raise ModelFormatError(
                f"{self.n_heads} attention heads are not a multiple of {self.n_kv_heads} KV heads"
            )
        if self.rope_style not in ("norm", "neox"):
            raise ModelFormatError(f"unknown rope style {self.rope_style!r}")
        if self.n_experts and not (0 < self.n_experts_used <= self.n_experts):
            raise ModelFormatError(
                f"{self.n_experts_used} experts used per token out of {self.n_experts}"
            )
        if self.activation not in ACTIVATIONS:
            raise ModelFormatError(
                f"unknown FFN activation {self.activation!r}",
                f"edgert runs {', '.join(ACTIVATIONS)}",
            )
        if self.rope_factors not in ROPE_FACTORS:
            raise ModelFormatError(f"unknown rope factors {self.rope_factors!r}")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ModelFormatError(f"{self.rope_dim} rotary dims of a {self.head_dim}-wide head")
        self.swa_layers = sorted(int(i) for i in self.swa_layers)
        self.no_rope_layers = sorted(int(i) for i in self.no_rope_layers)
        for what, ls in (("sliding-window", self.swa_layers), ("no-rope", self.no_rope_layers)):
            if ls and not 0 <= ls[0] <= ls[-1] < self.n_layers:
                raise ModelFormatError(f"{what} layers {ls} outside 0..{self.n_layers - 1}")
        if self.swa_layers and self.sliding_window < 1:
            raise ModelFormatError("sliding-window layers without a window size")
        if not self.rope_theta_swa:
            self.rope_theta_swa = self.rope_theta

    def window(self, layer: int) -> int:
        """The positions layer ``layer`` attends to (its own included); 0: all."""
        return self.sliding_window if layer in self.swa_layers else 0

    def rope_kind(self, layer: int) -> str | None:
        """Which rotary embedding layer ``layer`` applies: "global", "swa" (sliding layers'
        base and scale) or None."""
        if layer in self.no_rope_layers or self.rope_dim == 0:
            return None
        return "swa" if layer in self.swa_layers else "global"

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Lenient about unknown keys (kept in ``extra``), strict about missing ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - d.keys())
        if missing:
            raise ModelFormatError(f"model config lacks {', '.join(missing)}")
        known = {k: v for k, v in d.items() if k in names}
        unknown = {k: v for k, v in d.items() if k not in names}
        if unknown:
            log.debug("model config: keeping unknown keys aside: %s", sorted(unknown))
            known.setdefault("extra", {}).update(unknown)
        return cls(**known)


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order, (out, in) for matrices
    source_type: str  # e.g. "Q4_1", "F32", "BF16"


class ModelGraph:
    """Config + named tensors, dequantized to float32 on first use.

    Parameters
    ----------
    config:
        The model's hyper-parameters.
    infos:
        Every tensor's name, shape and source type.
    loader:
        ``loader(name) -> np.ndarray`` returning the float32 tensor (C-contiguous).
    tokenizer:
        An :class:`edgert.runtime.tokenizer.Tokenizer` (or None for weights-only models).
    """

    def __init__(
        self,
        config: ModelConfig,
        infos: Iterable[TensorInfo],
        loader: Callable[[str], np.ndarray],
        tokenizer: Any = None,
        source: str = "",
    ):
        self.config = config
        self.infos = {i.name: i for i in infos}
        self._loader = loader
        self._cache: dict[str, np.ndarray] = {}
        self.tokenizer = tokenizer
        self.source = source

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor ``name`` (cached after the first call)."""
        t = self._cache.get(name)
        if t is None:
            if name not in self.infos:
                raise ModelFormatError(
                    f"model {self.source or ''} has no tensor {name!r}".replace("  ", " "),
                    f"it is required by the {self.config.arch} architecture",
                )
            t = np.ascontiguousarray(self._loader(name), dtype=np.float32)
            want = self.infos[name].shape
            if t.shape != want:
                raise ModelFormatError(f"tensor {name} has shape {t.shape}, expected {want}")
            self._cache[name] = t
        return t

    def materialize(self, *, progress: bool | None = None) -> None:
        """Dequantize every tensor now (so later timings measure compute, not loading)."""
        from edgert.progress import Progress

        with Progress(len(self.infos), "loading weights", enabled=progress) as bar:
            for name in self.infos:
                self.tensor(name)
                bar.update(1)

    def drop(self, name: str) -> None:
        self._cache.pop(name, None)

    def n_params(self) -> int:
        return int(sum(int(np.prod(i.shape)) for i in self.infos.values()))

    def required_tensors(self) -> list[str]:
        """Names the architecture needs; frontends check them before anything runs."""
        c = self.config
        out = [names.EMBEDDING, names.OUTPUT_NORM]
        if c.rope_factors == "freqs":
            out.append(names.ROPE_FREQS)
        elif c.rope_factors == "longrope":
            out += [names.ROPE_FACTORS_LONG, names.ROPE_FACTORS_SHORT]
        for i in range(c.n_layers):
            out += [names.attn_norm(i), names.ffn_norm(i)]
            out += [names.weight(i, p) for p in names.ATTN_PROJECTIONS]
            if c.qkv_bias:
                out += [names.bias(i, p) for p in names.BIASES]
            if c.qk_norm or c.qk_norm_per_head:
                out += [names.q_norm(i), names.k_norm(i)]
            if c.post_norms:
                out += [names.post_attn_norm(i), names.post_ffn_norm(i)]
            if c.is_moe:
                out += [names.router(i)]
                out += [names.experts(i, p) for p in names.EXPERT_PROJECTIONS]
                if c.shared_expert_ffn_dim:
                    out += [names.shared(i, p) for p in names.EXPERT_PROJECTIONS]
                    out += [names.shared_gate(i)]
            else:
                out += [names.weight(i, p) for p in names.FFN_PROJECTIONS]
        return out

    def validate(self) -> None:
        missing = [n for n in self.required_tensors() if n not in self.infos]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ModelFormatError(
                f"{self.source or 'model'}: missing tensor {', '.join(missing[:3])}{more}",
                f"a {self.config.arch} model needs them; the file may be truncated or mislabelled",
            )
