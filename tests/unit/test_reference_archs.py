"""The reference forward against an independent, loop-by-loop implementation written here, for
each architecture: dense llama, mixtral (renormalised top-k), qwen2-moe (raw top-k probabilities,
shared expert behind a sigmoid gate, qkv bias) and olmoe (q/k norm)."""

import math

import numpy as np
import pytest

from edgert.format.model import ModelConfig, ModelGraph, TensorInfo
from edgert.runtime.reference import ReferenceEngine

LOGIT_TOL = 2e-4  # max abs difference, float32 vs float64 loops


def random_model(cfg: ModelConfig, seed: int = 0) -> ModelGraph:
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (cfg.vocab_size, cfg.dim), "output_norm.weight": (cfg.dim,)}
    hd, E = cfg.head_dim, cfg.n_experts
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (cfg.dim,),
                p + "ffn_norm.weight": (cfg.dim,),
                p + "attn_q.weight": (cfg.n_heads * hd, cfg.dim),
                p + "attn_k.weight": (cfg.n_kv_heads * hd, cfg.dim),
                p + "attn_v.weight": (cfg.n_kv_heads * hd, cfg.dim),
                p + "attn_output.weight": (cfg.dim, cfg.n_heads * hd),
            }
        )
        if cfg.qkv_bias:
            shapes.update(
                {
                    p + "attn_q.bias": (cfg.n_heads * hd,),
                    p + "attn_k.bias": (cfg.n_kv_heads * hd,),
                    p + "attn_v.bias": (cfg.n_kv_heads * hd,),
                }
            )
        if cfg.qk_norm:
            shapes.update(
                {
                    p + "attn_q_norm.weight": (cfg.n_heads * hd,),
                    p + "attn_k_norm.weight": (cfg.n_kv_heads * hd,),
                }
            )
        if E:
            f = cfg.expert_ffn_dim
            shapes.update(
                {
                    p + "ffn_gate_inp.weight": (E, cfg.dim),
                    p + "ffn_gate_exps.weight": (E, f, cfg.dim),
                    p + "ffn_up_exps.weight": (E, f, cfg.dim),
                    p + "ffn_down_exps.weight": (E, cfg.dim, f),
                }
            )
            if cfg.shared_expert_ffn_dim:
                s = cfg.shared_expert_ffn_dim
                shapes.update(
                    {
                        p + "ffn_gate_shexp.weight": (s, cfg.dim),
                        p + "ffn_up_shexp.weight": (s, cfg.dim),
                        p + "ffn_down_shexp.weight": (cfg.dim, s),
                        p + "ffn_gate_inp_shexp.weight": (cfg.dim,),
                    }
                )
        else:
            shapes.update(
                {
                    p + "ffn_gate.weight": (cfg.ffn_dim, cfg.dim),
                    p + "ffn_up.weight": (cfg.ffn_dim, cfg.dim),
                    p + "ffn_down.weight": (cfg.dim, cfg.ffn_dim),
                }
            )
    tensors = {}
    for name, shape in shapes.items():
        if "norm" in name:
            tensors[name] = (1.0 + 0.1 * rng.normal(size=shape)).astype(np.float32)
        elif name.endswith("gate_inp.weight"):
            tensors[name] = rng.normal(0, 1.0, size=shape).astype(np.float32)
        else:
            tensors[name] = rng.normal(0, 0.3 / math.sqrt(shape[-1]) * 2, size=shape).astype(
                np.float32
            )
    infos = [TensorInfo(n, s, "F32") for n, s in shapes.items()]
    m = ModelGraph(cfg, infos, tensors.__getitem__, source="random")
    m.validate()
    return m


# ---- an independent implementation: float64, one token and one head at a time ----------------
def naive_logits(m: ModelGraph, tokens: list[int]) -> np.ndarray:
    c = m.config
    W = {n: m.tensor(n).astype(np.float64) for n in m.names()}

    def norm(v, w):
        return v / math.sqrt(np.mean(v * v) + c.rms_eps) * w

    def rope(v, pos):  # v (head_dim,)
        out = v.copy()
        half = c.rope_dim // 2
        for i in range(half):
            theta = pos * c.rope_theta ** (-2.0 * i / c.rope_dim)
            a, b = (2 * i, 2 * i + 1) if c.rope_style == "norm" else (i, i + half)
            z = complex(v[a], v[b]) * complex(math.cos(theta), math.sin(theta))
            out[a], out[b] = z.real, z.imag
        return out

    def swiglu(x, g, u, d):
        a = g @ x
        return d @ (a / (1 + np.exp(-a)) * (u @ x))

    keys = [[] for _ in range(c.n_layers)]
    vals = [[] for _ in range(c.n_layers)]
    out = []
    for pos, t in enumerate(tokens):
        x = W["token_embd.weight"][t].copy()
        for i in range(c.n_layers):
            p = f"blk.{i}."
            h = norm(x, W[p + "attn_norm.weight"])
            q, k, v = (W[p + f"attn_{n}.weight"] @ h for n in "qkv")
            if c.qkv_bias:
                q, k, v = (a + W[p + f"attn_{n}.bias"] for a, n in zip((q, k, v), "qkv"))
            if c.qk_norm:
                q, k = norm(q, W[p + "attn_q_norm.weight"]), norm(k, W[p + "attn_k_norm.weight"])
            hd = c.head_dim
            keys[i].append([rope(k[j * hd : (j + 1) * hd], pos) for j in range(c.n_kv_heads)])
            vals[i].append([v[j * hd : (j + 1) * hd] for j in range(c.n_kv_heads)])
            att = np.zeros(c.n_heads * hd)
            for head in range(c.n_heads):
                kvh = head // (c.n_heads // c.n_kv_heads)
                qh = rope(q[head * hd : (head + 1) * hd], pos)
                s = np.array([qh @ keys[i][tp][kvh] for tp in range(pos + 1)]) / math.sqrt(hd)
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[head * hd : (head + 1) * hd] = sum(
                    pr[tp] * vals[i][tp][kvh] for tp in range(pos + 1)
                )
            x = x + W[p + "attn_output.weight"] @ att
            h = norm(x, W[p + "ffn_norm.weight"])
            if c.n_experts:
                logits = W[p + "ffn_gate_inp.weight"] @ h
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
                chosen = sorted(range(c.n_experts), key=lambda e: -probs[e])[: c.n_experts_used]
                wsum = sum(probs[e] for e in chosen) if c.expert_weights_norm else 1.0
                y = np.zeros(c.dim)
                for e in chosen:
                    y += (
                        probs[e]
                        / wsum
                        * swiglu(
                            h,
                            W[p + "ffn_gate_exps.weight"][e],
                            W[p + "ffn_up_exps.weight"][e],
                            W[p + "ffn_down_exps.weight"][e],
                        )
                    )
                if c.shared_expert_ffn_dim:
                    gate = 1 / (1 + math.exp(-(W[p + "ffn_gate_inp_shexp.weight"] @ h)))
                    y += gate * swiglu(
                        h,
                        W[p + "ffn_gate_shexp.weight"],
                        W[p + "ffn_up_shexp.weight"],
                        W[p + "ffn_down_shexp.weight"],
                    )
            else:
                y = swiglu(
                    h, W[p + "ffn_gate.weight"], W[p + "ffn_up.weight"], W[p + "ffn_down.weight"]
                )
            x = x + y
        out.append(W["token_embd.weight"] @ norm(x, W["output_norm.weight"]))
    return np.array(out)


BASE = dict(
    n_layers=2,
    dim=32,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    ffn_dim=48,
    vocab_size=50,
    rope_theta=10000.0,
    rms_eps=1e-5,
    context_length=64,
)
CONFIGS = {
    "llama": ModelConfig(arch="llama", **BASE),
    "llama-neox-partial-rope": ModelConfig(arch="llama", rope_style="neox", rope_dim=4, **BASE),
    "mixtral": ModelConfig(
        arch="llama",
        n_experts=4,
        n_experts_used=2,
        expert_ffn_dim=24,
        expert_weights_norm=True,
        **BASE,
    ),
    "qwen2moe": ModelConfig(
        arch="qwen2moe",
        rope_style="neox",
        n_experts=6,
        n_experts_used=2,
        expert_ffn_dim=16,
        shared_expert_ffn_dim=40,
        qkv_bias=True,
        **BASE,
    ),
    "olmoe": ModelConfig(
        arch="olmoe",
        rope_style="neox",
        n_experts=8,
        n_experts_used=3,
        expert_ffn_dim=16,
        qk_norm=True,
        **BASE,
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_independent_implementation(name):
    m = random_model(CONFIGS[name], seed=len(name))
    tokens = [3, 17, 42, 8, 8, 0, 49, 21, 5]
    want = naive_logits(m, tokens)
    eng = ReferenceEngine(m)
    got = np.concatenate(
        [eng.forward(tokens[:4]), eng.forward(tokens[4:5]), eng.forward(tokens[5:])]
    )
    assert np.max(np.abs(got - want)) < LOGIT_TOL
    if m.config.n_experts:
        # every token of every layer routed to exactly n_experts_used experts
        assert eng.expert_counts.sum() == len(tokens) * m.config.n_layers * m.config.n_experts_used


def test_routing_normalisation_differs():
    """Renormalising the top-k weights changes the output (the flag is not ignored)."""
    from dataclasses import replace

    cfg = CONFIGS["mixtral"]
    a = random_model(cfg, seed=5)
    b = random_model(replace(cfg, expert_weights_norm=False), seed=5)
    ta = ReferenceEngine(a).forward([1, 2, 3])
    tb = ReferenceEngine(b).forward([1, 2, 3])
    assert np.max(np.abs(ta - tb)) > 1e-3
