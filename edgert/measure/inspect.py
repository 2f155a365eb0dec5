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
) -> dict:
    """What `edgert inspect` shows, as a dict (no checksum verification: it only reads).
    Dense models: the DRAM plan for ``dram_budget`` (default: the compiled one) at ``ctx`` and
    the cost model's decode prediction on the artifact's target; every language model: its
    time to the first token of a ``prompt``-token prompt there."""
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
    from edgert.format.target import find_target

    # no prediction where the target's file is not on this machine (a user's own target,
    # inspected elsewhere); a broken target file or a failing prediction is an error
    name = art.target.get("name")
    t = find_target(name) if name else None
    if t is None:
        info["prediction"] = None
        info["no_prediction"] = (
            f"target {name} is not defined on this machine (add its file as "
            f"~/.config/edgert/targets/{name}.toml)"
            if name
            else "the artifact names no target"
        )
    else:
        from edgert.plan.sizes import resident_besides, touched_per_step

        # what a dense step reads: the resident tensors but the embedding table, unless it is
        # the head (bundles only with --sparsity)
        per_token = touched_per_step(art, resident_besides(art, ()))
        info["prediction"] = {
            "weight_bytes_per_token": per_token,
            "dram_bandwidth_gbs": t.dram_bandwidth_gbs,
            "roofline_tok_s": t.dram_bandwidth_gbs * 1e9 / per_token,
            "dram_fits": per_token < t.dram_bytes,
        }
    cfg = art.config()
    compiled = m.get("dram") or {}
    ctx = int(ctx or compiled.get("ctx") or min(cfg.context_length, 4096))
    from edgert.plan.cost import DeviceFigures, predict_decode, predict_prefill
    from edgert.runtime.open import dense_plan, moe_plan, sparse_plan

    plan = None
    if cfg.is_moe and dram_budget:
        plan = moe_plan(art, cfg, max_ctx=ctx, budget=dram_budget)
        info["dram"] = {**plan.to_dict(), "compiled": False}
    if not cfg.is_moe:
        if dram_budget is None:
            dram_budget = compiled.get("budget")
        plan = dense_plan(art, cfg, max_ctx=ctx, budget=dram_budget or None)
        info["dram"] = {**plan.to_dict(), "compiled": bool(compiled)}
    if t is not None:
        fig = DeviceFigures.from_target(t)
        if plan is not None:
            info["prediction"]["cost_model"] = predict_decode(plan, fig, pos=ctx // 2).to_dict()
        info["prediction"]["prefill"] = predict_prefill(cfg, fig, n_prompt=min(prompt, ctx))
    sp = m.get("sparse_ffn")
    if sp:
        info["sparse_ffn"] = {k: sp[k] for k in ("bits", "group", "sparsities", "calib_tokens")}
        info["sparse_ffn"]["bundle_bytes"] = sum(
            art.tensors[names.bundles(i)]["nbytes"] for i in range(cfg.n_layers)
        )
    if m.get("moefy"):
        info["moefy"] = m["moefy"]
    if sparsity is not None:
        sparse = sparse_plan(art, cfg, max_ctx=ctx, budget=dram_budget or None, sparsity=sparsity)
        info["sparse_plan"] = sparse.to_dict()
        if t is not None:
            fig = DeviceFigures.from_target(t)
            info["sparse_plan"]["cost_model"] = predict_decode(sparse, fig, pos=ctx // 2).to_dict()
    return info


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
        "outputs": g["outputs"],
        "ops": g.get("ops", {}),
        "weights": m.get("quant", {}).get("weights"),
        "quantized_tensors": len(m.get("quant", {}).get("quantized_tensors", [])),
        "bytes": {"resident": art.nbytes("resident"), "streamed": art.nbytes("streamed")},
        "tensors": len(art.tensors),
    }
