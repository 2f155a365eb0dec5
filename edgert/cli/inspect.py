from __future__ import annotations

HELP = "describe an artifact: target, sizes by residency, bits per layer, roofline prediction"


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget

    add_dram_budget(p, experts=False)
    p.add_argument("--ctx", type=int, default=None, help="context for the plan (model's, max 4096)")
    p.add_argument(
        "--prompt", type=int, default=512, metavar="N",
        help="prompt length for the time-to-first-token prediction (default 512)",
    )  # fmt: skip
    p.add_argument(
        "--board", action="append", default=[], metavar="TARGET",
        help="also predict decode and time to first token on this target's board, planned for "
        "its DRAM (or --dram-budget where given; repeatable: --board rpi5 --board "
        "jetson-orin-nano)",
    )  # fmt: skip


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
    for d in info.get("pinned", []):
        print(f"input      {TensorSpec.from_dict(d).describe()} compiled in as {d['value']}")
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
    from edgert.measure.inspect import inspect_artifact

    info = inspect_artifact(
        args.artifact,
        dram_budget=dram_budget(args),
        ctx=args.ctx,
        sparsity=args.sparsity,
        prompt=args.prompt,
        boards=tuple(args.board),
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
    bpw = info.get("bits_per_weight")
    stored = f"{bpw:.2f} bits/weight stored (nominal {info['avg_bits']:.2f})" if bpw else (
        f"{info['avg_bits']:.2f} bits/weight average"
    )
    how = f", {info['quant_method']}" if info.get("quant_method") else ""
    if info.get("quant_method") == "keep":  # each tensor as the GGUF stored it
        how += " (" + ", ".join(f"{k} x{n}" for k, n in info["tensors_by_method"].items()) + ")"
    groups = "/".join(str(g) for g in info["group_sizes"] if g)
    fmt = f"{info['format']} g{groups}" if groups else "8-bit rows"
    print(
        f"weights    {fmt}{how}, {stored}; resident "
        f"{info['bytes']['resident'] / 2**20:.1f} MiB, streamed "
        f"{info['bytes']['streamed'] / 2**20:.1f} MiB"
    )
    q = info.get("quality")
    if q:
        print(
            f"quality    KL {q['kl']:.3g} nats/token, top-1 agreement {100 * q['top1']:.1f}% "
            f"vs the float model ({q['tokens']} held-back tokens)"
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
    elif info.get("no_prediction"):
        print(f"predicted  none: {info['no_prediction']}")
    d = info.get("dram")
    if d and "n_experts" in d and not d["streams"]:
        print(
            f"DRAM plan  {_budget(d)}: all {d['n_experts']} experts resident "
            f"({d['expert_bytes'] / 1e6:.2f} MB each), plan {d['planned'] / 1e6:.1f} MB"
        )
    elif d and "n_experts" in d:
        r = d["replayed"]
        how = (
            "routing assumed uniform" if r is None
            else f"the compiled routing trace replayed, {r['steps']} decode steps"
        )  # fmt: skip
        print(
            f"DRAM plan  {_budget(d)}: {d['slots']} of "
            f"{d['n_experts']} experts cached ({d['expert_bytes'] / 1e6:.2f} MB each), plan "
            f"{d['planned'] / 1e6:.1f} MB, minimum {d['minimum'] / 1e6:.1f} MB; "
            f"{d['streamed_bytes_per_token'] / 1e6:.1f} MB per token from flash at a hit rate "
            f"of {d['expected_hit_rate']:.0%} ({how})"
        )
    elif d:
        budget = _budget(d)
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
    pf = (p or {}).get("prefill")
    if pf:
        print(
            f"cost model {pf['ttft_s']:.2f} s to the first token of a {pf['n_prompt']}-token "
            f"prompt on {pf['device']} ({pf['tok_s']:.0f} tok/s prefill: "
            f"{pf['macs'] / 1e9:.1f} G multiply-adds at {pf['gmacs_per_s']:g} G/s)"
        )
    if info.get("dram_refused"):
        print(f"DRAM plan  none on the target's DRAM: {info['dram_refused']}")
    for b in info["boards"]:
        if "refused" in b:
            print(f"board      {b['board']} ({b['dram_bytes'] / 2**30:.0f} GiB): {b['refused']}")
            continue
        c, pf = b["cost_model"], b["prefill"]
        ttft = f", {pf['ttft_s']:.2f} s to the first token of {pf['n_prompt']}" if pf else ""
        budget = "no budget" if b["budget"] is None else f"budget {b['budget'] / 1e9:.2f} GB"
        print(
            f"board      {b['board']} ({b['dram_bytes'] / 2**30:.0f} GiB, {budget}): "
            f"{c['tok_s']:.2f} tok/s decode ({c['bound']}-bound: DRAM "
            f"{c['dram_bytes_per_token'] / 1e6:.0f} MB in {c['dram_seconds'] * 1e3:.0f} ms, "
            f"flash {c['flash_bytes_per_token'] / 1e6:.0f} MB in "
            f"{c['flash_seconds'] * 1e3:.0f} ms per token){ttft}"
        )
    return 0


def _budget(d: dict) -> str:
    """A plan's budget, where it came from and the KV cache it counts, for the DRAM plan line."""
    if d["budget"] is None:
        return "no budget"
    how = {"compiled": " (compiled)", "board dram": " (the target's DRAM)"}
    return (
        f"budget {d['budget'] / 1e6:.1f} MB" + how.get(d["budget_from"], "")
        + f", KV cache {d['kv_cache']}"
    )  # fmt: skip
