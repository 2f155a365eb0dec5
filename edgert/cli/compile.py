from __future__ import annotations

import sys

HELP = (
    "compile a model (GGUF / HF directory / known name / ONNX file) into an artifact for a target"
)


def add_arguments(p) -> None:
    p.add_argument(
        "model", help="GGUF file, HF model directory, known name (smollm2-135m), or .onnx file"
    )
    p.add_argument("--target", required=True, help="device target (see `edgert targets`)")
    p.add_argument(
        "--bits",
        type=_bits,
        default=None,
        help="weight bits for every layer (4); keep: a GGUF's quantized tensors as they are "
        "(Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q2_K, Q3_K, Q6_K, TQ1_0, TQ2_0 as LUT weights; "
        "Q8_0, IQ4_NL, IQ4_XS as 8-bit rows; other types rounded to 8-bit rows); ONNX models: "
        "8 = int8 weights (default float32)",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=None,
        metavar="NAME:DIMS",
        help="ONNX models: pin an input's shape, e.g. input:1x3x224x224 (repeat per input)",
    )
    p.add_argument(
        "--input-value",
        action="append",
        default=None,
        metavar="NAME=VALUES",
        help="ONNX models: compile an input in as a constant, e.g. axes=0,2 or shape=FILE.npy: "
        "inputs that set shapes, axes, sizes or counts (Reshape's shape, a reduction's axes, "
        "TopK's k, Resize's scales, ...) must be (repeat per input)",
    )
    p.add_argument("--format", default="uniform", help="uniform (1-4 bit) or hlq (2-4 bit)")
    p.add_argument("--group-size", type=int, default=32, help="weights per scale group (32)")
    p.add_argument(
        "--bits-budget",
        type=float,
        default=None,
        help="average stored bits per weight (codes, scales and zeros: uniform 3-bit at group "
        "64 is 3.5); per-layer/per-expert widths chosen by measured sensitivity (overrides "
        "--bits)",
    )
    p.add_argument(
        "--quant-method",
        default=None,
        choices=("gptq", "imatrix", "rtn"),
        help="gptq: error feedback on calibration statistics (default); imatrix: rounding "
        "weighted by input importance; rtn: plain rounding, no calibration",
    )
    p.add_argument(
        "--calib",
        default=None,
        help="calibration text file (default: text the model writes itself, cached): the "
        "statistics of gptq / imatrix, the quality measured on held-back tokens, and "
        "--bits-budget's sensitivities, --moefy's clusters, --sparse-ffn's thresholds",
    )
    p.add_argument(
        "--calib-tokens",
        type=int,
        default=None,
        help="calibration tokens gptq / imatrix collect their statistics on (4096; rtn "
        "collects none)",
    )
    p.add_argument(
        "--dram-budget",
        default=None,
        metavar="SIZE",
        help="plan for a device DRAM budget (300M, 1.5G): layers that do not fit stream from "
        "flash; recorded as the artifact's default budget (refused below the minimum)",
    )
    p.add_argument(
        "--ctx", type=int, default=None, help="context the --dram-budget plan keeps a KV cache for"
    )
    p.add_argument(
        "--kv-cache", default=None, metavar="TYPE",
        help="with --dram-budget: the KV cache's types the plan counts and runs default to (f32, "
        "f16, q8, q4 or KEYS,VALUES; default: float32, or f16 and then q8 where the budget is "
        "below the float32 plan's minimum)",
    )  # fmt: skip
    p.add_argument(
        "--sparse-ffn",
        action="store_true",
        help="also write each FFN as neuron bundles with sparsity thresholds calibrated per "
        "layer (run with --sparsity: only active neurons are computed and read from flash)",
    )
    p.add_argument(
        "--moefy",
        default=None,
        metavar="EXPERTSxTOPK",
        help="split each dense FFN into EXPERTS experts (neurons clustered on calibration "
        "activations) with a router choosing TOPK per token, e.g. 8x2: the artifact is a mixture "
        "of experts whose experts stream under --dram-budget",
    )
    p.add_argument(
        "--moefy-shared",
        type=int,
        default=0,
        metavar="N",
        help="with --moefy: N of the TOPK slices a token uses are one shared expert every token "
        "runs (the neurons contributing most on calibration text); the router picks the other "
        "TOPK-N among EXPERTS-N, e.g. --moefy 8x4 --moefy-shared 2",
    )
    p.add_argument(
        "--head-bits",
        type=int,
        default=8,
        choices=(2, 3, 4, 8),
        help="the output head's width: 8-bit rows (default) or the weights' format at 2-4 bits "
        "(fewer bytes per decoded token; perplexity cost in BENCHMARKS.md)",
    )
    p.add_argument("-o", "--output", default=None, help="artifact directory (NAME.edgert)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _bits(text: str) -> int | str:
    import argparse

    if text == "keep":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bit width or 'keep'") from None


def run(args) -> int:
    from pathlib import Path

    from edgert.cli.common import resolve_model
    from edgert.compiler.compile import compile_model
    from edgert.compiler.quant.scheme import QuantScheme
    from edgert.errors import EdgertError
    from edgert.format.target import load_target

    if Path(args.model).suffix.lower() == ".onnx":
        if args.dram_budget or args.ctx or args.kv_cache or args.sparse_ffn or args.moefy:
            raise EdgertError(
                "--dram-budget, --ctx, --kv-cache, --sparse-ffn and --moefy apply to language "
                "models"
            )
        return _compile_onnx(args)
    if args.input_shape or args.input_value:
        raise EdgertError("--input-shape and --input-value apply to ONNX models only")
    if args.quant_method == "rtn" and args.calib_tokens is not None:
        # rtn rounds without statistics: its calibration tokens are only the held-back ones
        # quality is measured on (and --bits-budget's fixed sensitivity sample), never these
        raise EdgertError(
            "--calib-tokens sets how many tokens gptq and imatrix collect statistics on; "
            "--quant-method rtn collects none, so it would be ignored",
            "drop --calib-tokens, or use --quant-method gptq or imatrix",
        )
    from edgert.cli.common import dram_budget

    budget = dram_budget(args) or None
    if args.ctx is not None and (budget is None or args.ctx < 1):
        raise EdgertError("--ctx goes with --dram-budget and must be >= 1")
    if args.kv_cache is not None and budget is None:
        raise EdgertError(
            "--kv-cache goes with --dram-budget at compile (the plan counts the cache)",
            "add --dram-budget, or give --kv-cache to run, generate, bench or perplexity",
        )
    moefy = None
    if args.moefy:
        from edgert.compiler.transform.moefy import parse_moefy

        moefy = (*parse_moefy(args.moefy), args.moefy_shared)
    elif args.moefy_shared:
        raise EdgertError("--moefy-shared goes with --moefy")
    keep = args.bits == "keep"
    if keep and args.group_size != 32:
        raise EdgertError("--bits keep takes each tensor's own group size; drop --group-size")
    bits = 4 if args.bits is None or keep else args.bits
    scheme = QuantScheme(args.format, bits, args.group_size)
    tgt = load_target(args.target)  # unknown target fails before any work
    tgt.require_toolchain()
    model = resolve_model(args.model)
    tag = f"b{args.bits_budget:g}" if args.bits_budget else "keep" if keep else f"{scheme.bits}"
    out = Path(args.output or f"{Path(model).stem}-{tgt.name}-{scheme.fmt}{tag}.edgert")
    s = compile_model(
        model=model,
        target=tgt.name,
        out=out,
        scheme=scheme,
        bits_budget=args.bits_budget,
        calib=args.calib,
        force=args.force,
        dram=None if budget is None else (budget, args.ctx, args.kv_cache),
        sparse_ffn=args.sparse_ffn,
        moefy=moefy,
        head_bits=args.head_bits,
        quant_method=args.quant_method,
        calib_tokens=args.calib_tokens,
        keep=keep,
    )
    return _report(args, s, f"wrote {s.out} ({s.fmt}, {s.bits_per_weight:.2f} bits/weight "
                            f"stored, {s.method}, target {s.target})")  # fmt: skip


def _report(args, summary, line: str) -> int:
    """--json: the summary as one object; else its table on stderr and one line."""
    from dataclasses import asdict

    from edgert.cli.common import print_json

    if args.json:
        print_json(asdict(summary))
    else:
        print(summary.table(), file=sys.stderr)
        print(line)
    return 0


def _compile_onnx(args) -> int:
    from pathlib import Path

    from edgert.errors import EdgertError

    if (
        args.bits_budget is not None
        or args.calib
        or args.calib_tokens is not None
        or args.format != "uniform"
        or args.quant_method is not None
        or args.bits == "keep"
    ):
        raise EdgertError(
            "--bits-budget, --bits keep, --calib, --calib-tokens, --quant-method and --format "
            "apply to language models only",
            "for ONNX models use --bits 8 (int8 weights) or leave it out (float32)",
        )
    from edgert.compiler.onnx.compile import compile_onnx
    from edgert.compiler.onnx.frontend import parse_input_shapes, parse_input_values
    from edgert.format.target import load_target

    shapes = parse_input_shapes(args.input_shape)
    values = parse_input_values(args.input_value)
    tgt = load_target(args.target)
    tgt.require_toolchain()
    tag = "int8" if args.bits == 8 else "f32"
    out = Path(args.output or f"{Path(args.model).stem}-{tgt.name}-{tag}.edgert")
    s = compile_onnx(
        model=args.model,
        target=tgt.name,
        out=out,
        bits=args.bits,
        input_shapes=shapes,
        input_values=values,
        force=args.force,
    )
    return _report(args, s, f"wrote {s.out} (ONNX, {s.weights} weights, target {s.target})")
