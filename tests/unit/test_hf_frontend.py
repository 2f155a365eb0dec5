"""HF directories (config.json + safetensors) load into the same model as GGUF.

The GGUF convention rotates adjacent pairs on q/k rows that llama.cpp's converter permuted; HF
checkpoints keep the original order and rotate halves. A model written both ways must give the
same logits.
"""

import json
import struct
from dataclasses import replace

import numpy as np
import pytest
from edgert.compiler.frontends import load_model
from test_reference_archs import CONFIGS, random_model

from edgert.errors import EdgertError
from edgert.runtime.reference import ReferenceEngine

TOL = 1e-4


def write_safetensors(path, tensors: dict, bf16: set = frozenset()):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if name in bf16:
            raw = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)
            dtype = "BF16"
        else:
            raw, dtype = np.ascontiguousarray(a, np.float32), "F32"
        b = raw.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def unpermute(w, n_head):
    """Inverse of llama.cpp's HF->GGUF q/k row permutation."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_config(c, model_type: str) -> dict:
    """config.json of a model with config ``c``, with transformers' keys (no head_dim: the
    frontend derives it)."""
    cfg = {
        "model_type": model_type,
        "hidden_size": c.dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "intermediate_size": c.ffn_dim,
        "vocab_size": c.vocab_size,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.context_length,
    }
    if c.n_experts:
        cfg.update(
            {
                "num_local_experts" if model_type == "mixtral" else "num_experts": c.n_experts,
                "num_experts_per_tok": c.n_experts_used,
                "moe_intermediate_size": c.expert_ffn_dim,
                "norm_topk_prob": c.expert_weights_norm,
                "shared_expert_intermediate_size": c.shared_expert_ffn_dim,
            }
        )
    return cfg


def to_hf(m, d, model_type, *, permute=False, bf16=False):
    c = m.config
    t = {
        "model.embed_tokens.weight": m.tensor("token_embd.weight"),
        "model.norm.weight": m.tensor("output_norm.weight"),
    }
    for i in range(c.n_layers):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        q, k = m.tensor(p + "attn_q.weight"), m.tensor(p + "attn_k.weight")
        if permute:
            q, k = unpermute(q, c.n_heads), unpermute(k, c.n_kv_heads)
        t.update(
            {
                h + "input_layernorm.weight": m.tensor(p + "attn_norm.weight"),
                h + "post_attention_layernorm.weight": m.tensor(p + "ffn_norm.weight"),
                h + "self_attn.q_proj.weight": q,
                h + "self_attn.k_proj.weight": k,
                h + "self_attn.v_proj.weight": m.tensor(p + "attn_v.weight"),
                h + "self_attn.o_proj.weight": m.tensor(p + "attn_output.weight"),
            }
        )
        if c.qkv_bias:
            for n in "qkv":
                t[h + f"self_attn.{n}_proj.bias"] = m.tensor(p + f"attn_{n}.bias")
        if c.qk_norm:
            t[h + "self_attn.q_norm.weight"] = m.tensor(p + "attn_q_norm.weight")
            t[h + "self_attn.k_norm.weight"] = m.tensor(p + "attn_k_norm.weight")
        if not c.n_experts:
            for n in ("gate", "up", "down"):
                t[h + f"mlp.{n}_proj.weight"] = m.tensor(p + f"ffn_{n}.weight")
            continue
        if model_type == "mixtral":
            t[h + "block_sparse_moe.gate.weight"] = m.tensor(p + "ffn_gate_inp.weight")
            for e in range(c.n_experts):
                for hn, g in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
                    t[h + f"block_sparse_moe.experts.{e}.{hn}.weight"] = m.tensor(
                        p + f"ffn_{g}_exps.weight"
                    )[e]
        else:
            t[h + "mlp.gate.weight"] = m.tensor(p + "ffn_gate_inp.weight")
            for e in range(c.n_experts):
                for g in ("gate", "up", "down"):
                    t[h + f"mlp.experts.{e}.{g}_proj.weight"] = m.tensor(
                        p + f"ffn_{g}_exps.weight"
                    )[e]
            if c.shared_expert_ffn_dim:
                for g in ("gate", "up", "down"):
                    t[h + f"mlp.shared_expert.{g}_proj.weight"] = m.tensor(
                        p + f"ffn_{g}_shexp.weight"
                    )
                t[h + "mlp.shared_expert_gate.weight"] = m.tensor(
                    p + "ffn_gate_inp_shexp.weight"
                ).reshape(1, -1)
    names = sorted(t)
    half = len(names) // 2  # two shards
    write_safetensors(
        d / "model-00001-of-00002.safetensors",
        {n: t[n] for n in names[:half]},
        bf16={n for n in names[:half] if bf16 and "norm" in n},
    )
    write_safetensors(d / "model-00002-of-00002.safetensors", {n: t[n] for n in names[half:]})
    cfg = {**hf_config(c, model_type), "tie_word_embeddings": True, "some_new_key": 1}
    (d / "config.json").write_text(json.dumps(cfg))


TOKENS = [1, 5, 9, 33, 2, 2, 40]


def logits(m):
    return ReferenceEngine(m).forward(TOKENS)


def test_llama_hf_equals_gguf_convention(tmp_path):
    gguf_style = random_model(CONFIGS["llama"], seed=3)  # rope "norm", permuted q/k rows
    to_hf(gguf_style, tmp_path, "llama", permute=True)
    hf = load_model(tmp_path)
    assert hf.config.rope_style == "neox"
    assert hf.config.extra["some_new_key"] == 1  # unknown keys kept aside
    assert np.max(np.abs(logits(hf) - logits(gguf_style))) < TOL


@pytest.mark.parametrize(
    "name,model_type", [("mixtral", "mixtral"), ("qwen2moe", "qwen2_moe"), ("olmoe", "olmoe")]
)
def test_moe_hf(tmp_path, name, model_type):
    cfg = replace(CONFIGS[name], rope_style="neox")
    m = random_model(cfg, seed=11)
    to_hf(m, tmp_path, model_type)
    hf = load_model(tmp_path)
    assert hf.config.n_experts == cfg.n_experts
    assert hf.tensor("blk.1.ffn_down_exps.weight").shape == (
        cfg.n_experts,
        cfg.dim,
        cfg.expert_ffn_dim,
    )
    assert np.max(np.abs(logits(hf) - logits(m))) < TOL


def test_bf16_tensors(tmp_path):
    m = random_model(CONFIGS["llama"], seed=4)
    to_hf(m, tmp_path, "llama", permute=True, bf16=True)
    hf = load_model(tmp_path)
    w = hf.tensor("blk.0.attn_norm.weight")
    assert np.max(np.abs(w - m.tensor("blk.0.attn_norm.weight"))) < 1e-2  # bf16 rounding
    assert hf.infos["blk.0.attn_norm.weight"].source_type == "BF16"


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(EdgertError, match="bert"):
        load_model(tmp_path)


def test_missing_expert(tmp_path):
    m = random_model(CONFIGS["mixtral"], seed=1)
    to_hf(m, tmp_path, "mixtral")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_local_experts"] = 5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgertError, match="expected 0..4"):
        load_model(tmp_path)


def test_truncated_safetensors(tmp_path):
    m = random_model(CONFIGS["llama"], seed=1)
    to_hf(m, tmp_path, "llama")
    f = tmp_path / "model-00002-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(EdgertError, match="truncated"):
        load_model(tmp_path)
