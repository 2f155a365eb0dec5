"""The device-side executor: runs a compiled module (``lib/model.so``, see edgert.compiler.lower.relax)
layer by layer with a KV cache, feeding it weights from a :class:`WeightSource`.

Needs numpy and the TVM runtime only. Where the module has the C forward pass (edgert.runtime.forward),
a step is one call into it; a mixture of experts routes there, and asks the runtime for the
experts each layer chose (edgert.runtime.experts reads them from flash). Without it, routing (top-k over
the router's logits) happens here, between compiled functions.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import numpy as np

from edgert.errors import EdgertError
from edgert.format.model import ModelConfig
from edgert.runtime.reference import rope_tables, route

log = logging.getLogger(__name__)


def expert_name(layer: int, proj: str, e: int) -> str:
    """Artifact name of one expert's weight (each expert is stored contiguously)."""
    return f"blk.{layer}.ffn_{proj}_exps.{e}.weight"


class WeightSource(Protocol):
    def arrays(self, name: str) -> list[np.ndarray]:
        """The function inputs for tensor ``name`` (one float32 array, or a format's buffers)."""


class ModelGraphSource:
    """Weights straight from a ModelGraph as float32 (the unquantized lowering)."""

    def __init__(self, model):
        self.model = model

    def arrays(self, name: str) -> list[np.ndarray]:
        parts = name.split(".")
        if len(parts) == 5 and parts[2].endswith("_exps"):  # blk.i.ffn_x_exps.e.weight
            stacked = self.model.tensor(".".join(parts[:3] + parts[4:]))
            return [stacked[int(parts[3])]]
        return [self.model.tensor(name)]

    def embedding(self, tokens: np.ndarray) -> np.ndarray:
        return self.model.tensor("token_embd.weight")[tokens]

    def weight(self, name: str):
        """(format, {"m", "k", ...}, arrays): how the native forward pass reads ``name``."""
        (a,) = self.arrays(name)
        m, k = (a.shape[0], a.shape[1]) if a.ndim == 2 else (a.shape[0], 1)
        return "f32", {"m": m, "k": k}, [a]


class ArtifactSource:
    """Weights from an artifact: each tensor's buffers in the order the compiler stored them.
    Tensors in ``streamed`` are not read: :meth:`weight` describes them without data (they are
    read per step by :class:`edgert.runtime.stream.LayerStreamer`)."""

    def __init__(self, art, *, streamed: set[str] | frozenset = frozenset()):
        self.art = art
        self.streamed = set(streamed)
        self._emb = None

    def arrays(self, name: str) -> list[np.ndarray]:
        return list(self.art.read_tensor(name).values())

    def weight(self, name: str):
        """(format, {"m", "k", ...}, arrays): how the native forward pass reads ``name``."""
        e = self.art.tensors[name]
        shape = e["shape"]
        meta = {"m": shape[0], "k": shape[1] if len(shape) > 1 else 1}
        if e["format"] in ("uniform", "hlq"):
            meta.update(bits=e["kernel"]["bits"], group_size=e["kernel"]["group_size"])
        if name in self.streamed:
            return e["format"], meta, None
        b = self._embedding() if name == "token_embd.weight" else self.art.read_tensor(name)
        if e["format"] in ("uniform", "hlq"):
            return e["format"], meta, [b["planes"], b["scale"], b["zero"]]
        if e["format"] == "q8":
            return "q8", meta, [b["q"], b["scale"]]
        return e["format"], meta, list(b.values())

    def _embedding(self) -> dict[str, np.ndarray]:
        """The embedding table's buffers, read once (a tied head uses the same arrays)."""
        if self._emb is None:
            self._emb = self.art.read_tensor("token_embd.weight")
        return self._emb

    def embedding(self, tokens: np.ndarray) -> np.ndarray:
        from edgert.format.q8 import dequantize_q8

        e = self._embedding()
        dim = self.art.tensors["token_embd.weight"]["shape"][1]
        return dequantize_q8(e["q"][tokens], e["scale"][tokens], dim)


def reference_model(art):
    """A ModelGraph of the artifact's weights dequantized to float32: the reference forward on
    exactly the weights the compiled path uses (the oracle for checking it)."""
    from edgert.runtime.kernels import PackedWeight
    from edgert.format.model import ModelGraph, TensorInfo
    from edgert.format.q8 import dequantize_q8

    cfg = art.config()
    tensors = art.tensors

    def one(name: str) -> np.ndarray:
        e = tensors[name]
        b = art.read_tensor(name)
        if e["format"] == "f32":
            return b["data"]
        if e["format"] == "q8":
            return dequantize_q8(b["q"], b["scale"], e["shape"][1])
        return PackedWeight.from_buffers(e["kernel"], b).dequantize()

    names, infos = {}, []
    for name, e in tensors.items():
        parts = name.split(".")
        if len(parts) == 5 and parts[2].endswith("_exps"):
            stacked = ".".join(parts[:3] + parts[4:])
            if stacked not in names:
                names[stacked] = None
                infos.append(TensorInfo(stacked, (cfg.n_experts, *e["shape"]), e["format"]))
            continue
        names[name] = name
        infos.append(TensorInfo(name, tuple(e["shape"]), e["format"]))

    def loader(name: str) -> np.ndarray:
        if names[name] is None:
            layer, proj = int(name.split(".")[1]), name.split(".")[2][4:-5]
            return np.stack([one(expert_name(layer, proj, e)) for e in range(cfg.n_experts)])
        return one(name)

    tok = art.tokenizer() if art.manifest.get("tokenizer") else None
    return ModelGraph(cfg, infos, loader, tokenizer=tok, source=str(art.path))


def open_artifact_engine(
    path,
    *,
    max_ctx: int | None = None,
    native: bool = True,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
) -> CompiledEngine:
    """Load an artifact (schema, target and resident checksums verified) as an engine;
    ``native=False`` runs every step through the compiled functions (no C forward pass).
    ``dram_budget`` (bytes): weights, KV cache and scratch fit in it — the layers that do not fit
    stream from flash each step (dense models; see edgert.runtime.stream). None: the budget the artifact
    was compiled for, if any (and its context as the default ``max_ctx``); 0: no budget.
    A mixture of experts keeps its experts on flash and caches what the budget holds
    (edgert.runtime.experts); ``experts``: the cache's options (``policy``, ``predictor``,
    ``prefetch``). ``ffn``: ``sparsity`` (one the artifact was calibrated for; None: dense) and
    ``window`` (tokens a neuron stays cached idle; 0: as long as the budget allows) run a dense
    model's FFN on its active neurons, their bundles read from flash (edgert.runtime.sparse)."""
    from edgert.format.artifact import Artifact
    from edgert.runtime.stream import PROJECTIONS, LayerStreamer, plan_dram, target_chunk, target_gap

    # checksums are verified as the engine reads its weights, then for whatever it did not read
    art = Artifact.open(path, verify_resident=False)
    if art.manifest.get("kind") == "onnx":
        raise EdgertError(
            f"{art.path} is a compiled ONNX model, not a language model",
            "run it with `edgert run ART --input FILE.npy`",
        )
    art.check_target()
    cfg = art.config()
    plan = art.manifest.get("plan", {})
    tok = art.tokenizer() if art.manifest.get("tokenizer") else None
    compiled = art.manifest.get("dram")
    if dram_budget is None and compiled:
        dram_budget, max_ctx = compiled["budget"], max_ctx or compiled["ctx"]
    max_ctx = int(max_ctx or min(cfg.context_length, 4096))
    dram = moe = sparse = None
    streamed: set[str] = set()
    sparsity = (ffn or {}).get("sparsity")
    if sparsity is not None:
        from edgert.runtime.sparse import ffn_tensors, plan_sparse

        if cfg.is_moe or not native:
            raise EdgertError(
                "--sparsity runs dense models through the native forward pass",
                "run it without --sparsity",
            )
        gap = (ffn or {}).get("gap_bytes")
        gap = target_gap(art) if gap is None else int(gap)
        sparse = plan_sparse(
            art, cfg, max_ctx=max_ctx, budget=int(dram_budget or 0) or None,
            sparsity=float(sparsity), window=int((ffn or {}).get("window") or 0), gap_bytes=gap,
        )  # fmt: skip
        streamed = ffn_tensors(cfg)
    elif dram_budget and cfg.is_moe:
        from edgert.runtime.experts import expert_tensors, plan_moe

        moe = plan_moe(
            art, cfg, max_ctx=max_ctx, budget=int(dram_budget), chunk=target_chunk(art),
            cache=experts,
        )  # fmt: skip
        if moe.streams:
            streamed = {
                n for i in range(cfg.n_layers) for e in range(cfg.n_experts)
                for n in expert_tensors(i, e)
            }  # fmt: skip
    elif dram_budget:
        if not native:
            raise EdgertError(
                "--dram-budget streams dense models through the native forward pass, which is off",
                "run it without --dram-budget",
            )
        dram = plan_dram(
            art, cfg, max_ctx=max_ctx, budget=int(dram_budget), chunk=target_chunk(art)
        )
        streamed = {f"blk.{i}.{p}.weight" for i in dram.streamed for p in PROJECTIONS}
    engine = CompiledEngine(
        str(art.path / art.manifest["libs"]["model"]),
        cfg,
        ArtifactSource(art, streamed=streamed),
        tokenizer=tok,
        max_ctx=max_ctx,
        head_name=plan.get("head"),
        layer_variants=plan.get("layer_variants"),
        expert_variants=plan.get("expert_variants"),
        native=native,
    )
    engine.dram_plan = dram or moe or sparse
    if sparse is not None:
        from edgert.runtime.sparse import NeuronCache

        if engine.native is None:
            raise EdgertError(
                f"{art.path}'s module has no native forward pass to run sparse FFNs through",
                "recompile the artifact with this edgert version",
            )
        engine.neurons = NeuronCache(art, cfg, sparse, gap_bytes=gap)
        engine.native.set_sparse(engine.neurons)
    if moe is not None and moe.streams:
        from edgert.runtime.experts import ExpertCache, tvm_inputs

        native_fwd = engine.native
        convert = (
            native_fwd.expert_weights if native_fwd is not None
            else tvm_inputs(engine._tvm.runtime.from_dlpack)
        )  # fmt: skip
        engine.expert_cache = ExpertCache(art, cfg, moe, convert, **(experts or {}))
        if native_fwd is not None:
            native_fwd.set_experts(engine.expert_cache)
    if dram is not None and dram.streamed:
        if engine.native is None:
            raise EdgertError(
                f"{art.path}'s module has no native forward pass to stream layers through",
                "recompile the artifact with this edgert version",
            )
        engine.streamer = LayerStreamer(art, dram, engine.native)
    # streamed tensors are verified on their first read
    art.verify(residency="resident", skip=streamed)
    return engine


def _tvm():
    try:
        import tvm
        from tvm import relax
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgertError(
            "running artifacts needs the TVM runtime", "pip install apache-tvm"
        ) from e
    return tvm, relax


class OpTimes:
    """Seconds spent per (layer, operation) while set as an engine's ``profiler``."""

    def __init__(self):
        self.seconds: dict[tuple[int | None, str], float] = {}

    def add(self, layer: int | None, op: str, since: float) -> float:
        now = time.perf_counter()
        self._accumulate((layer, op), now - since)
        return now

    def add_native(self, times: np.ndarray) -> None:
        """Times the native forward pass measured: (n_layers + 1, 2) seconds, attention and FFN
        per layer, then the head."""
        for i in range(times.shape[0] - 1):
            for j, op in enumerate(("attention", "ffn")):
                self._accumulate((i, op), float(times[i, j]))
        self._accumulate((None, "head"), float(times[-1, 0]))

    def _accumulate(self, key: tuple[int | None, str], seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds


class CompiledEngine:
    """Same interface as the reference engine: ``forward(tokens, last_only)``, ``reset()``."""

    def __init__(
        self,
        lib_path: str,
        config: ModelConfig,
        source,
        *,
        tokenizer=None,
        max_ctx: int = 2048,
        head_name: str | None = None,
        layer_variants: list[str] | None = None,
        expert_variants: list[list[str]] | None = None,
        native: bool = True,
    ):
        tvm, relax = _tvm()
        self._tvm = tvm
        self.cfg = config
        self.source = source
        self.tokenizer = tokenizer
        self.max_ctx = int(max_ctx)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
        c = config
        shape = (c.n_layers, self.max_ctx, c.n_kv_heads, c.head_dim)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        self.pos = 0
        self.head_name = head_name or "output.weight"
        self._resident: dict[str, list] = {}
        self.expert_counts = np.zeros((c.n_layers, max(c.n_experts, 1)), np.int64)
        self.layer_variants = layer_variants or ["f32"] * c.n_layers
        self.expert_variants = expert_variants or [
            [self.layer_variants[i]] * c.n_experts for i in range(c.n_layers)
        ]
        self._fns: dict[str, object] = {}
        #: the C forward pass of dense models (None: every step runs the compiled functions)
        self.native = None
        if native and hasattr(source, "weight"):
            from edgert.runtime.forward import NativeForward

            self.native = NativeForward.load(
                lib_path, config, source.weight, self.head_name, self.k_cache, self.v_cache
            )
            if self.native is not None and c.is_moe:
                self.expert_counts = self.native.expert_counts  # counted in C
        #: set to an OpTimes to time each layer's operations (None: no cost)
        self.profiler = None
        #: the DRAM plan (edgert.runtime.stream.DramPlan, or edgert.runtime.experts.MoePlan) and what streams
        #: under it: a dense model's layers, or a mixture's experts
        self.dram_plan = None
        self.streamer = None
        self.expert_cache = None
        #: the window cache of neuron bundles under --sparsity (edgert.runtime.sparse.NeuronCache)
        self.neurons = None

    @property
    def flash_bytes_per_token(self) -> float:
        """Flash bytes read per forward call (= per token in decode); 0 when nothing streams."""
        st = self.stream_stats
        return st.bytes_per_call if st is not None else 0.0

    @property
    def stream_stats(self):
        """What streaming did since load (edgert.runtime.stream.StreamStats or
        edgert.runtime.experts.ExpertStats), None when nothing streams."""
        for s in (self.streamer, self.expert_cache, self.neurons):
            if s is not None:
                return s.stats
        return None

    def close(self) -> None:
        """Stop the flash reader threads and close their files (the engine is done)."""
        for s in (self.streamer, self.expert_cache, self.neurons):
            if s is not None:
                s.close()

    def _fn(self, name: str, variant: str | None = None):
        """The compiled function ``name`` (of ``variant``: see edgert.compiler.lower.relax)."""
        key = f"{name}__{variant}" if variant else name
        f = self._fns.get(key)
        if f is None:
            try:
                f = self._fns[key] = self.vm[key]
            except (KeyError, AttributeError, RuntimeError) as e:
                raise EdgertError(
                    f"the compiled module has no function {key}",
                    "recompile the artifact with this edgert version",
                ) from e
        return f

    def reset(self) -> None:
        self.pos = 0

    def _t(self, a: np.ndarray):
        return self._tvm.runtime.tensor(np.ascontiguousarray(a))

    def _w(self, name: str) -> list:
        """Function inputs for ``name``, converted once and kept (resident weights)."""
        w = self._resident.get(name)
        if w is None:
            w = [self._t(a) for a in self.source.arrays(name)]
            self._resident[name] = w
        return w

    def _attn_weights(self, p: str) -> list:
        c = self.cfg
        ws = self._w(p + "attn_norm.weight")
        for r in ("q", "k", "v", "output"):
            ws = ws + self._w(p + f"attn_{r}.weight")
        if c.qkv_bias:
            for r in "qkv":
                ws = ws + self._w(p + f"attn_{r}.bias")
        if c.qk_norm:
            ws = ws + self._w(p + "attn_q_norm.weight") + self._w(p + "attn_k_norm.weight")
        return ws

    def _moe(self, i: int, x_t, x: np.ndarray) -> np.ndarray:
        c, p = self.cfg, f"blk.{i}."
        h = self._fn("ffn_norm")(x_t, *self._w(p + "ffn_norm.weight")).numpy()
        h_t = self._t(h)
        logits = self._fn("router", self.layer_variants[i])(
            h_t, *self._w(p + "ffn_gate_inp.weight")
        ).numpy()
        idx, wts = route(c, logits)
        out = x.copy()
        experts = np.unique(idx)
        cache = self.expert_cache
        if cache is not None:  # experts on flash: start reads, read ahead the next layer's
            nxt = route(c, self._router_logits(i + 1, x_t))[0] if i + 1 < c.n_layers else None
            tensors = cache.fetch(i, experts, nxt)
        for e in experts:
            rows, slot = np.nonzero(idx == e)
            self.expert_counts[i, e] += len(rows)
            if cache is not None:
                ws = tensors[int(e)]
            else:
                ws = []
                for proj in ("gate", "up", "down"):
                    ws += self._w(expert_name(i, proj, int(e)))
            y = self._fn("expert", self.expert_variants[i][int(e)])(self._t(h[rows]), *ws).numpy()
            out[rows] += wts[rows, slot][:, None] * y
        if c.shared_expert_ffn_dim:
            ws = self._w(p + "ffn_gate_inp_shexp.weight")
            for proj in ("gate", "up", "down"):
                ws = ws + self._w(p + f"ffn_{proj}_shexp.weight")
            out += self._fn("shared_expert", self.layer_variants[i])(h_t, *ws).numpy()
        return out

    def _router_logits(self, i: int, x_t) -> np.ndarray:
        """Layer ``i``'s router on the residual stream ``x_t`` before it (the stream changes
        little per layer): a guess at the experts layer ``i`` will want."""
        p = f"blk.{i}."
        h = self._fn("ffn_norm")(x_t, *self._w(p + "ffn_norm.weight"))
        return self._fn("router", self.layer_variants[i])(
            h, *self._w(p + "ffn_gate_inp.weight")
        ).numpy()

    def _forward_native(self, x, cos, sin, last_only: bool) -> np.ndarray:
        """Every layer and the head in C, MAX_BATCH tokens per call (the kernels' tables of a
        chunk stay small; fewer where the DRAM plan sized the scratch for fewer)."""
        from edgert.runtime.kernels import MAX_BATCH

        batch = getattr(self.dram_plan, "batch", 0) or MAX_BATCH
        prof, n, out = self.profiler, x.shape[0], []
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
                cos[s:e],
                sin[s:e],
                threads=0,
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

    def forward(self, tokens, *, last_only: bool = False) -> np.ndarray:
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n, t = len(tokens), self.pos
        if n == 0:
            raise EdgertError("no tokens to evaluate")
        if t + n > self.max_ctx:
            raise EdgertError(f"sequence of {t + n} tokens exceeds the context of {self.max_ctx}")
        batch = getattr(self.dram_plan, "batch", 0)
        if self.native is None and batch and n > batch:  # the plan's scratch holds `batch` tokens
            outs = [
                self.forward(tokens[s : s + batch], last_only=last_only) for s in range(0, n, batch)
            ]
            return outs[-1] if last_only else np.concatenate(outs)
        x = self.source.embedding(tokens).astype(np.float32)
        cos, sin = rope_tables(c, np.arange(t, t + n))
        if self.native is not None:
            return self._forward_native(x, cos, sin, last_only)
        if self.expert_cache is not None:
            self.expert_cache.stats.calls += 1
            self.expert_cache.stats.tokens += n
        mask = np.zeros((n, t + n), np.float32)
        mask[:, t:] = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        cos_t, sin_t, mask_t = self._t(cos), self._t(sin), self._t(mask)
        prof = self.profiler
        t_op = time.perf_counter() if prof is not None else 0.0
        for i in range(c.n_layers):
            p = f"blk.{i}."
            out = self._fn("attn", self.layer_variants[i])(
                self._t(x),
                cos_t,
                sin_t,
                mask_t,
                self._t(self.k_cache[i, :t]),
                self._t(self.v_cache[i, :t]),
                *self._attn_weights(p),
            )
            x_t = out[0]
            self.k_cache[i, t : t + n] = out[1].numpy()
            self.v_cache[i, t : t + n] = out[2].numpy()
            if prof is not None:
                t_op = prof.add(i, "attention", t_op)
            if c.is_moe:
                x = self._moe(i, x_t, x_t.numpy())
            else:
                ws = self._w(p + "ffn_norm.weight")
                for r in ("gate", "up", "down"):
                    ws = ws + self._w(p + f"ffn_{r}.weight")
                x = self._fn("ffn", self.layer_variants[i])(x_t, *ws).numpy()
            if prof is not None:
                t_op = prof.add(i, "moe" if c.is_moe else "ffn", t_op)
        self.pos += n
        xs = x[-1:] if last_only else x
        logits = self._fn("head")(
            self._t(xs), *self._w("output_norm.weight"), *self._w(self.head_name)
        ).numpy()
        if prof is not None:
            prof.add(None, "head", t_op)
        return logits[0] if last_only else logits
