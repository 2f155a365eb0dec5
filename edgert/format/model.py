"""The in-memory model description every frontend produces: a config plus named tensors.

Tensor names follow GGUF's convention (``token_embd.weight``, ``blk.N.attn_q.weight``,
``blk.N.ffn_gate_exps.weight`` ...) whatever file the model came from, and weights are laid out
(out_features, in_features). Rotary embedding style is part of the config, so frontends convert
weights once and every consumer sees one convention.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from edgert.errors import ModelFormatError, show
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
#: ranges of a config's integer fields, far beyond any released model: a corrupt file's value
#: fails here, named, instead of as a division by zero or a terabyte allocation later
LIMITS: dict[str, tuple[int, int]] = {
    "n_layers": (1, 1 << 12),
    "dim": (1, 1 << 20),
    "n_heads": (1, 1 << 14),
    "n_kv_heads": (1, 1 << 14),
    "head_dim": (1, 1 << 14),
    "ffn_dim": (0, 1 << 22),  # 0: a mixture without a dense width
    "vocab_size": (1, 1 << 24),
    "rope_dim": (0, 1 << 14),
    "context_length": (1, (1 << 31) - 1),
    "n_experts": (0, 1 << 14),
    "n_experts_used": (0, 1 << 14),
    "expert_ffn_dim": (0, 1 << 22),
    "shared_expert_ffn_dim": (0, 1 << 22),
    "rope_orig_ctx": (0, (1 << 31) - 1),
    "sliding_window": (0, (1 << 31) - 1),
}
#: float fields that must be finite and positive (``False``) or finite and not negative (``True``)
FLOATS = {
    "rope_theta": False,
    "rms_eps": False,
    "embed_scale": False,
    "attn_scale": True,  # 0: 1 / sqrt(head_dim)
    "rope_scale": False,
    "rope_attn_factor": False,
    "rope_theta_swa": True,  # 0: rope_theta
    "rope_scale_swa": False,
}


def printable(name: str, limit: int = 80) -> str:
    """A name read from a file, fit for a one-line error: itself when it is printable, else its
    repr (a corrupt name may hold newlines or control characters); long ones cut short."""
    s = name if isinstance(name, str) and name.isprintable() else repr(name)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def is_int(v: Any) -> bool:
    """An integer as JSON and TOML readers give them: not a bool, which Python counts as one."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_field(what: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int within [lo, hi], or a ModelFormatError naming ``what`` (the field as
    the source calls it), the value and the range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value) or not lo <= value <= hi:
        raise ModelFormatError(f"{what} = {show(value)}, expected an integer in {lo}..{hi}")
    return int(value)


def float_field(what: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as a finite float, positive (or also 0 with ``zero``), else a ModelFormatError
    naming ``what``, the value and what was expected."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not ok or not math.isfinite(value) or not (value >= 0 if zero else value > 0):
        want = "a finite number >= 0" if zero else "a finite number > 0"
        raise ModelFormatError(f"{what} = {show(value)}, expected {want}")
    return float(value)


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
        # every config passes here (frontends, manifests, transforms): ranges, then consistency
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise ModelFormatError(
                f"unsupported architecture {show(self.arch)}",
                f"edgert runs {', '.join(ARCHITECTURES)} (mixtral = llama with experts)",
            )
        for name, (lo, hi) in LIMITS.items():
            setattr(self, name, int_field(name, getattr(self, name), lo, hi))
        for name, zero in FLOATS.items():
            setattr(self, name, float_field(name, getattr(self, name), zero=zero))
        if not isinstance(self.extra, dict):
            raise ModelFormatError(f"extra = {show(self.extra)}, expected a mapping")
        self.name = str(self.name)
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
        if self.n_experts and not self.expert_ffn_dim:
            raise ModelFormatError(f"{self.n_experts} experts of width 0 (expert_ffn_dim)")
        if not self.n_experts and not self.ffn_dim:
            raise ModelFormatError("ffn_dim = 0, expected the FFN width of a dense model")
        if self.activation not in ACTIVATIONS:
            raise ModelFormatError(
                f"unknown FFN activation {self.activation!r}",
                f"edgert runs {', '.join(ACTIVATIONS)}",
            )
        if self.rope_factors not in ROPE_FACTORS:
            raise ModelFormatError(f"unknown rope factors {self.rope_factors!r}")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ModelFormatError(f"{self.rope_dim} rotary dims of a {self.head_dim}-wide head")
        for what in ("swa_layers", "no_rope_layers"):
            ls = getattr(self, what)
            if not isinstance(ls, (list, tuple)):
                raise ModelFormatError(f"{what} = {show(ls)}, expected a list of layers")
            top = self.n_layers - 1
            setattr(self, what, sorted(int_field(f"{what}[]", i, 0, top) for i in ls))
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
        if not isinstance(d, dict):
            raise ModelFormatError(f"model config = {show(d)}, expected a mapping")
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
            extra = known.setdefault("extra", {})
            if not isinstance(extra, dict):
                raise ModelFormatError(f"extra = {show(extra)}, expected a mapping")
            extra.update(unknown)
        return cls(**known)

    @classmethod
    def of_source(cls, source: str, **fields: Any) -> "ModelConfig":
        """``ModelConfig(**fields)``, its errors naming ``source`` (the file they came from)."""
        try:
            return cls(**fields)
        except ModelFormatError as e:
            raise type(e)(f"{source}: {e.message}", e.fix) from None


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order, (out, in) for matrices
    source_type: str  # e.g. "Q4_1", "F32", "BF16"


class RowView:
    """A ModelGraph's matrix as ``shape`` and row slices (:meth:`ModelGraph.part`)."""

    def __init__(self, model: ModelGraph, name: str):
        self.model, self.name = model, name
        self.shape = model.infos[name].shape
        self.ndim = len(self.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("a RowView is read by slices of rows")
        return self.model.part(self.name, rows)


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
    blocks:
        ``blocks(name) -> uint8 (rows, bytes)``: a quantized tensor's rows as the file stores
        them (GGUF), for importing them without dequantizing; None when the source has none.
    parts:
        ``parts(name, i) -> np.ndarray | None``: ``loader(name)[i]`` read alone (an int: one
        expert of a stacked tensor; a slice: rows of a matrix), None where the source cannot;
        see :meth:`part`.

    ``cache_limit`` (bytes, None: no limit) bounds the float32 tensors kept after use: the least
    recently used go first (the one just asked for always stays). A model larger than the
    machine's memory then goes through a forward pass layer by layer, each tensor loaded once.
    """

    def __init__(
        self,
        config: ModelConfig,
        infos: Iterable[TensorInfo],
        loader: Callable[[str], np.ndarray],
        tokenizer: Any = None,
        source: str = "",
        blocks: Callable[[str], np.ndarray] | None = None,
        parts: Callable[[str, int | slice], np.ndarray | None] | None = None,
    ):
        self.config = config
        self.infos = {i.name: i for i in infos}
        self._loader = loader
        self._blocks = blocks
        self._parts = parts
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_limit: int | None = None
        self.tokenizer = tokenizer
        self.source = source

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def names(self) -> list[str]:
        return list(self.infos)

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor ``name`` (cached after the first call)."""
        t = self._cache.get(name)
        if t is not None:
            self._cache.move_to_end(name)
        else:
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
            if self.cache_limit is not None:
                self._evict(self.cache_limit)
        return t

    def part(self, name: str, i: int | slice) -> np.ndarray:
        """``tensor(name)[i]``: matrix ``i`` of a stacked tensor (an expert), or rows ``i`` (a
        slice) of a matrix (a slice of a 151 936-row head). Where the whole tensor is cached, or
        fits the cache limit, it is that; a tensor larger than the limit is not loaded whole: the
        source reads the part alone (not cached), so a layer's 128 experts of a 30B model cost
        one expert's float32 at a time, not three stacks of 805 MB."""
        t = self._cache.get(name)
        if t is not None:
            self._cache.move_to_end(name)
            return t[i]
        info = self.infos.get(name)
        whole = info is not None and 4 * int(np.prod(info.shape)) <= (self.cache_limit or 0)
        if info is None or self.cache_limit is None or whole or self._parts is None:
            return self.tensor(name)[i]
        a = self._parts(name, i)
        if a is None:
            return self.tensor(name)[i]
        a = np.ascontiguousarray(a, dtype=np.float32)
        want = np.empty(info.shape[:1], np.int8)[i].shape + info.shape[1:]
        if a.shape != want:
            raise ModelFormatError(f"tensor {name}[{i}] has shape {a.shape}, expected {want}")
        return a

    def rows(self, name: str) -> RowView:
        """Matrix ``name`` read a slice of rows at a time (for a consumer that goes through a
        large table in row chunks, such as 8-bit rows of a 151 936-entry embedding, without its
        1.2 GB float32 whole)."""
        return RowView(self, name)

    def _evict(self, limit: int) -> None:
        held = sum(a.nbytes for a in self._cache.values())
        while held > limit and len(self._cache) > 1:
            held -= self._cache.popitem(last=False)[1].nbytes

    def stored_blocks(self, name: str) -> np.ndarray:
        """The rows (rows, bytes) of quantized tensor ``name`` as stored in the source file (its
        ``source_type``'s blocks; a stacked tensor's rows one matrix after another)."""
        if self._blocks is None:
            raise ModelFormatError(f"{self.source or 'the model'} stores no quantized blocks")
        return self._blocks(name)

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

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape the config implies for each tensor it names (the head only if present)."""
        c = self.config
        q, kv, hd = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.head_dim
        out = {names.EMBEDDING: (c.vocab_size, c.dim), names.OUTPUT_NORM: (c.dim,)}
        if names.OUTPUT in self.infos:
            out[names.OUTPUT] = (c.vocab_size, c.dim)
        if c.rope_factors == "freqs":
            out[names.ROPE_FREQS] = (c.rope_dim // 2,)
        elif c.rope_factors == "longrope":
            out[names.ROPE_FACTORS_LONG] = out[names.ROPE_FACTORS_SHORT] = (c.rope_dim // 2,)
        for i in range(c.n_layers):
            out[names.attn_norm(i)] = out[names.ffn_norm(i)] = (c.dim,)
            out[names.weight(i, "attn_q")] = (q, c.dim)
            out[names.weight(i, "attn_k")] = out[names.weight(i, "attn_v")] = (kv, c.dim)
            out[names.weight(i, "attn_output")] = (c.dim, q)
            if c.qkv_bias:
                out[names.bias(i, "attn_q")] = (q,)
                out[names.bias(i, "attn_k")] = out[names.bias(i, "attn_v")] = (kv,)
            if c.qk_norm:
                out[names.q_norm(i)], out[names.k_norm(i)] = (q,), (kv,)
            elif c.qk_norm_per_head:
                out[names.q_norm(i)] = out[names.k_norm(i)] = (hd,)
            if c.post_norms:
                out[names.post_attn_norm(i)] = out[names.post_ffn_norm(i)] = (c.dim,)
            if c.is_moe:
                e, f = c.n_experts, c.expert_ffn_dim
                out[names.router(i)] = (e, c.dim)
                out[names.experts(i, "gate")] = out[names.experts(i, "up")] = (e, f, c.dim)
                out[names.experts(i, "down")] = (e, c.dim, f)
                if c.shared_expert_ffn_dim:
                    s = c.shared_expert_ffn_dim
                    out[names.shared(i, "gate")] = out[names.shared(i, "up")] = (s, c.dim)
                    out[names.shared(i, "down")] = (c.dim, s)
                    out[names.shared_gate(i)] = (c.dim,)
            else:
                f = c.ffn_dim
                out[names.weight(i, "ffn_gate")] = out[names.weight(i, "ffn_up")] = (f, c.dim)
                out[names.weight(i, "ffn_down")] = (c.dim, f)
        return out

    def validate(self) -> None:
        """Every tensor the architecture needs is there, with the shape the config implies (so a
        corrupt dimension fails here, before anything is allocated from it)."""
        src = self.source or "model"
        missing = [n for n in self.required_tensors() if n not in self.infos]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ModelFormatError(
                f"{src}: missing tensor {', '.join(missing[:3])}{more}",
                f"a {self.config.arch} model needs them; the file may be truncated or mislabelled",
            )
        for name, want in self.expected_shapes().items():
            got = tuple(self.infos[name].shape)
            # size-1 axes aside: a gate vector is (dim,) in GGUF and (1, dim) in HF files
            if [d for d in got if d != 1] != [d for d in want if d != 1]:
                raise ModelFormatError(
                    f"{src}: tensor {name} has shape {got}, expected {want} from the "
                    f"{self.config.arch} config",
                    "the file's metadata and tensors disagree; it may be corrupt or mislabelled",
                )
