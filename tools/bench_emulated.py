"""The cost model held to emulated runs: each plan (an artifact, a budget, `edgert bench` options)
benchmarked under each target's emulated memory and flash (`edgert bench --emulate`, root, cgroup
v1), the runs of every case taking turns, and its decode speed set beside the prediction the run
itself printed — made from the target files' figures (`targets/*.toml`), none fitted on these
runs. Prints a Markdown table; ``--json-out`` keeps every run.

    .venv/bin/python tools/bench_emulated.py -t 2 -p 16 -n 32 -r 3 --targets rpi5,rpi4 \\
        --case "dense:build/smol4.edgert:100M" \\
        --case "experts:/tmp/smol-m82.edgert:85554432" \\
        --case "sparse:/tmp/smol4s.edgert:100M:--sparsity 0.5"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def bench(art: str, target: str, budget: str, extra: list[str], a) -> dict:
    exe = Path(sys.executable).parent / "edgert"
    cmd = [str(exe) if exe.exists() else "edgert", "bench", art, "--emulate", target,
           "--dram-budget", budget, "-t", str(a.threads), "-p", str(a.n_prompt),
           "-n", str(a.n_gen), "-r", "1", "--json", *extra]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        return {"failed": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", action="append", required=True, metavar="NAME:ART:BUDGET[:OPTS]")
    ap.add_argument("--targets", default="rpi5,rpi4")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=16)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()
    cases = []
    for c in a.case:
        name, art, budget, *opts = c.split(":", 3)
        for t in a.targets.split(","):
            cases.append({"name": name, "art": art, "budget": budget, "target": t,
                          "extra": opts[0].split() if opts else [], "runs": []})  # fmt: skip
    for _ in range(a.repetitions):  # interleaved: a noisy minute hits every case alike
        for c in cases:
            c["runs"].append(bench(c["art"], c["target"], c["budget"], c["extra"], a))
    print("| plan | target | budget | tg t/s, median (runs) | predicted, emulated | measured / "
          "predicted | flash MB per token, run (predicted) | hit rate, run (replay) | "
          "predicted on the board itself |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        ok = [r for r in c["runs"] if "failed" not in r]
        if not ok:
            print(f"| {c['name']} | {c['target']} | {c['budget']} | failed: "
                  f"{c['runs'][0]['failed']} | | | | | |")  # fmt: skip
            continue
        tg = [r["tg_tok_s"] for r in ok]
        pred = statistics.median(r["prediction"]["tok_s"] for r in ok)
        ratio = [r["tg_tok_s"] / r["prediction"]["tok_s"] for r in ok]
        flash = statistics.median((r.get("stream_tg") or {}).get("flash_bytes_per_token", 0)
                                  for r in ok)  # fmt: skip
        pflash = ok[0]["prediction"]["flash_bytes_per_token"]
        hits = [r["stream_tg"]["hit_rate"] for r in ok if "hit_rate" in (r["stream_tg"] or {})]
        rep = (ok[0].get("dram") or {}).get("replayed") or {}
        hit = (f"{statistics.median(hits):.1%} ({rep['hit_rate']:.1%})"
               if hits and "hit_rate" in rep else "—")  # fmt: skip
        board = statistics.median(r["prediction_board"]["tok_s"] for r in ok)
        print(
            f"| {c['name']} | {c['target']} | {c['budget']} | {statistics.median(tg):.2f} "
            f"({', '.join(f'{x:.2f}' for x in tg)}) | {pred:.2f} | "
            f"**{min(ratio):.2f}–{max(ratio):.2f}** | {flash / 1e6:.2f} ({pflash / 1e6:.2f}) | "
            f"{hit} | {board:.2f} |"
        )
    print(f"(-t {a.threads} -p {a.n_prompt} -n {a.n_gen}, {a.repetitions} interleaved runs)")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
