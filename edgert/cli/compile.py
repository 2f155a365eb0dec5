from __future__ import annotations

import sys

HELP = "compile a model (GGUF / HF directory / known name) into an artifact for a target"


def add_arguments(p) -> None:
    p.add_argument("model", help="GGUF file, HF model directory, or known name (smollm2-135m)")
    p.add_argument("--target", required=True, help="device target (see `edgert targets`)")
    p.add_argument("--bits", type=int, default=4, help="weight bits for every layer (4)")
    p.add_argument("--format", default="uniform", help="uniform (1-4 bit) or hlq (2-4 bit)")
    p.add_argument("--group-size", type=int, default=32, help="weights per scale group (32)")
    p.add_argument(
        "--bits-budget",
        type=float,
        default=None,
        help="average bits per weight; per-layer/per-expert widths chosen by measured "
        "sensitivity (overrides --bits)",
    )
    p.add_argument(
        "--calib", default=None, help="calibration text (default: sampled from the model)"
    )
    p.add_argument("-o", "--output", default=None, help="artifact directory (NAME.edgert)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from edgert.cli.common import print_json, resolve_model
    from edgert.compiler.compile import compile_model
    from edgert.compiler.quant import QuantScheme
    from edgert.target import load_target

    scheme = QuantScheme(args.format, args.bits, args.group_size)
    tgt = load_target(args.target)  # unknown target fails before any work
    tgt.require_toolchain()
    model = resolve_model(args.model)
    tag = f"b{args.bits_budget:g}" if args.bits_budget else f"{args.bits}"
    out = Path(args.output or f"{Path(model).stem}-{tgt.name}-{scheme.fmt}{tag}.edgert")
    s = compile_model(
        model=model,
        target=tgt.name,
        out=out,
        scheme=scheme,
        bits_budget=args.bits_budget,
        calib=args.calib,
        force=args.force,
    )
    if args.json:
        print_json(asdict(s))
    else:
        print(s.table(), file=sys.stderr)
        print(f"wrote {s.out} ({s.fmt}, {s.avg_bits:.2f} bits/weight avg, target {s.target})")
    return 0
