"""The reference forward pass in numpy float32: the correctness oracle every faster path is
checked against. Simple and readable on purpose: RMSNorm, RoPE (per layer: global, sliding or
none), grouped-query attention with a KV cache (full or a sliding window), q/k norms, norms after
attention and FFN, SwiGLU or GeGLU, MoE routing (top-k with each architecture's normalisation,
shared experts), tied embeddings; batched prefill and single-token decode through the same code.
"""

from __future__ import annotations

import numpy as np

from edgert.errors import EdgertError
from edgert.format import kvcache, names
from edgert.format.model import ModelGraph
from edgert.format.routing import route, softmax
from edgert.runtime import rope


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # x (n, d), w (d,) -> (n, d)
    var = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)).astype(np.float32) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Gemma's ``gelu_pytorch_tanh``)."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x**3)))


ACTIVATION = {"silu": silu, "gelu_tanh": gelu_tanh}


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """Rotate x (n, heads, head_dim) in place of its first rope_dim dims.

    ``norm``: pairs (2i, 2i+1) rotate together (GGUF llama layout);
    ``neox``: pairs (i, i + rope_dim/2).
    """
    rd = cos.shape[1] * 2
    out = x.copy()
    c, s = cos[:, None, :], sin[:, None, :]
    if style == "norm":
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2] = a * c - b * s
        out[..., 1:rd:2] = a * s + b * c
    else:
        a, b = x[..., : rd // 2], x[..., rd // 2 : rd]
        out[..., : rd // 2] = a * c - b * s
        out[..., rd // 2 : rd] = a * s + b * c
    return out


class ReferenceEngine:
    """Runs a :class:`ModelGraph` token by token with a KV cache.

    ``forward(tokens)`` appends ``tokens`` to the sequence and returns logits for each of them
    (or only the last with ``last_only=True``); ``reset()`` clears the cache. With ``batch`` B > 1
    the engine holds B independent sequences that advance together: ``forward`` takes one token
    per sequence and returns one row of logits per sequence.
    """

    def __init__(
        self, model: ModelGraph, *, max_ctx: int | None = None, batch: int = 1,
        kv_cache: str | None = None,
    ):  # fmt: skip
        self.model = model
        #: tensors used instead of the model's (e.g. a quantized copy while measuring sensitivity)
        self.overrides: dict[str, np.ndarray] = {}
        self.cfg = model.config
        self.max_ctx = int(max_ctx or min(self.cfg.context_length, 4096))
        c = self.cfg
        self.batch = int(batch)
        if self.batch < 1:
            raise EdgertError(f"batch must be at least 1, not {batch}")
        shape = (c.n_layers, self.batch, self.max_ctx, c.n_kv_heads, c.head_dim)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        #: how the cache holds keys and values (edgert.format.kvcache): stored values are
        #: rounded as the C forward pass's cache rounds them
        self.kv = kvcache.parse(kv_cache)
        kvcache.check_heads(self.kv, c.head_dim)
        self.kv_cache = kvcache.name(self.kv)
        #: q4 keys (grouped by channel): k_cache holds every key in float16, this the complete
        #: groups as quantized
        self.k_groups = np.zeros(shape, np.float32) if self.kv[0] == "q4" else None
        self.pos = 0
        self.expert_counts = np.zeros((c.n_layers, max(c.n_experts, 1)), np.int64)
        #: the residual stream entering the FFN being run (what a recorder of FFNs reads)
        self.ffn_stream: np.ndarray | None = None

    def reset(self) -> None:
        self.pos = 0

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _w(self, name: str) -> np.ndarray:
        w = self.overrides.get(name)
        return w if w is not None else self.model.tensor(name)

    def _expert(self, i: int, proj: str, e: int) -> np.ndarray:
        """Expert ``e``'s ``proj`` matrix of layer ``i`` (read alone where its stack is larger
        than the model's cache limit)."""
        name = names.experts(i, proj)
        w = self.overrides.get(name)
        return w[e] if w is not None else self.model.part(name, e)

    def _mm(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W(name).T -> (n, out)."""
        return x @ self._w(name).T

    def _attention(self, i: int, x: np.ndarray, cos, sin) -> np.ndarray:
        """Layer ``i``'s attention; cos/sin None: no rotary embedding in this layer."""
        c, n = self.cfg, x.shape[0]
        q = self._mm(x, names.weight(i, "attn_q"))
        k = self._mm(x, names.weight(i, "attn_k"))
        v = self._mm(x, names.weight(i, "attn_v"))
        if c.qkv_bias:
            q += self._w(names.bias(i, "attn_q"))
            k += self._w(names.bias(i, "attn_k"))
            v += self._w(names.bias(i, "attn_v"))
        if c.qk_norm:
            q = rms_norm(q, self._w(names.q_norm(i)), c.rms_eps)
            k = rms_norm(k, self._w(names.k_norm(i)), c.rms_eps)
        q = q.reshape(n, c.n_heads, c.head_dim)
        k = k.reshape(n, c.n_kv_heads, c.head_dim)
        if c.qk_norm_per_head:
            q = rms_norm(q, self._w(names.q_norm(i)), c.rms_eps)
            k = rms_norm(k, self._w(names.k_norm(i)), c.rms_eps)
        if cos is not None:
            q = apply_rope(q, cos, sin, c.rope_style)
            k = apply_rope(k, cos, sin, c.rope_style)
        v = v.reshape(n, c.n_kv_heads, c.head_dim)
        group = c.n_heads // c.n_kv_heads
        if self.batch > 1:
            out = self._batch_attention(i, q, k, v, group)
            return self._mm(out, names.weight(i, "attn_output"))
        t0, t1 = self.pos, self.pos + n
        self._store_keys(i, 0, t0, k)
        self.v_cache[i, 0, t0:t1] = self._stored(1, v)
        keys, vals = self.k_cache[i, 0, :t1], self.v_cache[i, 0, :t1]  # (T, kv, hd)
        # q (n, kv, group, hd) x keys (T, kv, hd) -> scores (kv, group, n, T)
        qg = q.reshape(n, c.n_kv_heads, group, c.head_dim).transpose(1, 2, 0, 3)
        scores = self._scale_scores(qg @ keys.transpose(1, 2, 0)[:, None])
        qpos = np.arange(t0, t1)[:, None]
        kpos = np.arange(t1)[None, :]
        if self.k_groups is not None:  # keys of the groups complete at the query, quantized
            quant = self.k_groups[i, 0, :t1].transpose(1, 2, 0)[:, None]
            seen = kpos < kvcache.keys_seen(qpos)
            scores = np.where(seen, self._scale_scores(qg @ quant), scores)
        seen = kpos <= qpos
        if c.window(i):
            seen &= kpos > qpos - c.window(i)
        scores = np.where(seen, scores, np.float32(-np.inf))
        probs = softmax(scores, axis=-1)
        out = probs @ vals.transpose(1, 0, 2)[:, None]  # (kv, group, n, hd)
        out = out.transpose(2, 0, 1, 3).reshape(n, c.n_heads * c.head_dim)
        return self._mm(out, names.weight(i, "attn_output"))

    def _store_keys(self, i: int, b: int, t0: int, k: np.ndarray) -> None:
        """Layer ``i``'s keys k (n, kv, hd) of positions t0 .. of sequence ``b``, as the cache
        holds them (q4: in float16, the groups they complete quantized into k_groups)."""
        t1 = t0 + k.shape[0]
        if self.k_groups is None:
            self.k_cache[i, b, t0:t1] = self._stored(0, k)
            return
        self.k_cache[i, b, t0:t1] = k.astype(np.float16).astype(np.float32)
        g = kvcache.KEY_GROUP
        for g0 in range(t0 // g * g, t1 // g * g, g):
            group = self.k_cache[i, b, g0 : g0 + g]
            self.k_groups[i, b, g0 : g0 + g] = kvcache.round_trip_key_group(group)

    def _stored(self, j: int, x: np.ndarray) -> np.ndarray:
        """Keys (j = 0) or values (1) x (n, kv, hd) as the cache gives them back."""
        kind = self.kv[j]
        if kind == "f32":
            return x
        return kvcache.round_trip(kind, x.reshape(x.shape[0], -1)).reshape(x.shape)

    def _scale_scores(self, scores: np.ndarray) -> np.ndarray:
        c = self.cfg
        if c.attn_scale:
            return scores * np.float32(c.attn_scale)
        return scores / np.float32(np.sqrt(c.head_dim))

    def _batch_attention(self, i: int, q, k, v, group: int) -> np.ndarray:
        """One new token of each of the ``batch`` sequences, all at position ``pos``."""
        c, t1 = self.cfg, self.pos + 1
        for b in range(self.batch):
            self._store_keys(i, b, self.pos, k[b : b + 1])
        self.v_cache[i, :, self.pos] = self._stored(1, v)
        keys, vals = self.k_cache[i, :, :t1], self.v_cache[i, :, :t1]  # (B, T, kv, hd)
        qg = q.reshape(self.batch, c.n_kv_heads, group, c.head_dim)
        scores = self._scale_scores(np.einsum("bkgd,btkd->bkgt", qg, keys))
        if self.k_groups is not None:
            seen = int(kvcache.keys_seen(self.pos))
            quant = np.einsum("bkgd,btkd->bkgt", qg, self.k_groups[i, :, :seen])
            scores[..., :seen] = self._scale_scores(quant)
        if c.window(i):
            seen = np.arange(t1) > self.pos - c.window(i)
            scores = np.where(seen, scores, np.float32(-np.inf))
        out = np.einsum("bkgt,btkd->bkgd", softmax(scores, axis=-1), vals)
        return out.reshape(self.batch, c.n_heads * c.head_dim)

    def _moe(self, i: int, x: np.ndarray) -> np.ndarray:
        c = self.cfg
        idx, w = route(c, self._mm(x, names.router(i)))
        out = np.zeros_like(x)
        for e in np.unique(idx):
            rows, slot = np.nonzero(idx == e)
            self.expert_counts[i, e] += len(rows)
            xe = x[rows]
            gate, up, down = (self._expert(i, p, e) for p in names.EXPERT_PROJECTIONS)
            h = self._act(xe @ gate.T) * (xe @ up.T)
            out[rows] += w[rows, slot][:, None] * (h @ down.T)
        if c.shared_expert_ffn_dim:
            sh = self._swiglu(x, *(names.shared(i, p) for p in names.EXPERT_PROJECTIONS))
            g = x @ self._w(names.shared_gate(i)).reshape(-1, c.dim).T  # (n, 1)
            out += sh / (1.0 + np.exp(-g))
        return out

    def _act(self, x: np.ndarray) -> np.ndarray:
        return ACTIVATION[self.cfg.activation](x)

    def _swiglu(self, x: np.ndarray, gate: str, up: str, down: str) -> np.ndarray:
        """The gated FFN: act(x gate^T) * (x up^T), then down (SwiGLU, or GeGLU)."""
        h = self._act(self._mm(x, gate)) * self._mm(x, up)
        return self._mm(h, down)

    def _ffn(self, i: int, x: np.ndarray) -> np.ndarray:
        if self.cfg.is_moe:
            return self._moe(i, x)
        return self._swiglu(x, *(names.weight(i, p) for p in names.FFN_PROJECTIONS))

    def hidden(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Run ``tokens`` through every layer; return the final normed hidden states (n, dim)."""
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if n == 0:
            raise EdgertError("no tokens to evaluate")
        if self.batch > 1 and n != self.batch:
            raise EdgertError(f"a batch of {self.batch} sequences takes one token each, not {n}")
        steps = 1 if self.batch > 1 else n
        if self.pos + steps > self.max_ctx:
            raise EdgertError(
                f"sequence of {self.pos + steps} tokens exceeds the context of {self.max_ctx}",
                "use a shorter prompt / fewer tokens, or a larger context",
            )
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise EdgertError(f"token id out of range for a vocabulary of {c.vocab_size}")
        x = self._w(names.EMBEDDING)[tokens]
        if c.embed_scale != 1.0:
            x = x * np.float32(c.embed_scale)
        x = self.run_layers(x, 0, c.n_layers)
        self.pos += steps
        return rms_norm(x, self._w(names.OUTPUT_NORM), c.rms_eps)

    def run_layers(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Residual stream x (n, dim) through layers [start, stop) at positions pos..pos+n-1
        (the KV cache of those layers is written; ``pos`` is not advanced)."""
        c = self.cfg
        fname = rope.factors_name(c, self.max_ctx)
        factors = self._w(fname) if fname else None
        n = x.shape[0]
        positions = np.full(n, self.pos) if self.batch > 1 else np.arange(self.pos, self.pos + n)
        cos, sin = rope.tables(c, positions, factors)
        kinds = rope.layer_index(c)
        for i in range(start, stop):
            h = rms_norm(x, self._w(names.attn_norm(i)), c.rms_eps)
            r = kinds[i]
            a = self._attention(i, h, *((cos[r], sin[r]) if r >= 0 else (None, None)))
            if c.post_norms:
                a = rms_norm(a, self._w(names.post_attn_norm(i)), c.rms_eps)
            x = x + a
            h = rms_norm(x, self._w(names.ffn_norm(i)), c.rms_eps)
            self.ffn_stream = x
            f = self._ffn(i, h)
            if c.post_norms:
                f = rms_norm(f, self._w(names.post_ffn_norm(i)), c.rms_eps)
            x = x + f
        return x

    def lm_head_name(self) -> str:
        if names.OUTPUT in self.model or names.OUTPUT in self.overrides:
            return names.OUTPUT
        return names.EMBEDDING

    def head_rows(self, rows: slice) -> np.ndarray:
        """Rows (vocabulary entries) of the output head, read alone where the head is larger
        than the model's cache limit."""
        name = self.lm_head_name()
        w = self.overrides.get(name)
        return w[rows] if w is not None else self.model.part(name, rows)

    def logits(self, h: np.ndarray) -> np.ndarray:
        """The output head on final hidden states h (n, dim) from :meth:`hidden`: (n, vocab)."""
        return self._mm(h, self.lm_head_name())

    def forward(self, tokens: list[int] | np.ndarray, *, last_only: bool = False) -> np.ndarray:
        """Logits (n, vocab) for the tokens appended; (vocab,) of the last with ``last_only``."""
        h = self.hidden(tokens)
        return self.logits(h[-1:])[0] if last_only else self.logits(h)
