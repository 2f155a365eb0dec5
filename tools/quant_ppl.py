"""Perplexity of SmolLM2-135M compiled in each weight format (llama.cpp's convention, the GPL-3.0
text, ctx 512), evaluated by the reference forward on each artifact's dequantized weights (the
exact weights the compiled path computes with), next to the source GGUF (Q4_1) in float.

    .venv/bin/python tools/quant_ppl.py [--chunks N] [--runtime] [--only 4,2] [--json-out F]

``--runtime`` also evaluates each artifact through the runtime (``open_artifact_engine``: the C
forward pass with the LUT kernels) and reports its difference from the reference on the same
weights; ``--only`` keeps the variants whose names contain one of the given strings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgert.compiler.compile import compile_model
from edgert.compiler.frontends import load_model
from edgert.compiler.quant.scheme import QuantScheme

from edgert.device.hub import pull
from edgert.format.artifact import Artifact
from edgert.runtime.open import open_artifact_engine
from edgert.runtime.perplexity import perplexity
from edgert.runtime.reference import ReferenceEngine
from edgert.runtime.weights import reference_model

TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gpl-3.0.txt"
VARIANTS = [
    ("uniform 4-bit", QuantScheme("uniform", 4, 32), None),
    ("uniform 3-bit", QuantScheme("uniform", 3, 32), None),
    ("uniform 2-bit", QuantScheme("uniform", 2, 32), None),
    ("HLQ 2-bit", QuantScheme("hlq", 2, 32), None),
    ("HLQ 3-bit", QuantScheme("hlq", 3, 32), None),
    ("uniform, budget 2.5", QuantScheme("uniform", 4, 32), 2.5),
    ("uniform, budget 3.0", QuantScheme("uniform", 4, 32), 3.0),
    ("HLQ, budget 2.5", QuantScheme("hlq", 4, 32), 2.5),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--runtime", action="store_true", help="also through the runtime")
    ap.add_argument("--only", default=None, help="comma-separated parts of variant names")
    a = ap.parse_args()
    only = a.only.split(",") if a.only else None
    src = pull("smollm2-135m")
    base = load_model(src)
    tokens = base.tokenizer.encode(TEXT.read_text())
    rows = []

    def ppl(model) -> float:
        return run_ppl(ReferenceEngine(model, max_ctx=512))

    def run_ppl(engine) -> float:
        return perplexity(engine, tokens=tokens, ctx=512, max_chunks=a.chunks).ppl

    rows.append({"variant": "source Q4_1 GGUF (float)", "avg_bits": None, "ppl": ppl(base)})
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as d:
        for name, scheme, budget in VARIANTS:
            if only and not any(o in name for o in only):
                continue
            t0 = time.perf_counter()
            s = compile_model(
                model=src,
                target="host",
                out=Path(d) / "a.edgert",
                scheme=scheme,
                bits_budget=budget,
                force=True,
            )
            secs = time.perf_counter() - t0
            rows.append(
                {
                    "variant": name,
                    "avg_bits": s.avg_bits,
                    "compile_s": secs,
                    "ppl": ppl(reference_model(Artifact.open(s.out))),
                    "bits_per_layer": list(s.bits_per_unit.values()),
                }
            )
            if a.runtime:
                rows[-1]["runtime_ppl"] = run_ppl(open_artifact_engine(s.out, max_ctx=512))
            print(rows[-1], flush=True)
    if a.runtime:
        print("| variant | avg bits | reference ppl | runtime ppl | runtime vs reference |")
        print("|---|---|---|---|---|")
    else:
        print("| variant | avg bits | perplexity |\n|---|---|---|")
    for r in rows:
        bits = f"{r['avg_bits']:.2f}" if r["avg_bits"] else "—"
        line = f"| {r['variant']} | {bits} | {r['ppl']:.3f} |"
        if a.runtime:
            rt = r.get("runtime_ppl")
            line += f" {rt:.3f} | {100 * (rt / r['ppl'] - 1):+.3f}% |" if rt else " — | — |"
        print(line)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
