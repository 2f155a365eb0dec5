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
ARCHITECTURES = ("llama", "qwen2moe", "olmoe")


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
        for i in range(c.n_layers):
            out += [names.attn_norm(i), names.ffn_norm(i)]
            out += [names.weight(i, p) for p in names.ATTN_PROJECTIONS]
            if c.qkv_bias:
                out += [names.bias(i, p) for p in names.BIASES]
            if c.qk_norm:
                out += [names.q_norm(i), names.k_norm(i)]
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
