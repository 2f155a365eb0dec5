"""The executor of language models: every layer and the head of a step in one call into the C
forward pass (``kernels_neon/forward.c``, in the artifact's ``lib/model.so``, bound by
:mod:`edgert.runtime.forward`), on weights from a :class:`~edgert.runtime.weights.WeightSource`,
with a float32 KV cache. Under a DRAM budget the layer streamer, the expert cache or the neuron
cache feed it what stays on flash.

Needs numpy and the artifact's C library only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgert.errors import EdgertError
from edgert.format import kvcache, names
from edgert.format.model import ModelConfig
from edgert.plan.sizes import MAX_BATCH
from edgert.runtime import rope
from edgert.runtime.forward import NativeForward
from edgert.settings import run_threads


class LanguageModel(Protocol):
    """What generation, perplexity and the benchmarks run: this executor, or the numpy reference
    (:class:`edgert.runtime.reference.ReferenceEngine`)."""

    cfg: ModelConfig
    tokenizer: object
    pos: int
    max_ctx: int

    def forward(self, tokens, *, last_only: bool = False) -> np.ndarray:
        """Append ``tokens`` to the sequence; their logits (n, vocab), or (vocab,) of the last."""

    def reset(self) -> None:
        """Start a new sequence (the KV cache is reused from position 0)."""


class OpTimes:
    """Seconds spent per (layer, operation) while set as an engine's ``profiler``."""

    def __init__(self):
        self._native: np.ndarray | None = None

    def add_native(self, times: np.ndarray) -> None:
        """Times the C forward pass measured: (n_layers + 1, 2) seconds, attention and FFN per
        layer, then the head (summed as an array: a decode step's bookkeeping stays a few
        microseconds)."""
        if self._native is None:
            self._native = times.copy()
        else:
            self._native += times

    @property
    def seconds(self) -> dict[tuple[int | None, str], float]:
        """{(layer, "attention" | "ffn"): seconds, (None, "head"): seconds}"""
        t = self._native
        if t is None:
            return {}
        out: dict[tuple[int | None, str], float] = {}
        for i in range(t.shape[0] - 1):
            for j, op in enumerate(("attention", "ffn")):
                out[(i, op)] = float(t[i, j])
        out[(None, "head")] = float(t[-1, 0])
        return out


class CompiledEngine:
    """A language model running on its compiled library: ``forward(tokens, last_only)``,
    ``reset()``, as the reference engine."""

    def __init__(
        self,
        lib_path: str,
        config: ModelConfig,
        source,
        *,
        tokenizer=None,
        max_ctx: int = 2048,
        head_name: str | None = None,
        batch: int = MAX_BATCH,
        kv: tuple[str, str] = kvcache.DEFAULT,
    ):
        self.cfg = config
        self.source = source
        self.tokenizer = tokenizer
        self.max_ctx = int(max_ctx)
        self.pos = 0
        self.head_name = head_name or names.OUTPUT
        #: tokens per call into C (sliding-window layers' caches are sized for it)
        self.batch = int(batch)
        #: the C forward pass over this model's weights, and its KV cache
        self.native = NativeForward.load(
            lib_path, config, source.weight, self.head_name, self.max_ctx, self.batch, kv
        )
        #: how the cache holds keys and values (edgert.format.kvcache), as --kv-cache writes it
        self.kv_cache = kvcache.name(kv)
        if self.native is None:
            raise EdgertError(
                f"{lib_path} has no forward pass this edgert can call",
                "recompile the artifact with this edgert version",
            )
        #: what divides the rotary frequencies at this context (Llama 3.1, LongRoPE), or None
        self._rope_factors = None
        fname = rope.factors_name(config, self.max_ctx)
        if fname:
            fmt, _meta, arrays = source.weight(fname)
            if fmt != "f32" or arrays is None:
                raise EdgertError(f"{fname} is stored as {fmt}, expected float32 in DRAM")
            self._rope_factors = np.array(arrays[0], np.float32)
        #: tokens routed to each expert (n_layers, n_experts), counted by the C side
        self.expert_counts = self.native.expert_counts
        #: set to an OpTimes to time each layer's operations (None: no cost)
        self.profiler = None
        #: the DRAM plan (a dense model's DramPlan, a mixture's MoePlan, a sparse FFN's
        #: SparsePlan; edgert.plan) and what streams under it
        self.dram_plan = None
        self.streamer = None
        self.expert_cache = None
        #: the window cache of neuron bundles under --sparsity (edgert.runtime.neurons)
        self.neurons = None

    @property
    def flash_bytes_per_token(self) -> float:
        """Flash bytes read per forward call (= per token in decode); 0 when nothing streams."""
        st = self.stream_stats
        return st.bytes_per_call if st is not None else 0.0

    @property
    def stream_stats(self):
        """What streaming did since load (StreamStats, ExpertStats or SparseStats), None when
        nothing streams."""
        for s in (self.streamer, self.expert_cache, self.neurons):
            if s is not None:
                return s.stats
        return None

    def close(self) -> None:
        """Stop the flash reader threads and close their files (the engine is done)."""
        for s in (self.streamer, self.expert_cache, self.neurons):
            if s is not None:
                s.close()

    def reset(self) -> None:
        self.pos = 0

    def forward(self, tokens, *, last_only: bool = False) -> np.ndarray:
        """Every layer and the head in C, MAX_BATCH tokens per call (the kernels' tables of a
        chunk stay small; fewer where the DRAM plan sized the scratch for fewer)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n, t = len(tokens), self.pos
        if n == 0:
            raise EdgertError("no tokens to evaluate")
        if t + n > self.max_ctx:
            raise EdgertError(f"sequence of {t + n} tokens exceeds the context of {self.max_ctx}")
        x = self.source.embedding(tokens).astype(np.float32)
        if self.cfg.embed_scale != 1.0:
            x *= np.float32(self.cfg.embed_scale)
        cos, sin = rope.tables(self.cfg, np.arange(t, t + n), self._rope_factors)
        batch = self.batch
        prof, out = self.profiler, []
        times = np.zeros((self.cfg.n_layers + 1, 2)) if prof is not None else None
        run = self.streamer.forward if self.streamer is not None else self.native.forward
        for s in range(0, n, batch):
            e = min(n, s + batch)
            if self.neurons is not None:
                self.neurons.begin_step(e - s)
            if self.expert_cache is not None:
                self.expert_cache.stats.calls += 1
                self.expert_cache.stats.tokens += e - s
            y = run(
                x[s:e],
                self.pos,
                np.ascontiguousarray(cos[:, s:e]),
                np.ascontiguousarray(sin[:, s:e]),
                threads=run_threads(),
                times=times,
                last_only=last_only,
                logits=not last_only or e == n,
            )  # with last_only, only the final chunk's logits are wanted
            if y is not None:
                out.append(y)
            self.pos += e - s
        if prof is not None:
            prof.add_native(times)
        return out[0][0] if last_only else np.concatenate(out)
