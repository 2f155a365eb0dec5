from __future__ import annotations

HELP = "describe an artifact: target, sizes by residency, bits per layer, roofline prediction"


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget

    add_dram_budget(p, experts=False)
    p.add_argument("--ctx", type=int, default=None, help="context for the plan (model's, max 4096)")


def inspect_artifact(
    path, *, dram_budget: int | None = None, ctx: int | None = None, sparsity: float | None = None
) -> dict:
    """What `edgert inspect` shows, as a dict (no checksum verification: it only reads).
    Dense models: the DRAM plan for ``dram_budget`` (default: the compiled one) at ``ctx`` and
    the cost model's decode prediction on the artifact's target."""
    from edgert.format import names
    from edgert.format.artifact import Artifact

    art = Artifact.open(path, verify_resident=False)
    m = art.manifest
    if m.get("kind") == "onnx":
        return _inspect_dnn(art)
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
        "avg_bits": q.get("avg_bits"),
        "bits_per_unit": q.get("units", {}),
        "layer_variants": bits_by_layer,
        "bytes": by_res,
        "tensors": len(art.tensors),
    }
    try:
        from edgert.format.target import load_target

        t = load_target(art.target["name"])
        per_token = by_res["resident"]  # what a dense step reads (bundles only with --sparsity)
        info["prediction"] = {
            "weight_bytes_per_token": per_token,
            "dram_bandwidth_gbs": t.dram_bandwidth_gbs,
            "roofline_tok_s": t.dram_bandwidth_gbs * 1e9 / per_token,
            "dram_fits": per_token < t.dram_bytes,
        }
    except Exception:  # target file not on this machine: no prediction
        t, info["prediction"] = None, None
    cfg = art.config()
    compiled = m.get("dram") or {}
    ctx = int(ctx or compiled.get("ctx") or min(cfg.context_length, 4096))
    from edgert.plan.cost import DeviceFigures, predict_decode
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
    if t is not None and plan is not None:
        fig = DeviceFigures.from_target(t)
        info["prediction"]["cost_model"] = predict_decode(plan, fig, pos=ctx // 2).to_dict()
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


def _inspect_dnn(art) -> dict:
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


def _print_dnn(info: dict) -> None:
    from edgert.runtime.onnx import TensorSpec, format_bytes

    t = info["target"]
    print(
        f"artifact   {info['path']}  (ONNX; schema {info['schema']}, edgert "
        f"{info['edgert_version']}, TVM {info['tvm_version']})"
    )
    print(f"target     {t.get('name')}  {t.get('triple')}  {t.get('tvm_target')}")
    src = info.get("source") or {}
    print(f"source     {src.get('path')}  (opset {src.get('opset')})")
    for d in info["inputs"]:
        print(f"input      {TensorSpec.from_dict(d).describe()}")
    for d in info["outputs"]:
        print(f"output     {TensorSpec.from_dict(d).describe()}")
    print(
        f"weights    {info['weights']}, {info['tensors']} tensors "
        f"({info['quantized_tensors']} quantized), {format_bytes(info['bytes']['resident'])}"
    )
    ops = info["ops"]
    print("operators  " + ", ".join(f"{k} x{v}" for k, v in ops.items()))


def run(args) -> int:
    from edgert.cli.common import dram_budget, print_json

    info = inspect_artifact(
        args.artifact, dram_budget=dram_budget(args), ctx=args.ctx, sparsity=args.sparsity
    )
    if args.json:
        print_json(info)
        return 0
    if info.get("kind") == "onnx":
        _print_dnn(info)
        return 0
    t = info["target"]
    mdl = info["model"]
    print(
        f"artifact   {info['path']}  (schema {info['schema']}, edgert {info['edgert_version']},"
        f" TVM {info['tvm_version']})"
    )
    print(f"target     {t.get('name')}  {t.get('triple')}  {t.get('tvm_target')}")
    print(
        f"model      {mdl['arch']} {mdl['name']!r}: {mdl['n_layers']} layers, d={mdl['dim']}, "
        f"{mdl['n_heads']}/{mdl['n_kv_heads']} heads, ffn {mdl['ffn_dim']}, vocab "
        f"{mdl['vocab_size']}"
        + (
            f", {mdl['n_experts']} experts (top-{mdl['n_experts_used']})"
            if mdl["n_experts"]
            else ""
        )
    )
    print(
        f"weights    {info['format']} g{info['group_size']}, {info['avg_bits']:.2f} bits/weight"
        f" average; resident {info['bytes']['resident'] / 2**20:.1f} MiB, streamed "
        f"{info['bytes']['streamed'] / 2**20:.1f} MiB"
    )
    lv = info["layer_variants"]
    if lv:
        print("bits/layer " + " ".join(v[1:] for v in lv))
    p = info["prediction"]
    if p:
        print(
            f"predicted  <= {p['roofline_tok_s']:.1f} tok/s decode (DRAM roofline: "
            f"{p['weight_bytes_per_token'] / 2**20:.1f} MiB/token at "
            f"{p['dram_bandwidth_gbs']:g} GB/s)"
        )
    d = info.get("dram")
    if d and "n_experts" in d:
        r = d["replayed"]
        how = (
            "routing assumed uniform" if r is None
            else f"the compiled routing trace replayed, {r['steps']} decode steps"
        )  # fmt: skip
        print(
            f"DRAM plan  budget {d['budget'] / 1e6:.1f} MB: {d['slots']} of "
            f"{d['n_experts']} experts cached ({d['expert_bytes'] / 1e6:.2f} MB each), plan "
            f"{d['planned'] / 1e6:.1f} MB, minimum {d['minimum'] / 1e6:.1f} MB; "
            f"{d['streamed_bytes_per_token'] / 1e6:.1f} MB per token from flash at a hit rate "
            f"of {d['expected_hit_rate']:.0%} ({how})"
        )
    elif d:
        budget = "no budget" if d["budget"] is None else f"budget {d['budget'] / 1e6:.1f} MB"
        if d["compiled"]:
            budget += " (compiled)"
        print(
            f"DRAM plan  {budget} at ctx {d['max_ctx']}: {len(d['streamed'])} of "
            f"{len(d['layer_bytes'])} layers stream ({d['streamed_bytes_per_token'] / 1e6:.1f} MB "
            f"per token), plan {d['planned'] / 1e6:.1f} MB, minimum {d['minimum'] / 1e6:.1f} MB"
        )
    s = info.get("sparse_ffn")
    if s:
        print(
            f"sparse FFN neuron bundles: {s['bits']}-bit g{s['group']}, "
            f"{s['bundle_bytes'] / 2**20:.1f} MiB on flash; --sparsity "
            + ", ".join(f"{x:g}" for x in s["sparsities"])
            + f" (calibrated on {s['calib_tokens']} tokens)"
        )
    mf = info.get("moefy")
    if mf:
        print(
            f"experts    split from dense FFNs (--moefy {mf['experts']}x{mf['top_k']}): the "
            f"router's experts hold {100 * sum(mf['router_share']) / len(mf['router_share']):.1f}% of the FFN "
            f"contribution (best {mf['top_k']}: {100 * sum(mf['oracle_share']) / len(mf['oracle_share']):.1f}%) on "
            f"held-out calibration tokens"
        )
    sp = info.get("sparse_plan")
    if sp:
        print(
            f"sparse plan --sparsity {sp['sparsity']:g}: window cache {sp['slots']} of "
            f"{sp['neurons']} neurons ({sp['slots'] * sp['bundle_bytes'] / 1e6:.1f} MB), plan "
            f"{sp['planned'] / 1e6:.1f} MB, minimum {sp['minimum'] / 1e6:.1f} MB"
        )
        r = sp.get("replayed")
        if r:
            print(
                f"           activity trace replayed ({r['steps']} decode steps): "
                f"{r['active_per_token']:.0f} neurons active per token, "
                f"{100 * r['hit_rate']:.1f}% of them cached, "
                f"{r['bytes_per_token'] / 1e6:.2f} MB in {r['requests_per_token']:.0f} reads "
                "from flash per token"
            )
    # the sparse plan's prediction where --sparsity is given, else the dense or expert plan's
    c = (sp or {}).get("cost_model") or (p or {}).get("cost_model")
    if c:
        print(
            f"cost model {c['tok_s']:.1f} tok/s decode on {c['device']} at half context "
            f"({c['bound']}-bound: DRAM {c['dram_seconds'] * 1e3:.1f} ms, flash "
            f"{c['flash_seconds'] * 1e3:.1f} ms per token)"
        )
    return 0
