"""Flash traffic of FFN sparsity on real text: an artifact compiled with --sparse-ffn reads a text
token by token (each token one decode step, as generation does, but on the text's own tokens so
every setting sees the same sequence) under a DRAM budget, per sparsity and window. Prints, per
setting: flash bytes per token and as a share of all bundles (what reading every neuron would
cost) and of the dense FFN up/down bytes, the window cache's hit rate, active neurons, tok/s.

    .venv/bin/python tools/sparse_flash.py ART.edgert --file tests/data/gpl-3.0.txt \\
        --sparsity 0,0.3,0.5 --window 0,4 --dram-budget 100M -n 256 [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgert.plan.sizes import parse_size
from edgert.runtime.open import open_artifact_engine


def measure(art, tokens, *, sparsity, window, budget, warm, gap):
    ffn = {"sparsity": sparsity, "window": window}
    if gap is not None:
        ffn["gap_bytes"] = gap
    eng = open_artifact_engine(art, max_ctx=len(tokens) + 1, dram_budget=budget, ffn=ffn)
    for t in tokens[:warm]:  # the cache fills; not counted
        eng.forward([t], last_only=True)
    st = eng.stream_stats
    b0, a0, h0, c0 = st.decode_bytes, st.decode_active, st.decode_hits, st.decode_calls
    t0 = time.perf_counter()
    for t in tokens[warm:]:
        eng.forward([t], last_only=True)
    dt = time.perf_counter() - t0
    n = st.decode_calls - c0
    plan = eng.dram_plan
    r = {
        "sparsity": sparsity,
        "window": window,
        "budget": budget,
        "cache_slots": plan.slots,
        "neurons": plan.neurons,
        "tokens": n,
        "flash_bytes_per_token": (st.decode_bytes - b0) / n,
        "all_bundle_bytes": plan.all_bundle_bytes,
        "dense_ffn_bytes": plan.dense_ffn_bytes,
        "hit_rate": (st.decode_hits - h0) / max(st.decode_active - a0, 1),
        "active_fraction": (st.decode_active - a0) / (n * plan.neurons),
        "tok_s": n / dt,
    }
    r["of_bundles"] = r["flash_bytes_per_token"] / r["all_bundle_bytes"]
    r["of_dense_ffn"] = r["flash_bytes_per_token"] / r["dense_ffn_bytes"]
    eng.close()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--file", required=True, help="UTF-8 text read token by token")
    ap.add_argument("--sparsity", default="0.3,0.5", help="comma-separated (calibrated ones)")
    ap.add_argument("--window", default="0", help="comma-separated windows (0: budget-bound)")
    ap.add_argument("--dram-budget", default=None, help="SIZE (default: no budget)")
    ap.add_argument("-n", type=int, default=256, help="tokens measured (256)")
    ap.add_argument("--warm", type=int, default=32, help="tokens read first, not measured (32)")
    ap.add_argument(
        "--gap", type=parse_size, default=None,
        help="read through gaps up to this many bytes (default: the target flash's bytes per "
        "request latency)",
    )  # fmt: skip
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    from edgert.format.artifact import Artifact
    from edgert.runtime.tokenizer import Tokenizer

    tok = Tokenizer.of_artifact(Artifact.open(args.artifact, verify_resident=False))
    tokens = tok.encode(Path(args.file).read_text(encoding="utf-8"))[: args.warm + args.n]
    budget = parse_size(args.dram_budget) if args.dram_budget else None
    rows = []
    print("| sparsity | window | cache neurons | flash MB/token | of bundles | of dense FFN "
          "| hit rate | active | tok/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for s in (float(x) for x in args.sparsity.split(",")):
        for w in (int(x) for x in args.window.split(",")):
            r = measure(
                args.artifact, tokens, sparsity=s, window=w, budget=budget, warm=args.warm,
                gap=args.gap,
            )  # fmt: skip
            rows.append(r)
            print(
                f"| {s:g} | {w or '-'} | {r['cache_slots']} of {r['neurons']} | "
                f"{r['flash_bytes_per_token'] / 1e6:.2f} | {100 * r['of_bundles']:.1f}% | "
                f"{100 * r['of_dense_ffn']:.1f}% | {100 * r['hit_rate']:.1f}% | "
                f"{100 * r['active_fraction']:.0f}% | {r['tok_s']:.1f} |",
                flush=True,
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
