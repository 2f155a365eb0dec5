"""Hugging Face frontend: config.json + *.safetensors (+ tokenizer.json) -> ModelGraph.

HF names map to GGUF names; per-expert tensors are stacked into ``ffn_*_exps`` (E, out, in).
HF checkpoints rotate q/k by halves, so the config says ``rope_style="neox"`` and weights are
used as stored.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from edgert.compiler.frontends.archs import GGUF_ARCHS, HF_MODEL_TYPES, supported_names
from edgert.compiler.frontends.safetensors import SafetensorsFile

from edgert.errors import ModelFormatError, UnsupportedError
from edgert.format import names
from edgert.format.model import ModelConfig, ModelGraph, TensorInfo
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


def config_from_hf(cfg: dict[str, Any], src: str) -> ModelConfig:
    mt = cfg.get("model_type")
    gguf_arch = HF_MODEL_TYPES.get(mt)
    if gguf_arch is None:
        raise UnsupportedError(
            f"{src}: unsupported model_type {mt!r}", f"edgert runs {supported_names()}"
        )
    spec = GGUF_ARCHS[gguf_arch]
    dim = int(_req(cfg, "hidden_size", src))
    n_heads = int(_req(cfg, "num_attention_heads", src))
    n_experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    ffn = int(cfg.get("intermediate_size") or 0)
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
    }
    return ModelConfig(
        arch=spec.arch,
        name=str(cfg.get("_name_or_path", "")),
        n_layers=int(_req(cfg, "num_hidden_layers", src)),
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_dim=ffn,
        vocab_size=int(_req(cfg, "vocab_size", src)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rope_style="neox",
        rms_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        n_experts=n_experts,
        n_experts_used=int(cfg.get("num_experts_per_tok") or 0) if n_experts else 0,
        expert_ffn_dim=int(cfg.get("moe_intermediate_size") or ffn) if n_experts else 0,
        shared_expert_ffn_dim=int(cfg.get("shared_expert_intermediate_size") or 0),
        expert_weights_norm=bool(cfg.get("norm_topk_prob", spec.expert_weights_norm)),
        qkv_bias=spec.qkv_bias or bool(cfg.get("attention_bias", False)),
        qk_norm=spec.qk_norm,
        extra={k: v for k, v in cfg.items() if k not in known},
    )


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
        tc = json.loads((d / "tokenizer_config.json").read_text())

    def tid(v: Any) -> int | None:
        if isinstance(v, dict):
            v = v.get("content")
        return tok.token_to_id(v) if isinstance(v, str) else None

    stops: list[int] = []
    gen = d / "generation_config.json"
    if gen.exists():
        e = json.loads(gen.read_text()).get("eos_token_id")
        stops = [int(x) for x in (e if isinstance(e, list) else [e]) if x is not None]
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


def load_hf(d: str | Path) -> ModelGraph:
    d = Path(d)
    src = str(d)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{d / 'config.json'}: {e}") from e
    config = config_from_hf(cfg, src)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{src} has no *.safetensors files", "edgert reads safetensors only")
    where: dict[str, tuple[SafetensorsFile, str]] = {}  # gguf name -> (file, hf name)
    experts: dict[str, dict[int, tuple[SafetensorsFile, str]]] = {}
    for f in files:
        st = SafetensorsFile(f)
        for hf_name in st.names():
            if hf_name in _GLOBAL_MAP:
                where[_GLOBAL_MAP[hf_name]] = (st, hf_name)
                continue
            m = _EXPERT.match(hf_name)
            if m:
                layer, e, proj = int(m.group(1)), int(m.group(2)), _EXPERT_PROJ[m.group(3)]
                experts.setdefault(names.experts(layer, proj), {})[e] = (st, hf_name)
                continue
            m = re.match(_LAYER + r"(.+)$", hf_name)
            if m and m.group(2) in _LAYER_MAP:
                where[names.layer(int(m.group(1)), _LAYER_MAP[m.group(2)])] = (st, hf_name)
            elif not hf_name.endswith("rotary_emb.inv_freq"):
                log.debug("%s: ignoring tensor %s", src, hf_name)
    infos = [TensorInfo(g, st.shape(h), st.dtype(h)) for g, (st, h) in where.items()]
    for g, parts in experts.items():
        if sorted(parts) != list(range(config.n_experts)):
            raise ModelFormatError(
                f"{src}: {g} has experts {sorted(parts)}, expected 0..{config.n_experts - 1}"
            )
        st, h = parts[0]
        infos.append(TensorInfo(g, (config.n_experts, *st.shape(h)), st.dtype(h)))

    def loader(name: str) -> np.ndarray:
        if name in experts:
            parts = experts[name]
            return np.stack([parts[e][0].get(parts[e][1]) for e in range(len(parts))])
        st, h = where[name]
        return st.get(h)

    model = ModelGraph(config, infos, loader, tokenizer=_tokenizer(d), source=src)
    model.validate()
    return model
