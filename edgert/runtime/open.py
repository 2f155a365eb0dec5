"""Open what the user points at as a language model: an artifact (the C forward pass on its
weights, within a DRAM budget) or, on a workstation, a model file (the numpy reference on its
float weights; that needs the compiler's frontends).

An engine has ``forward(tokens, last_only=False) -> logits``, ``reset()``, ``pos``,
``tokenizer`` (:class:`edgert.runtime.engine.LanguageModel`).
"""

from __future__ import annotations

from pathlib import Path

from edgert.errors import EdgertError
from edgert.format import kvcache, names
from edgert.format.kvcache import DEFAULT as DEFAULT_KV
from edgert.runtime.cpu import cpu_features
from edgert.settings import init_threads


def open_artifact_engine(
    path,
    *,
    max_ctx: int | None = None,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
    kv_cache: str | None = None,
):
    """Load an artifact (schema, target and resident checksums verified) as a
    :class:`~edgert.runtime.engine.CompiledEngine`.
    ``dram_budget`` (bytes): weights, KV cache and scratch fit in it — the layers that do not fit
    stream from flash each step (dense models; see edgert.plan.dram, edgert.runtime.streamer). None: the budget the
    artifact was compiled for, if any (and its context as the default ``max_ctx``); 0: no budget.
    A mixture of experts keeps its experts on flash and caches what the budget holds
    (edgert.runtime.experts); ``experts``: the cache's options (``policy``, ``predictor``,
    ``prefetch``). ``ffn``: ``sparsity`` (one the artifact was calibrated for; None: dense) and
    ``window`` (tokens a neuron stays cached idle; 0: as long as the budget allows) run a dense
    model's FFN on its active neurons, their bundles read from flash (edgert.runtime.neurons).
    ``kv_cache``: how the KV cache holds keys and values (edgert.format.kvcache: ``q8``,
    ``q8,q4`` ...); None: the compiled plan's, else float32 unless the budget is too small for
    it (then f16 or q8, :func:`plan_run`)."""
    from edgert.format.artifact import Artifact
    from edgert.plan.sizes import MAX_BATCH, embedding_by_rows
    from edgert.plan.sparse import ffn_tensors
    from edgert.runtime.engine import CompiledEngine
    from edgert.runtime.tokenizer import Tokenizer
    from edgert.runtime.weights import ArtifactSource

    # checksums are verified as the engine reads its weights, then for whatever it did not read
    art = Artifact.open(path, verify_resident=False)
    if art.manifest.get("kind") == "onnx":
        raise EdgertError(
            f"{art.path} is a compiled ONNX model, not a language model",
            "run it with `edgert run ART --input FILE.npy`",
        )
    art.check_target(features=cpu_features())  # before its library is loaded
    init_threads()  # a big.LITTLE CPU: its big cores, before the kernels' pool starts
    cfg = art.config()
    plan = art.manifest.get("plan", {})
    tok = Tokenizer.of_artifact(art)
    compiled = art.manifest.get("dram")
    if dram_budget is None and compiled:
        dram_budget, max_ctx = compiled["budget"], max_ctx or compiled["ctx"]
    max_ctx = int(max_ctx or min(cfg.context_length, 4096))
    if not 0 < max_ctx <= cfg.context_length:  # its KV cache would be sized by the request
        raise EdgertError(
            f"--ctx {max_ctx}: this model's context is {cfg.context_length} tokens",
            f"use --ctx 1..{cfg.context_length}",
        )
    sparsity = (ffn or {}).get("sparsity")
    if sparsity is not None and cfg.is_moe:
        raise EdgertError(
            "--sparsity runs dense models (a mixture of experts streams its experts)",
            "run it without --sparsity",
        )

    # the cache's types: as asked, else the compiled plan's, else what the budget's plan chose
    if kv_cache is None and compiled and (dram_budget, max_ctx) == (
        compiled["budget"], compiled["ctx"]
    ):  # fmt: skip
        kv_cache = compiled.get("kv_cache")
    budget = int(dram_budget or 0) or None
    kv, run_plan = plan_run(
        art, cfg, max_ctx=max_ctx, budget=budget, kv_cache=kv_cache, experts=experts, ffn=ffn
    )
    dram = moe = sparse = None
    streamed: set[str] = set()
    if sparsity is not None:
        sparse = run_plan
        streamed = ffn_tensors(cfg)
    elif budget and cfg.is_moe:
        moe = run_plan
        if moe.streams:
            streamed = {
                n for i in range(cfg.n_layers) for e in range(cfg.n_experts)
                for n in names.expert_tensors(i, e)
            }  # fmt: skip
    elif budget:
        dram = run_plan
        streamed = {names.weight(i, p) for i in dram.streamed for p in names.PROJECTIONS}
    rows = embedding_by_rows(art, budget)  # the plans above left it out of the budget too
    engine = CompiledEngine(
        str(art.library("model")),
        cfg,
        ArtifactSource(art, streamed=streamed, embedding_rows=rows),
        tokenizer=tok,
        max_ctx=max_ctx,
        head_name=plan.get("head"),
        batch=getattr(dram or moe or sparse, "batch", 0) or MAX_BATCH,
        kv=kv,
    )
    engine.dram_plan = dram or moe or sparse
    # streamed tensors are verified on their first read; the others now, before the caches
    # below take their memory (a buffer is read whole to be checked)
    art.verify(residency="resident", skip=streamed, pieces={names.EMBEDDING} if rows else ())
    if sparse is not None:
        from edgert.runtime.neurons import NeuronCache

        engine.neurons = NeuronCache(art, cfg, sparse)
        engine.native.set_sparse(engine.neurons)
    if moe is not None and moe.streams:
        from edgert.runtime.experts import ExpertCache

        engine.expert_cache = ExpertCache(
            art, cfg, moe, engine.native.expert_weights, **(experts or {})
        )
        engine.native.set_experts(engine.expert_cache)
    if dram is not None and dram.streamed:
        from edgert.runtime.streamer import LayerStreamer

        engine.streamer = LayerStreamer(art, dram, engine.native)
    return engine


def plan_run(
    art, cfg, *, max_ctx: int, budget: int | None, kv_cache: str | None = None,
    experts: dict | None = None, ffn: dict | None = None,
):  # fmt: skip
    """The KV cache's types and the plan of a run of ``art`` (None without a budget or
    sparsity): a sparse FFN's window cache where ``ffn`` gives a sparsity, a mixture's expert
    cache or a dense model's streamed layers under ``budget``. ``kv_cache`` as asked (refused
    for heads the quantized types cannot hold); None: float32, unless the budget is below the
    float32 plan's minimum — then f16, else q8 (:func:`edgert.format.kvcache.choose`)."""
    sparsity = (ffn or {}).get("sparsity")

    def make(kv):
        if sparsity is not None:
            return sparse_plan(
                art, cfg, max_ctx=max_ctx, budget=budget, sparsity=float(sparsity),
                window=int((ffn or {}).get("window") or 0), gap_bytes=(ffn or {}).get("gap_bytes"),
                kv=kv,
            )  # fmt: skip
        if budget and cfg.is_moe:
            return moe_plan(art, cfg, max_ctx=max_ctx, budget=budget, experts=experts, kv=kv)
        if budget:
            return dense_plan(art, cfg, max_ctx=max_ctx, budget=budget, kv=kv)
        return None

    if kv_cache is not None or not budget:
        kv = kvcache.parse(kv_cache)
        kvcache.check_heads(kv, cfg.head_dim)
        return kv, make(kv)
    return kvcache.choose(make, cfg.head_dim)


def dense_plan(art, cfg, *, max_ctx: int, budget: int | None, kv=None):
    """A dense model's DRAM plan for ``budget`` (edgert.plan.dram), read sizes from the flash of
    the artifact's target."""
    from edgert.format.target import target_flash
    from edgert.plan.dram import plan_dram
    from edgert.plan.sizes import flash_chunk

    return plan_dram(
        art, cfg, max_ctx=max_ctx, budget=budget, chunk=flash_chunk(target_flash(art)),
        kv=kv or DEFAULT_KV,
    )  # fmt: skip


def moe_plan(
    art, cfg, *, max_ctx: int, budget: int | None, experts: dict | None = None, kv=None
):  # fmt: skip
    """A mixture's expert cache for ``budget`` (edgert.plan.moe), with the compiler's routing
    trace replayed through a cache of ``experts``' options."""
    from edgert.format.target import target_flash
    from edgert.plan.moe import plan_moe
    from edgert.plan.sizes import flash_chunk

    return plan_moe(
        art, cfg, max_ctx=max_ctx, budget=budget, chunk=flash_chunk(target_flash(art)),
        cache=experts, trace=art.record(names.ROUTING_TRACE), kv=kv or DEFAULT_KV,
    )  # fmt: skip


def sparse_plan(
    art, cfg, *, max_ctx: int, budget: int | None, sparsity: float, window: int = 0,
    gap_bytes: int | None = None, kv=None,
):  # fmt: skip
    """The window cache of ``--sparsity`` for ``budget`` (edgert.plan.sparse), with the
    compiler's activity trace replayed; ``gap_bytes``: the gap reads join across (None: what the
    target's flash moves in one latency)."""
    from edgert.format.target import target_flash
    from edgert.plan.sizes import flash_chunk, flash_gap
    from edgert.plan.sparse import plan_sparse

    flash = target_flash(art)
    levels = art.record(names.ACTIVITY_TRACE)
    trace = None
    if levels is not None:
        trace = {"levels": levels["levels"], "order": art.read_tensor(names.BUNDLE_INDEX)["order"]}
    return plan_sparse(
        art, cfg, max_ctx=max_ctx, budget=budget, sparsity=sparsity, window=window,
        chunk=flash_chunk(flash), gap_bytes=flash_gap(flash) if gap_bytes is None else gap_bytes,
        trace=trace, kv=kv or DEFAULT_KV,
    )  # fmt: skip


def open_engine(
    path: str | Path,
    *,
    max_ctx: int | None = None,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
    kv_cache: str | None = None,
):
    """An artifact's CompiledEngine, or a ReferenceEngine over a GGUF file / HF directory;
    ``dram_budget`` (bytes) applies to artifacts only; ``kv_cache`` to both."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgertError(
            f"no such file or directory: {p}", "check the path, or `edgert pull NAME`"
        )
    if p.is_dir() and (p / "manifest.json").exists():
        return open_artifact_engine(
            p, max_ctx=max_ctx, dram_budget=dram_budget, experts=experts, ffn=ffn,
            kv_cache=kv_cache,
        )  # fmt: skip
    if dram_budget or ffn:
        raise EdgertError(
            "--dram-budget and --sparsity apply to compiled artifacts",
            f"compile {p.name} with `edgert compile`",
        )
    try:
        from edgert.compiler.frontends import load_model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgertError(
            "running model files needs the compiler extra", "pip install 'edgert[compiler]'"
        ) from e
    from edgert.runtime.reference import ReferenceEngine

    model = load_model(p)
    model.materialize()
    return ReferenceEngine(model, max_ctx=max_ctx, kv_cache=kv_cache)
