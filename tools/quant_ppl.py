"""Perplexity of SmolLM2-135M compiled in each weight format and quantization method (llama.cpp's
convention, the GPL-3.0 text, ctx 512), evaluated by the reference forward on each artifact's
dequantized weights (the exact weights the compiled path computes with), next to the source GGUF
(Q4_1) in float. Calibration is the compiler's default: text the model writes itself, which has
never seen the evaluation text. Reports stored bits per weight (codes, scales and zeros) and the
KL / top-1 agreement the compiler measured on its held-back tokens.

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
U, H = "uniform", "hlq"
#: (name, scheme, --bits-budget in stored bits, --quant-method)
VARIANTS = [
    ("uniform 4-bit g32 rtn", QuantScheme(U, 4, 32), None, "rtn"),
    ("uniform 4-bit g32 gptq", QuantScheme(U, 4, 32), None, "gptq"),
    ("uniform 3-bit g32 gptq", QuantScheme(U, 3, 32), None, "gptq"),
    ("uniform 3-bit g64 rtn", QuantScheme(U, 3, 64), None, "rtn"),
    ("uniform 3-bit g64 imatrix", QuantScheme(U, 3, 64), None, "imatrix"),
    ("uniform 3-bit g64 gptq", QuantScheme(U, 3, 64), None, "gptq"),
    ("uniform 3-bit g128 gptq", QuantScheme(U, 3, 128), None, "gptq"),
    ("HLQ 3-bit g64 gptq", QuantScheme(H, 3, 64), None, "gptq"),
    ("uniform 2-bit g32 gptq", QuantScheme(U, 2, 32), None, "gptq"),
    ("uniform 2-bit g64 rtn", QuantScheme(U, 2, 64), None, "rtn"),
    ("uniform 2-bit g64 gptq", QuantScheme(U, 2, 64), None, "gptq"),
    ("HLQ 2-bit g32 gptq", QuantScheme(H, 2, 32), None, "gptq"),
    ("HLQ 2-bit g64 gptq", QuantScheme(H, 2, 64), None, "gptq"),
    ("uniform g64 budget 3.5 gptq", QuantScheme(U, 4, 64), 3.5, "gptq"),
    ("uniform g128 budget 2.5 gptq", QuantScheme(U, 4, 128), 2.5, "gptq"),
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

    rows.append({"variant": "source Q4_1 GGUF (float)", "bpw": None, "ppl": ppl(base)})
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as d:
        for name, scheme, budget, method in VARIANTS:
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
                quant_method=method,
            )
            secs = time.perf_counter() - t0
            rows.append(
                {
                    "variant": name,
                    "avg_bits": s.avg_bits,
                    "bpw": s.bits_per_weight,
                    "kl": s.quality["kl"],
                    "top1": s.quality["top1"],
                    "compile_s": secs,
                    "seconds": s.seconds,
                    "ppl": ppl(reference_model(Artifact.open(s.out))),
                    "bits_per_layer": list(s.bits_per_unit.values()),
                }
            )
            if a.runtime:
                rows[-1]["runtime_ppl"] = run_ppl(open_artifact_engine(s.out, max_ctx=512))
            print(rows[-1], flush=True)
    src = rows[0]["ppl"]
    head = "| variant | stored bits/weight | perplexity | vs source | KL (held back) | top-1 |"
    if a.runtime:
        head += " runtime ppl | runtime vs reference |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        bits = f"{r['bpw']:.2f}" if r["bpw"] else "—"
        kl = f"{r['kl']:.4f} | {100 * r['top1']:.1f}%" if "kl" in r else "— | —"
        line = f"| {r['variant']} | {bits} | {r['ppl']:.3f} | {r['ppl'] / src:.3f}x | {kl} |"
        if a.runtime:
            rt = r.get("runtime_ppl")
            line += f" {rt:.3f} | {100 * (rt / r['ppl'] - 1):+.3f}% |" if rt else " — | — |"
        print(line)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
