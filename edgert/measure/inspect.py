"""What an artifact is and what it is predicted to do: its target, sizes by residency, bits per
layer, the DRAM plan for a budget and the cost model's decode speed on its target (``edgert
inspect``; no checksum verification: it only reads the manifest and the compiler's records)."""

from __future__ import annotations


def inspect_artifact(
    path,
    *,
    dram_budget: int | None = None,
    ctx: int | None = None,
    sparsity: float | None = None,
    prompt: int = 512,
    boards: tuple[str, ...] = (),
) -> dict:
    """What `edgert inspect` shows, as a dict (no checksum verification: it only reads).
    Language models: the DRAM plan (dense: layers streamed; a mixture: experts cached) for
    ``dram_budget`` (default: the compiled one, else the target's DRAM where the model does not
    fit it) at ``ctx``, the cost model's decode prediction and time to the first token of a
    ``prompt``-token prompt on the artifact's target, and the same on each of ``boards`` (target
    names), planned for that board's DRAM."""
    from edgert.format import names
    from edgert.format.artifact import Artifact

    art = Artifact.open(path, verify_resident=False)
    m = art.manifest
    if m.get("kind") == "onnx":
        return inspect_onnx(art)
    by_res = {r: art.nbytes(r) for r in ("resident", "streamed")}
    q = m.get("quant", {})
    bits_by_layer = [v for v in m.get("plan", {}).get("layer_variants", [])]
    info = {
        "path": str(art.path),
        "schema": m["schema"],
        "edgert_version": m.get("edgert_version"),
        "tvm_version": m.get("tvm_version"),
        "target": art.target,
        "model": {
            k: m["model"][k]
            for k in (
                "arch",
                "name",
                "n_layers",
                "dim",
                "n_heads",
                "n_kv_heads",
                "ffn_dim",
                "vocab_size",
                "n_experts",
                "n_experts_used",
            )
        },
        "format": q.get("format"),
        "group_size": q.get("group_size"),
        "group_sizes": q.get("group_sizes") or [q.get("group_size")],
        "tensors_by_method": q.get("tensors_by_method", {}),
        "avg_bits": q.get("avg_bits"),
        "bits_per_weight": q.get("bits_per_weight"),
        "quant_method": q.get("method"),
        "quality": q.get("quality"),
        "bits_per_unit": q.get("units", {}),
        "layer_variants": bits_by_layer,
        "bytes": by_res,
        "tensors": len(art.tensors),
    }
    from edgert.format.target import find_target, load_target
    from edgert.plan.cost import DeviceFigures, predict_decode, predict_prefill

    # no prediction where the target's file is not on this machine (a user's own target,
    # inspected elsewhere); a broken target file or a failing prediction is an error
    name = art.target.get("name")
    t = find_target(name) if name else None
    cfg = art.config()
    compiled = m.get("dram") or {}
    ctx = int(ctx or compiled.get("ctx") or min(cfg.context_length, 4096))
    from edgert.errors import EdgertError
    from edgert.format import kvcache

    try:
        plan, budget_from, kv = _plan(art, cfg, ctx, dram_budget, t)
    except EdgertError as e:
        if dram_budget:  # the user's own budget: their error
            raise
        plan, budget_from, kv = None, None, None  # the target's DRAM is below the minimum
        info["dram_refused"] = str(e)
    if plan is not None:
        info["dram"] = {**plan.to_dict(), "compiled": budget_from == "compiled",
                        "budget_from": budget_from, "kv_cache": kvcache.name(kv)}  # fmt: skip
    if t is None:
        info["prediction"] = None
        info["no_prediction"] = (
            f"target {name} is not defined on this machine (add its file as "
            f"~/.config/edgert/targets/{name}.toml)"
            if name
            else "the artifact names no target"
        )
    else:
        # what a step reads from DRAM: the plan's figure (a mixture: its top-k experts per
        # layer, not every expert), else the resident tensors but the embedding table
        from edgert.plan.sizes import resident_besides, touched_per_step

        per_token = (
            plan.weight_bytes_per_token
            if plan is not None
            else touched_per_step(art, resident_besides(art, ()))
        )
        fig = DeviceFigures.from_target(t)
        info["prediction"] = {
            "weight_bytes_per_token": per_token,
            "dram_bandwidth_gbs": t.dram_bandwidth_gbs,
            "roofline_tok_s": t.dram_bandwidth_gbs * 1e9 / per_token,
            "dram_fits": art.nbytes("resident") + art.nbytes("streamed") < t.dram_bytes,
            "cost_model": predict_decode(plan, fig, pos=ctx // 2).to_dict() if plan else None,
            "prefill": predict_prefill(cfg, fig, n_prompt=min(prompt, ctx)),
        }
    info["boards"] = [
        _on_board(art, cfg, load_target(b), ctx=ctx, budget=dram_budget, prompt=prompt)
        for b in boards
    ]
    sp = m.get("sparse_ffn")
    if sp:
        info["sparse_ffn"] = {k: sp[k] for k in ("bits", "group", "sparsities", "calib_tokens")}
        info["sparse_ffn"]["bundle_bytes"] = sum(
            art.tensors[names.bundles(i)]["nbytes"] for i in range(cfg.n_layers)
        )
    if m.get("moefy"):
        info["moefy"] = m["moefy"]
    if sparsity is not None:
        from edgert.runtime.open import sparse_plan

        sparse = sparse_plan(art, cfg, max_ctx=ctx, budget=dram_budget or None, sparsity=sparsity)
        info["sparse_plan"] = sparse.to_dict()
        if t is not None:
            fig = DeviceFigures.from_target(t)
            info["sparse_plan"]["cost_model"] = predict_decode(sparse, fig, pos=ctx // 2).to_dict()
    return info


def _plan(art, cfg, ctx: int, budget: int | None, board, *, compiled_budget: bool = True):
    """``(plan, where its budget came from, KV cache types)`` of a prediction for ``board`` (a
    target, or None): ``budget`` (``--dram-budget``; 0: off), else the one the artifact was
    compiled for (with its KV cache types; not with ``compiled_budget=False``), else the board's
    DRAM where the whole model does not fit it (as ``bench --emulate`` plans it), else none. Under a budget the KV cache is what a
    run takes (edgert.runtime.open.plan_run: float32 unless the budget is tight)."""
    from edgert.format import kvcache
    from edgert.runtime.open import dense_plan, moe_plan, plan_run

    make = moe_plan if cfg.is_moe else dense_plan
    compiled = (art.manifest.get("dram") or {}) if compiled_budget else {}
    how, kv_cache = "option", None
    if budget == 0:
        return make(art, cfg, max_ctx=ctx, budget=None), None, kvcache.DEFAULT
    if not budget and compiled.get("budget"):
        budget, how = compiled["budget"], "compiled"
        if ctx == compiled.get("ctx"):
            kv_cache = compiled.get("kv_cache")
    elif not budget:
        plan = make(art, cfg, max_ctx=ctx, budget=None)
        if board is None or plan.planned <= board.dram_bytes:
            return plan, None, kvcache.DEFAULT
        budget, how = board.dram_bytes, "board dram"
    kv, plan = plan_run(art, cfg, max_ctx=ctx, budget=budget, kv_cache=kv_cache)
    return plan, how, kv


def _on_board(art, cfg, board, *, ctx: int, budget: int | None, prompt: int) -> dict:
    """The cost model's decode and prefill on ``board`` (a target) for this artifact, planned
    for ``budget`` where given, else for the board's own DRAM (not the budget the artifact was
    compiled for); a board whose DRAM is below the plan's minimum says so."""
    from edgert.errors import EdgertError
    from edgert.format import kvcache
    from edgert.plan.cost import DeviceFigures, predict_decode, predict_prefill

    fig = DeviceFigures.from_target(board)
    out = {"board": board.name, "description": board.description,
           "dram_bytes": board.dram_bytes}  # fmt: skip
    try:
        plan, how, kv = _plan(art, cfg, ctx, budget, board, compiled_budget=False)
    except EdgertError as e:
        return {**out, "refused": str(e)}
    return {
        **out,
        "budget": plan.budget,
        "budget_from": how,
        "kv_cache": kvcache.name(kv),
        "cost_model": predict_decode(plan, fig, pos=ctx // 2).to_dict(),
        "prefill": predict_prefill(cfg, fig, n_prompt=min(prompt, ctx)),
    }


def inspect_onnx(art) -> dict:
    m = art.manifest
    g = m["graph"]
    return {
        "path": str(art.path),
        "kind": "onnx",
        "schema": m["schema"],
        "edgert_version": m.get("edgert_version"),
        "tvm_version": m.get("tvm_version"),
        "target": art.target,
        "source": m.get("source"),
        "inputs": g["inputs"],
        "pinned": g.get("pinned", []),
        "outputs": g["outputs"],
        "ops": g.get("ops", {}),
        "weights": m.get("quant", {}).get("weights"),
        "quantized_tensors": len(m.get("quant", {}).get("quantized_tensors", [])),
        "bytes": {"resident": art.nbytes("resident"), "streamed": art.nbytes("streamed")},
        "tensors": len(art.tensors),
    }
