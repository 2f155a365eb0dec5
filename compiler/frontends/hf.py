"""Hugging Face frontend: config.json + *.safetensors (+ tokenizer.json) -> ModelGraph.

HF names map to GGUF names; per-expert tensors are stacked into ``ffn_*_exps`` (E, out, in).
HF checkpoints rotate q/k by halves, so the config says ``rope_style="neox"`` and weights are
used as stored. What llama.cpp's converter does to a checkpoint is done here on load, so a model
gives the same logits from either file: fused q|k|v and gate|up matrices are split (Phi-3),
Gemma's norm weights (stored as w - 1) get their 1 back, and rope scaling given in config.json
becomes the frequency factors a GGUF carries as tensors (Llama 3.1's ``llama3`` type,
Phi-3's LongRoPE).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from edgert.compiler.frontends.archs import (
    GGUF_ARCHS,
    HF_MODEL_TYPES,
    ArchSpec,
    embed_scale,
    fused_blocks,
    no_rope_layers,
    supported_names,
    swa_layers,
)
from edgert.compiler.frontends.safetensors import SafetensorsFile

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format import names
from edgert.format.model import (
    LIMITS,
    ModelConfig,
    ModelGraph,
    TensorInfo,
    float_field,
    int_field,
    is_int,
    printable,
)
from edgert.runtime.tokenizer import Tokenizer, TokenizerMeta

log = logging.getLogger(__name__)

_LAYER = r"model\.layers\.(\d+)\."
#: HF per-layer name (after the layer prefix) -> GGUF name (after "blk.N.")
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
#: Gemma names its four norms after where they sit
_GEMMA_LAYER_MAP = _LAYER_MAP | {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
#: fused matrices (Phi-3): HF name -> their kind (archs.fused_blocks)
_FUSED = {"self_attn.qkv_proj.weight": "qkv", "mlp.gate_up_proj.weight": "gate_up"}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": names.EMBEDDING,
    "model.norm.weight": names.OUTPUT_NORM,
    "lm_head.weight": names.OUTPUT,
}
#: expert tensors: regex -> (GGUF stacked name, projection)
_EXPERT = re.compile(
    _LAYER
    + r"(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$"
)
_EXPERT_PROJ = {
    "w1": "gate",
    "gate_proj": "gate",
    "w3": "up",
    "up_proj": "up",
    "w2": "down",
    "down_proj": "down",
}


def _req(cfg: dict[str, Any], key: str, src: str) -> Any:
    if key not in cfg:
        raise ModelFormatError(f"{src}: config.json lacks {key!r}")
    return cfg[key]


# config.json's values checked where they are read, so that an error names the key
def _int(src: str, key: str, value: Any, field: str) -> int:
    """``value`` (config.json's ``key``) within the range of ModelConfig's ``field``."""
    return int_field(f"{src}: config.json {key}", value, *LIMITS[field])


def _float(src: str, key: str, value: Any, *, zero: bool = False) -> float:
    return float_field(f"{src}: config.json {key}", value, zero=zero)


def _dict(src: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelFormatError(f"{src}: config.json {key} = {value!r:.40}, expected an object")
    return value


def _list(src: str, key: str, value: Any) -> list:
    if not isinstance(value, list):
        raise ModelFormatError(f"{src}: config.json {key} = {value!r:.40}, expected a list")
    return value


def _rope(cfg: dict[str, Any], src: str) -> dict[str, Any]:
    """config.json's rope scaling (``rope_scaling``, or ``rope_parameters`` in newer files)."""
    key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    r = _dict(src, key, cfg.get(key) or {})
    if "full_attention" in r:  # per attention type (newer Gemma files)
        r = _dict(src, f"{key}.full_attention", r["full_attention"])
    kind = str(r.get("rope_type") or r.get("type") or "default").lower()
    if kind not in ("default", "linear", "llama3", "longrope", "su"):
        raise UnsupportedError(
            f"{src}: rope scaling {kind!r}", "edgert applies linear, llama3 and LongRoPE"
        )
    return {**r, "rope_type": kind}


def llama3_factors(theta: float, rope_dim: int, r: dict[str, Any], src: str = "") -> np.ndarray:
    """Llama 3.1's per-frequency divisors (``rope_scaling.rope_type = "llama3"``): long
    wavelengths divided by ``factor``, short ones kept, a smooth blend between."""
    what = f"{src}: config.json rope_scaling" if src else "config.json rope_scaling"
    factor = float_field(f"{what}.factor", r.get("factor", 8.0))
    low = float_field(f"{what}.low_freq_factor", r.get("low_freq_factor", 1.0))
    high = float_field(f"{what}.high_freq_factor", r.get("high_freq_factor", 4.0))
    old = float_field(
        f"{what}.original_max_position_embeddings", r.get("original_max_position_embeddings", 8192)
    )
    if high <= low:
        raise ModelFormatError(f"{what}: high_freq_factor {high} <= low_freq_factor {low}")
    out = []
    for i in range(rope_dim // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / rope_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _text_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A multimodal checkpoint's language model (Gemma 3 4B+): its config, and the prefix of its
    tensors' names."""
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        return {**cfg["text_config"], "model_type": "gemma3_text"}, "language_model."
    return cfg, ""


def config_from_hf(cfg: dict[str, Any], src: str) -> ModelConfig:
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{src}: config.json is not a JSON object")
    mt = cfg.get("model_type")
    gguf_arch = HF_MODEL_TYPES.get(mt) if isinstance(mt, str) else None
    if gguf_arch is None:
        raise UnsupportedError(
            f"{src}: unsupported model_type {mt!r:.40}", f"edgert runs {supported_names()}"
        )
    spec = GGUF_ARCHS[gguf_arch]
    dim = _int(src, "hidden_size", _req(cfg, "hidden_size", src), "dim")
    n_heads = _int(src, "num_attention_heads", _req(cfg, "num_attention_heads", src), "n_heads")
    n_layers = _int(src, "num_hidden_layers", _req(cfg, "num_hidden_layers", src), "n_layers")
    if cfg.get("head_dim"):
        head_dim = _int(src, "head_dim", cfg["head_dim"], "head_dim")
    elif dim % n_heads:
        raise ModelFormatError(
            f"{src}: config.json hidden_size = {dim} is not a multiple of num_attention_heads = "
            f"{n_heads} (and no head_dim)"
        )
    else:
        head_dim = dim // n_heads
    experts_key = "num_local_experts" if cfg.get("num_local_experts") else "num_experts"
    n_experts = _int(src, experts_key, cfg.get(experts_key) or 0, "n_experts")
    ffn = _int(src, "intermediate_size", cfg.get("intermediate_size") or 0, "ffn_dim")
    r = _rope(cfg, src)
    theta = _float(src, "rope_theta", cfg.get("rope_theta", r.get("rope_theta", 10000.0)))
    rot = _float(
        src,
        "partial_rotary_factor",
        cfg.get("partial_rotary_factor", r.get("partial_rotary_factor", 1.0)),
    )
    if rot > 1.0:
        raise ModelFormatError(
            f"{src}: config.json partial_rotary_factor = {rot}, expected a number in (0, 1]"
        )
    rope_dim = int(rot * dim) // n_heads if rot != 1.0 else head_dim
    extra: dict[str, Any] = {}
    if r["rope_type"] == "linear":
        extra["rope_scale"] = 1.0 / _float(src, "rope_scaling.factor", r.get("factor"))
    elif r["rope_type"] == "llama3":
        extra["rope_factors"] = "freqs"
    elif r["rope_type"] in ("longrope", "su"):
        key = "original_max_position_embeddings"
        orig = int_field(
            f"{src}: config.json {key}", cfg.get(key) or r.get(key), 2, LIMITS["rope_orig_ctx"][1]
        )
        ctx = cfg.get("max_position_embeddings", orig)
        scale = _int(src, "max_position_embeddings", ctx, "context_length") / orig
        attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
        extra.update(rope_factors="longrope", rope_orig_ctx=orig, rope_attn_factor=attn)
    if spec.swa_pattern and cfg.get("sliding_window"):
        types = cfg.get("layer_types")
        if types:
            types = _list(src, "layer_types", types)
            swa = [i for i, t in enumerate(types[:n_layers]) if t == "sliding_attention"]
        else:
            pattern = cfg.get("sliding_window_pattern") or spec.swa_pattern
            what = f"{src}: config.json sliding_window_pattern"
            swa = swa_layers(n_layers, int_field(what, pattern, 1, LIMITS["n_layers"][1]))
        params = _dict(src, "rope_parameters", cfg.get("rope_parameters") or {})
        local = _dict(
            src, "rope_parameters.sliding_attention", params.get("sliding_attention") or {}
        )
        extra.update(
            sliding_window=_int(src, "sliding_window", cfg["sliding_window"], "sliding_window"),
            swa_layers=swa,
            rope_theta_swa=_float(
                src,
                "rope_local_base_freq",
                cfg.get("rope_local_base_freq") or local.get("rope_theta") or 10000.0,
            ),
        )
    if spec.no_rope_every:
        flags = cfg.get("no_rope_layers")  # per layer: 1 applies RoPE, 0 does not
        if flags is None:
            every = int_field(
                f"{src}: config.json no_rope_layer_interval",
                cfg.get("no_rope_layer_interval") or spec.no_rope_every,
                1,
                LIMITS["n_layers"][1],
            )
            extra["no_rope_layers"] = no_rope_layers(n_layers, every)
        else:
            flags = _list(src, "no_rope_layers", flags)
            extra["no_rope_layers"] = [i for i, use in enumerate(flags[:n_layers]) if not use]
    extra["embed_scale"] = embed_scale(spec, dim)
    qpas = cfg.get("query_pre_attn_scalar")
    if qpas and _float(src, "query_pre_attn_scalar", qpas) != head_dim:
        extra["attn_scale"] = float(qpas) ** -0.5
    if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
        raise UnsupportedError(f"{src}: logit soft-capping is not implemented")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    acts = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
    activation = acts.get(act) if isinstance(act, str) else None
    if activation is None:
        raise UnsupportedError(
            f"{src}: FFN activation {act!r:.40}", "edgert runs silu and gelu_tanh"
        )
    known = {
        "model_type",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
        "rope_theta",
        "rms_norm_eps",
        "max_position_embeddings",
        "num_local_experts",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "norm_topk_prob",
        "tie_word_embeddings",
        "attention_bias",
        "rope_scaling",
        "rope_parameters",
        "partial_rotary_factor",
        "sliding_window",
        "sliding_window_pattern",
        "layer_types",
        "rope_local_base_freq",
        "no_rope_layers",
        "no_rope_layer_interval",
        "query_pre_attn_scalar",
        "hidden_activation",
        "hidden_act",
        "original_max_position_embeddings",
    }
    n_used = cfg.get("num_experts_per_tok") or 0
    expert_ffn = cfg.get("moe_intermediate_size") or ffn
    return ModelConfig.of_source(
        src,
        arch=spec.arch,
        name=str(cfg.get("_name_or_path", "")),
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=_int(
            src, "num_key_value_heads", cfg.get("num_key_value_heads") or n_heads, "n_kv_heads"
        ),
        head_dim=head_dim,
        ffn_dim=ffn,
        vocab_size=_int(src, "vocab_size", _req(cfg, "vocab_size", src), "vocab_size"),
        rope_theta=theta,
        rope_dim=rope_dim,
        rope_style="neox",
        rms_eps=_float(src, "rms_norm_eps", cfg.get("rms_norm_eps", 1e-5)),
        context_length=_int(
            src,
            "max_position_embeddings",
            cfg.get("max_position_embeddings", 2048),
            "context_length",
        ),
        n_experts=n_experts,
        n_experts_used=_int(src, "num_experts_per_tok", n_used, "n_experts_used")
        if n_experts
        else 0,
        expert_ffn_dim=_int(src, "moe_intermediate_size", expert_ffn, "expert_ffn_dim")
        if n_experts
        else 0,
        shared_expert_ffn_dim=_int(
            src,
            "shared_expert_intermediate_size",
            cfg.get("shared_expert_intermediate_size") or 0,
            "shared_expert_ffn_dim",
        ),
        expert_weights_norm=bool(cfg.get("norm_topk_prob", spec.expert_weights_norm)),
        qkv_bias=spec.qkv_bias or bool(cfg.get("attention_bias", False)),
        qk_norm=spec.qk_norm,
        qk_norm_per_head=spec.qk_norm_per_head,
        post_norms=spec.post_norms,
        activation=activation,
        **extra,
        extra={k: v for k, v in cfg.items() if k not in known},
    )


def _read_json(p: Path) -> dict[str, Any]:
    """A JSON object from ``p`` (config, tokenizer config, generation config)."""
    try:
        v = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{p}: {e}") from e
    if not isinstance(v, dict):
        raise ModelFormatError(f"{p} is not a JSON object")
    return v


def _tokenizer(d: Path) -> Tokenizer | None:
    tj = d / "tokenizer.json"
    if not tj.exists():
        log.warning("%s has no tokenizer.json; text prompts will not work", d)
        return None
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(tj))
    except Exception as e:
        raise ModelFormatError(f"{tj}: unreadable tokenizer: {e}") from e
    tc: dict[str, Any] = {}
    if (d / "tokenizer_config.json").exists():
        tc = _read_json(d / "tokenizer_config.json")

    def tid(v: Any) -> int | None:
        if isinstance(v, dict):
            v = v.get("content")
        return tok.token_to_id(v) if isinstance(v, str) else None

    stops: list[int] = []
    gen = d / "generation_config.json"
    if gen.exists():
        e = _read_json(gen).get("eos_token_id")
        stops = [x for x in (e if isinstance(e, list) else [e]) if x is not None]
        if not all(is_int(x) and x >= 0 for x in stops):
            raise ModelFormatError(f"{gen}: eos_token_id = {e!r:.40}, expected token ids")
    meta = TokenizerMeta(
        bos_id=tid(tc.get("bos_token")),
        eos_id=tid(tc.get("eos_token")),
        add_bos=bool(tc.get("add_bos_token", False)),
        stop_ids=stops,
        chat_template=tc.get("chat_template") if isinstance(tc.get("chat_template"), str) else None,
    )
    # a post-processor would add BOS a second time: edgert adds it from add_bos
    tok.post_processor = None
    return Tokenizer(tok, meta)


def _rope_tensors(config: ModelConfig, cfg: dict[str, Any], src: str) -> dict[str, np.ndarray]:
    """The frequency factors a GGUF of this model carries as tensors, from config.json."""
    r = _rope(cfg, src)
    if config.rope_factors == "freqs":
        return {names.ROPE_FREQS: llama3_factors(config.rope_theta, config.rope_dim, r, src)}
    if config.rope_factors == "longrope":
        factors = []
        for k in ("long_factor", "short_factor"):
            v = _list(src, f"rope_scaling.{k}", r.get(k))
            factors.append(
                np.asarray([_float(src, f"rope_scaling.{k}[]", x) for x in v], np.float32)
            )
        long, short = factors
        if long.shape != short.shape or long.shape != (config.rope_dim // 2,):
            raise ModelFormatError(
                f"{src}: LongRoPE factors of {long.shape} and {short.shape} for "
                f"{config.rope_dim // 2} rotary pairs"
            )
        return {names.ROPE_FACTORS_LONG: long, names.ROPE_FACTORS_SHORT: short}
    return {}


def load_hf(d: str | Path) -> ModelGraph:
    d = Path(d)
    src = str(d)
    full = _read_json(d / "config.json")
    cfg, prefix = _text_config(full)
    config = config_from_hf(cfg, src)
    spec: ArchSpec = GGUF_ARCHS[HF_MODEL_TYPES[cfg["model_type"]]]
    layer_map = _GEMMA_LAYER_MAP if spec.hf_norm_offset else _LAYER_MAP
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{src} has no *.safetensors files", "edgert reads safetensors only")
    where: dict[str, tuple[SafetensorsFile, str]] = {}  # gguf name -> (file, hf name)
    #: gguf name -> (file, hf name, first row, end row) of a block of a fused matrix
    parts_of: dict[str, tuple[SafetensorsFile, str, int, int]] = {}
    experts: dict[str, dict[int, tuple[SafetensorsFile, str]]] = {}
    for f in files:
        st = SafetensorsFile(f)
        for hf_name in st.names():
            if prefix:
                if not hf_name.startswith(prefix):
                    continue  # the vision tower and projector
                name = hf_name[len(prefix) :]
            else:
                name = hf_name
            if name in _GLOBAL_MAP:
                where[_GLOBAL_MAP[name]] = (st, hf_name)
                continue
            m = _EXPERT.match(name)
            if m:
                layer, e, proj = int(m.group(1)), int(m.group(2)), _EXPERT_PROJ[m.group(3)]
                experts.setdefault(names.experts(layer, proj), {})[e] = (st, hf_name)
                continue
            m = re.match(_LAYER + r"(.+)$", name)
            if m and m.group(2) in _FUSED:
                blocks = fused_blocks(config, _FUSED[m.group(2)])
                for p, a, b in blocks:
                    parts_of[names.weight(int(m.group(1)), p)] = (st, hf_name, a, b)
                if blocks[-1][2] != st.shape(hf_name)[0]:
                    raise ModelFormatError(
                        f"{src}: {printable(hf_name)} has {st.shape(hf_name)[0]} rows, "
                        f"expected {blocks[-1][2]}"
                    )
            elif m and m.group(2) in layer_map:
                where[names.layer(int(m.group(1)), layer_map[m.group(2)])] = (st, hf_name)
            elif not name.endswith("rotary_emb.inv_freq"):
                log.debug("%s: ignoring tensor %s", src, hf_name)
    infos = [TensorInfo(g, st.shape(h), st.dtype(h)) for g, (st, h) in where.items()]
    for g, (st, h, a, b) in parts_of.items():
        infos.append(TensorInfo(g, (b - a, *st.shape(h)[1:]), st.dtype(h)))
    for g, parts in experts.items():
        if sorted(parts) != list(range(config.n_experts)):
            raise ModelFormatError(
                f"{src}: {g} has experts {sorted(parts)}, expected 0..{config.n_experts - 1}"
            )
        st, h = parts[0]
        for e, (st_e, h_e) in parts.items():  # stacked on load: one shape for all
            if st_e.shape(h_e) != st.shape(h):
                raise ModelFormatError(
                    f"{src}: {printable(h_e)} has shape {st_e.shape(h_e)}, expected "
                    f"{st.shape(h)} as {printable(h)}"
                )
        infos.append(TensorInfo(g, (config.n_experts, *st.shape(h)), st.dtype(h)))
    computed = _rope_tensors(config, cfg, src)
    infos += [TensorInfo(g, a.shape, "F32") for g, a in computed.items()]

    def loader(name: str) -> np.ndarray:
        if name in computed:
            return computed[name]
        if name in experts:
            parts = experts[name]
            return np.stack([parts[e][0].get(parts[e][1]) for e in range(len(parts))])
        if name in parts_of:
            st, h, a, b = parts_of[name]
            return st.get(h)[a:b]
        st, h = where[name]
        a = st.get(h)
        if spec.hf_norm_offset and name.endswith("norm.weight"):
            a = a.astype(np.float32) + np.float32(1.0)  # Gemma's RMSNorm scales by 1 + w
        return a

    model = ModelGraph(config, infos, loader, tokenizer=_tokenizer(d), source=src)
    model.validate()
    return model
