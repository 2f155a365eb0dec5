"""The reference forward against an independent, loop-by-loop implementation written here, for
each architecture: dense llama, llama3 (rope frequency factors), mixtral (renormalised top-k),
qwen2 (qkv bias), qwen2-moe (raw top-k probabilities, shared expert behind a sigmoid gate, qkv
bias), qwen3 / qwen3-moe (per-head q/k norm, head_dim != dim / heads), olmoe (q/k norm over the
projection), gemma3 (sliding window with its own rope base, post norms, GeGLU, scaled embeddings
and scores), phi3 (partial rotary with LongRoPE factors and attention factor) and smollm3 (layers
without RoPE)."""

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
    half = cfg.rope_dim // 2
    if cfg.rope_factors == "freqs":
        shapes["rope_freqs.weight"] = (half,)
    elif cfg.rope_factors == "longrope":
        shapes.update({"rope_factors_long.weight": (half,), "rope_factors_short.weight": (half,)})
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
        if cfg.qk_norm_per_head:
            shapes.update({p + "attn_q_norm.weight": (hd,), p + "attn_k_norm.weight": (hd,)})
        if cfg.post_norms:
            shapes.update(
                {
                    p + "post_attention_norm.weight": (cfg.dim,),
                    p + "post_ffw_norm.weight": (cfg.dim,),
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
        elif name.startswith("rope_"):
            tensors[name] = rng.uniform(1.0, 8.0, size=shape).astype(np.float32)
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

    factors = np.ones(c.rope_dim // 2)
    if c.rope_factors == "freqs":
        factors = W["rope_freqs.weight"]
    elif c.rope_factors == "longrope":  # the context here is the reference's default
        long = min(c.context_length, 4096) > c.rope_orig_ctx
        factors = W["rope_factors_long.weight" if long else "rope_factors_short.weight"]

    def rope(v, pos, layer):  # v (head_dim,)
        if layer in c.no_rope_layers:
            return v
        swa = layer in c.swa_layers
        base = c.rope_theta_swa if swa else c.rope_theta
        scale = c.rope_scale_swa if swa else c.rope_scale
        out = v.copy()
        half = c.rope_dim // 2
        for i in range(half):
            theta = pos * scale * base ** (-2.0 * i / c.rope_dim) / factors[i]
            a, b = (2 * i, 2 * i + 1) if c.rope_style == "norm" else (i, i + half)
            z = complex(v[a], v[b]) * complex(math.cos(theta), math.sin(theta)) * c.rope_attn_factor
            out[a], out[b] = z.real, z.imag
        return out

    def act(a):
        if c.activation == "gelu_tanh":
            return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
        return a / (1 + np.exp(-a))

    def swiglu(x, g, u, d):
        return d @ (act(g @ x) * (u @ x))

    keys = [[] for _ in range(c.n_layers)]
    vals = [[] for _ in range(c.n_layers)]
    out = []
    for pos, t in enumerate(tokens):
        x = W["token_embd.weight"][t] * c.embed_scale
        for i in range(c.n_layers):
            p = f"blk.{i}."
            h = norm(x, W[p + "attn_norm.weight"])
            q, k, v = (W[p + f"attn_{n}.weight"] @ h for n in "qkv")
            if c.qkv_bias:
                q, k, v = (a + W[p + f"attn_{n}.bias"] for a, n in zip((q, k, v), "qkv"))
            if c.qk_norm:
                q, k = norm(q, W[p + "attn_q_norm.weight"]), norm(k, W[p + "attn_k_norm.weight"])
            hd = c.head_dim
            qw = kw = None  # per-head q/k norms
            if c.qk_norm_per_head:
                qw, kw = W[p + "attn_q_norm.weight"], W[p + "attn_k_norm.weight"]

            def head_norm(v, w):
                return v if w is None else norm(v, w)

            keys[i].append(
                [rope(head_norm(k[j * hd : (j + 1) * hd], kw), pos, i) for j in range(c.n_kv_heads)]
            )
            vals[i].append([v[j * hd : (j + 1) * hd] for j in range(c.n_kv_heads)])
            att = np.zeros(c.n_heads * hd)
            first = max(0, pos + 1 - c.sliding_window) if i in c.swa_layers else 0
            seen = range(first, pos + 1)
            for head in range(c.n_heads):
                kvh = head // (c.n_heads // c.n_kv_heads)
                qh = rope(head_norm(q[head * hd : (head + 1) * hd], qw), pos, i)
                s = np.array([qh @ keys[i][tp][kvh] for tp in seen])
                s = s * c.attn_scale if c.attn_scale else s / math.sqrt(hd)
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[head * hd : (head + 1) * hd] = sum(
                    pr[j] * vals[i][tp][kvh] for j, tp in enumerate(seen)
                )
            o = W[p + "attn_output.weight"] @ att
            if c.post_norms:
                o = norm(o, W[p + "post_attention_norm.weight"])
            x = x + o
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
            if c.post_norms:
                y = norm(y, W[p + "post_ffw_norm.weight"])
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
    "llama3": ModelConfig(arch="llama", rope_factors="freqs", **BASE),
    "qwen2": ModelConfig(arch="qwen2", rope_style="neox", qkv_bias=True, **BASE),
    "qwen3": ModelConfig(
        arch="qwen3", rope_style="neox", qk_norm_per_head=True, **{**BASE, "head_dim": 12}
    ),
    "qwen3moe": ModelConfig(
        arch="qwen3moe",
        rope_style="neox",
        qk_norm_per_head=True,
        n_experts=8,
        n_experts_used=3,
        expert_ffn_dim=16,
        expert_weights_norm=True,
        **{**BASE, "head_dim": 12},
    ),
    "gemma3": ModelConfig(
        arch="gemma3",
        rope_style="neox",
        qk_norm_per_head=True,
        post_norms=True,
        activation="gelu_tanh",
        embed_scale=math.sqrt(32),
        attn_scale=0.3,
        sliding_window=3,
        swa_layers=[0, 1],
        rope_theta_swa=10000.0,
        rope_scale=0.25,
        **{**BASE, "n_layers": 3, "head_dim": 12, "rope_theta": 1e6},
    ),
    "phi3": ModelConfig(
        arch="phi3",
        rope_style="neox",
        rope_dim=6,
        rope_factors="longrope",
        rope_orig_ctx=16,
        rope_attn_factor=1.19,
        **BASE,
    ),
    "smollm3": ModelConfig(arch="smollm3", no_rope_layers=[1], **BASE),
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


def test_routing_spread_counts_experts_and_what_the_next_token_keeps():
    """edgert.format.routing.spread on traces whose routing is known: every token on the same
    top-k (k experts used, all kept), tokens alternating between two disjoint sets (2k used,
    none kept)."""
    from edgert.format.routing import spread

    cfg = CONFIGS["mixtral"]  # 2 of 4 experts
    k, e = cfg.n_experts_used, cfg.n_experts
    same = np.tile(np.arange(e, dtype=np.float32)[::-1], (6, 3, 1))  # (tokens, layers, experts)
    s = spread(cfg, same)
    assert (s["tokens"], s["distinct_experts_median"], s["next_token_overlap"]) == (6, k, 1.0)
    alt = same.copy()
    alt[1::2] = alt[1::2, :, ::-1]  # odd tokens prefer the other end
    s = spread(cfg, alt)
    assert s["distinct_experts_median"] == 2 * k and s["next_token_overlap"] == 0.0
    assert s["distinct_experts_range"] == [2 * k, 2 * k]
