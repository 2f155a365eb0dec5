"""Every architecture from HF safetensors gives the logits of the same model from GGUF.

A synthetic GGUF (written by tools/make_synthetic_gguf.py, the files llama.cpp loads) is turned
back into what a Hugging Face checkpoint of that model holds — transformers' tensor names and
config keys, q/k rows in HF's order (llama.cpp's converter permutes those of llama-style models),
Gemma's norms stored as w - 1, Phi-3's fused q|k|v and gate|up matrices, rope scaling as
config.json gives it (Llama 3.1's ``llama3`` type, Phi-3's LongRoPE lists, SmolLM3's
``no_rope_layers`` flags, Gemma 3's sliding-window layout) — and both load to the same logits.
"""

import json

import numpy as np
import pytest
from edgert.compiler.frontends import load_model
from make_synthetic_gguf import LLAMA3_SCALING, make_synthetic_gguf
from test_hf_frontend import hf_config, unpermute, write_safetensors

from edgert.format import names
from edgert.runtime.reference import ReferenceEngine

REL_TOL = 1e-5
TOKENS = [3, 100, 7, 300, 42, 9, 11, 200, 17, 64, 5, 480, 33, 2]
#: synthetic arch -> (HF model_type, q/k rows permuted in the GGUF)
HF = {
    "llama": ("llama", True),
    "mixtral": ("mixtral", True),
    "qwen2moe": ("qwen2_moe", False),
    "olmoe": ("olmoe", False),
    "llama3": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "qwen3moe": ("qwen3_moe", False),
    "gemma3": ("gemma3_text", False),
    "phi3": ("phi3", False),
    "smollm3": ("smollm3", True),
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
    "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
}
_MIXTRAL = _LAYER | {"ffn_gate_inp.weight": "block_sparse_moe.gate.weight"}
_MIXTRAL_EXPERT = {"gate": "w1", "up": "w3", "down": "w2"}
_GEMMA = _LAYER | {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}


def hf_checkpoint(m, d, arch):
    """Write model ``m`` (loaded from a synthetic GGUF of ``arch``) as an HF checkpoint in ``d``."""
    c = m.config
    model_type, permuted = HF[arch]
    layer_map = {"gemma3": _GEMMA, "mixtral": _MIXTRAL}.get(arch, _LAYER)
    t = {"model.embed_tokens.weight": m.tensor(names.EMBEDDING),
         "model.norm.weight": m.tensor(names.OUTPUT_NORM)}  # fmt: skip
    if names.OUTPUT in m:
        t["lm_head.weight"] = m.tensor(names.OUTPUT)
    if arch == "gemma3":
        t["model.norm.weight"] = t["model.norm.weight"] - np.float32(1.0)
    for n in m.names():
        i = names.layer_of(n)
        if i is None:
            continue
        role = n.split(".", 2)[2]
        a = m.tensor(n)
        h = f"model.layers.{i}."
        if role in ("attn_q.weight", "attn_k.weight") and permuted:
            a = unpermute(a, c.n_heads if role == "attn_q.weight" else c.n_kv_heads)
        if arch == "gemma3" and role.endswith("norm.weight"):
            a = a - np.float32(1.0)  # Gemma's checkpoints store w - 1
        if role.endswith("_exps.weight"):
            proj = role.split("_")[1]
            for e in range(c.n_experts):
                if arch == "mixtral":
                    t[h + f"block_sparse_moe.experts.{e}.{_MIXTRAL_EXPERT[proj]}.weight"] = a[e]
                else:
                    t[h + f"mlp.experts.{e}.{proj}_proj.weight"] = a[e]
            continue
        if role == "ffn_gate_inp_shexp.weight":
            a = a.reshape(1, -1)  # a (1, dim) linear layer in transformers
        t[h + layer_map[role]] = a
    if arch == "phi3":  # fused as Phi-3 stores them
        for i in range(c.n_layers):
            h = f"model.layers.{i}."
            t[h + "self_attn.qkv_proj.weight"] = np.concatenate(
                [t.pop(h + f"self_attn.{p}_proj.weight") for p in "qkv"]
            )
            t[h + "mlp.gate_up_proj.weight"] = np.concatenate(
                [t.pop(h + f"mlp.{p}_proj.weight") for p in ("gate", "up")]
            )
    keys = sorted(t)
    write_safetensors(d / "model-00001-of-00002.safetensors", {k: t[k] for k in keys[::2]})
    write_safetensors(d / "model-00002-of-00002.safetensors", {k: t[k] for k in keys[1::2]})
    cfg = {
        **hf_config(c, model_type),
        "head_dim": c.head_dim,
        "tie_word_embeddings": names.OUTPUT not in m,
        "hidden_act": "silu",
    }
    if arch == "llama3":
        cfg["rope_scaling"] = LLAMA3_SCALING
    if arch == "gemma3":
        cfg.update(
            sliding_window=c.sliding_window,
            layer_types=["sliding_attention" if i in c.swa_layers else "full_attention"
                         for i in range(c.n_layers)],
            rope_local_base_freq=c.rope_theta_swa,
            query_pre_attn_scalar=c.head_dim,
            hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None,
        )  # fmt: skip
    if arch == "phi3":
        cfg.update(
            partial_rotary_factor=c.rope_dim * c.n_heads / c.dim,
            original_max_position_embeddings=c.rope_orig_ctx,
            rope_scaling={
                "type": "longrope",
                "long_factor": m.tensor(names.ROPE_FACTORS_LONG).tolist(),
                "short_factor": m.tensor(names.ROPE_FACTORS_SHORT).tolist(),
            },
        )
    if arch == "smollm3":
        cfg["no_rope_layers"] = [int(i not in c.no_rope_layers) for i in range(c.n_layers)]
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch", list(HF))
def test_hf_equals_gguf(tmp_path, arch):
    layers = 6 if arch == "gemma3" else 4  # gemma3: one global layer after five sliding ones
    gguf = make_synthetic_gguf(
        out=tmp_path / "m.gguf", arch=arch, qtype="F32", progress=False, layers=layers
    )
    g = load_model(gguf)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    hf_checkpoint(g, hf_dir, arch)
    h = load_model(hf_dir)
    for f in ("swa_layers", "no_rope_layers", "rope_factors", "rope_dim", "qk_norm_per_head",
              "post_norms", "activation", "embed_scale", "qkv_bias"):  # fmt: skip
        assert getattr(h.config, f) == getattr(g.config, f), f
    assert h.config.rope_attn_factor == pytest.approx(g.config.rope_attn_factor, rel=1e-6)
    want = ReferenceEngine(g, max_ctx=64).forward(TOKENS)
    got = ReferenceEngine(h, max_ctx=64).forward(TOKENS)
    assert np.max(np.abs(got - want)) <= REL_TOL * np.max(np.abs(want))


def test_gemma3_multimodal_checkpoint_loads_its_language_model(tmp_path):
    """Gemma 3 4B+ checkpoints nest the language model: config.json's text_config, tensors under
    language_model.; the vision tower is left out."""
    from edgert.compiler.frontends.safetensors import SafetensorsFile

    g = load_model(make_synthetic_gguf(out=tmp_path / "m.gguf", arch="gemma3", qtype="F32",
                                       progress=False, layers=6))  # fmt: skip
    flat = tmp_path / "flat"
    flat.mkdir()
    hf_checkpoint(g, flat, "gemma3")
    mm = tmp_path / "mm"
    mm.mkdir()
    tensors = {}
    for f in flat.glob("*.safetensors"):
        st = SafetensorsFile(f)
        tensors.update({f"language_model.{k}": st.get(k) for k in st.names()})
    tensors["vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((4, 3))
    write_safetensors(mm / "model.safetensors", tensors)
    text = json.loads((flat / "config.json").read_text())
    (mm / "config.json").write_text(
        json.dumps({"model_type": "gemma3", "text_config": text, "vision_config": {}})
    )
    h = load_model(mm)
    assert h.config.arch == "gemma3" and h.config.swa_layers == g.config.swa_layers
    assert not any("vision" in n for n in h.names())
    want = ReferenceEngine(g, max_ctx=64).forward(TOKENS)
    got = ReferenceEngine(h, max_ctx=64).forward(TOKENS)
    assert np.max(np.abs(got - want)) <= REL_TOL * np.max(np.abs(want))
