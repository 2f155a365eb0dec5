"""GGUF frontend: metadata -> ModelConfig, tensors dequantized on demand, tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from edgert.compiler.frontends.archs import (
    GGUF_ARCHS,
    ArchSpec,
    embed_scale,
    fused_blocks,
    no_rope_layers,
    supported_gguf,
    swa_layers,
)

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format import names
from edgert.format.model import ModelConfig, ModelGraph, TensorInfo

log = logging.getLogger(__name__)

#: GGML tensor types the frontend dequantizes
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)


def _import_gguf():
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ModelFormatError(
            "reading GGUF files needs the `gguf` package", "pip install 'edgert[compiler]'"
        ) from e
    return gguf


def read_metadata(reader) -> dict[str, Any]:
    """All key/value fields of a GGUF file as Python values."""
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = f.contents()
        except Exception as e:  # a field we cannot decode is kept out, not fatal
            log.debug("GGUF field %s unreadable: %s", key, e)
    return meta


def _spec(meta: dict[str, Any], source: str) -> tuple[str, ArchSpec]:
    arch_name = meta.get("general.architecture")
    if arch_name is None:
        raise ModelFormatError(f"{source}: GGUF file has no general.architecture")
    spec = GGUF_ARCHS.get(arch_name)
    if spec is None:
        raise UnsupportedError(
            f"{source}: unsupported architecture {arch_name!r}",
            f"edgert runs these GGUF architectures: {supported_gguf()}",
        )
    return arch_name, spec


def config_from_metadata(
    meta: dict[str, Any], source: str, embd_rows: int | None, tensor_names: set[str] = frozenset()
) -> ModelConfig:
    arch_name, spec = _spec(meta, source)

    def get(key: str, default: Any = KeyError) -> Any:
        full = f"{arch_name}.{key}"
        if full in meta:
            return meta[full]
        if default is KeyError:
            raise ModelFormatError(f"{source}: GGUF metadata lacks {full}")
        return default

    dim = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    n_experts = int(get("expert_count", 0))
    ffn = int(get("feed_forward_length", 0))
    vocab = meta.get(f"{arch_name}.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens is not None else embd_rows
    if vocab is None:
        raise ModelFormatError(f"{source}: cannot tell the vocabulary size")
    n_layers = int(get("block_count"))
    head_dim = int(get("attention.key_length", dim // n_heads))
    scaling = str(get("rope.scaling.type", "linear"))
    if scaling not in ("linear", "none", "longrope", "su"):
        raise UnsupportedError(
            f"{source}: rope scaling {scaling!r}", "edgert applies linear, llama3 and LongRoPE"
        )
    factor = float(get("rope.scaling.factor", 0.0) or get("rope.scale_linear", 0.0) or 0.0)
    if float(get("final_logit_softcapping", 0.0) or 0.0):
        raise UnsupportedError(f"{source}: final logit soft-capping is not implemented")
    extra: dict[str, Any] = {}
    if names.ROPE_FREQS in tensor_names:
        extra["rope_factors"] = "freqs"
    elif names.ROPE_FACTORS_LONG in tensor_names:
        extra.update(
            rope_factors="longrope",
            rope_orig_ctx=int(get("rope.scaling.original_context_length", 0)),
            rope_attn_factor=float(get("rope.scaling.attn_factor", 1.0)),
        )
    window = int(get("attention.sliding_window", 0) or 0) if spec.swa_pattern else 0
    if window:
        pattern = get("attention.sliding_window_pattern", spec.swa_pattern)
        if isinstance(pattern, (list, tuple)):  # per layer: does it slide
            swa = [i for i, slides in enumerate(pattern[:n_layers]) if slides]
        else:
            swa = swa_layers(n_layers, int(pattern))
        extra.update(
            sliding_window=window,
            swa_layers=swa,
            rope_theta_swa=float(get("rope.freq_base_swa", 10000.0)),
        )
    if spec.no_rope_every:
        extra["no_rope_layers"] = no_rope_layers(n_layers, spec.no_rope_every)
    if spec.arch == "gemma3" and n_layers == 62:  # Gemma 3 27B scales by dim / heads
        extra["attn_scale"] = 1.0 / float(np.sqrt(dim // n_heads))
    return ModelConfig(
        arch=spec.arch,
        name=str(meta.get("general.name", "")),
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        ffn_dim=ffn,
        vocab_size=int(vocab),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_dim=int(get("rope.dimension_count", 0)),
        rope_style=spec.rope_style,
        rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(get("context_length", 2048)),
        n_experts=n_experts,
        n_experts_used=int(get("expert_used_count", 0)),
        expert_ffn_dim=int(get("expert_feed_forward_length", ffn)) if n_experts else 0,
        shared_expert_ffn_dim=int(get("expert_shared_feed_forward_length", 0)),
        expert_weights_norm=bool(get("expert_weights_norm", spec.expert_weights_norm)),
        qkv_bias=spec.qkv_bias,
        qk_norm=spec.qk_norm,
        qk_norm_per_head=spec.qk_norm_per_head,
        post_norms=spec.post_norms,
        activation=spec.activation,
        embed_scale=embed_scale(spec, dim),
        rope_scale=1.0 / factor if factor else 1.0,
        **extra,
    )


def _fused_views(spec: ArchSpec, cfg: ModelConfig, tensors) -> dict[str, tuple[str, int, int]]:
    """Phi-3 stores q|k|v as ``attn_qkv`` and gate|up as ``ffn_up`` (2 x ffn rows): edgert's name
    -> (stored name, first row, end row) of its part."""
    if not spec.fused:
        return {}
    views = {}
    for i in range(cfg.n_layers):
        qkv, up = names.weight(i, "attn_qkv"), names.weight(i, "ffn_up")
        stored = {"qkv": qkv in tensors,
                  "gate_up": up in tensors and names.weight(i, "ffn_gate") not in tensors}  # fmt: skip
        for kind, src in (("qkv", qkv), ("gate_up", up)):
            if stored[kind]:
                for p, a, b in fused_blocks(cfg, kind):
                    views[names.weight(i, p)] = (src, a, b)
    return views


def load_gguf(path: str | Path, *, with_tokenizer: bool = True) -> ModelGraph:
    """Open a GGUF file. Tensors are memory-mapped and dequantized to float32 on first use."""
    gguf = _import_gguf()
    from gguf.quants import dequantize

    path = Path(path)
    src = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"cannot read {src}: {e.strerror}") from e
    if magic != b"GGUF":
        raise ModelFormatError(f"{src} is not a GGUF file (magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:
        raise ModelFormatError(
            f"{src}: corrupt or truncated GGUF file ({type(e).__name__}: {e})",
            "download or convert the model again",
        ) from e
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise UnsupportedError(
                f"{src}: tensor {t.name} uses quant type {tname}",
                f"edgert reads {', '.join(SUPPORTED_TYPES)}; re-quantize the model to one of them",
            )
    embd = tensors.get(names.EMBEDDING)
    embd_rows = int(embd.shape[-1]) if embd is not None else None
    config = config_from_metadata(meta, src, embd_rows, set(tensors))
    views = _fused_views(GGUF_ARCHS[meta["general.architecture"]], config, tensors)
    split = {stored for stored, _, _ in views.values()}  # read only through their parts
    infos = [
        TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), t.tensor_type.name)
        for t in reader.tensors
        if t.name not in views and t.name not in split
    ]
    for name, (stored, a, b) in views.items():
        t = tensors[stored]
        infos.append(TensorInfo(name, (b - a, int(t.shape[0])), t.tensor_type.name))

    def loader(name: str) -> np.ndarray:
        if name in views:
            stored, a, b = views[name]
            return read(stored)[a:b]
        return read(name)

    def read(name: str) -> np.ndarray:
        t = tensors[name]
        tname = t.tensor_type.name
        if tname == "F32":
            a = np.asarray(t.data, dtype=np.float32)
        elif tname == "F16":
            a = np.asarray(t.data).astype(np.float32)
        else:
            a = dequantize(np.asarray(t.data), t.tensor_type)
        return a.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))

    tokenizer = None
    if with_tokenizer and "tokenizer.ggml.model" in meta:
        from edgert.compiler.frontends.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(meta, src)
    model = ModelGraph(config, infos, loader, tokenizer=tokenizer, source=src)
    model.validate()
    model.metadata = meta
    return model
