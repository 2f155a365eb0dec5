from __future__ import annotations

HELP = "LUT GEMV weight bandwidth vs measured DRAM read bandwidth and fp32 BLAS GEMV"


def add_arguments(p) -> None:
    p.add_argument("--bits", default="2,4", help="comma-separated bit widths (2,4)")
    p.add_argument(
        "--shapes",
        default="smollm2-up,smollm2-down,7b-qkvo,7b-up,7b-down",
        help="comma-separated: smollm2-qkvo, smollm2-up, smollm2-down, 7b-qkvo, 7b-up, 7b-down, "
        "moe-up, moe-down",
    )
    p.add_argument("-t", "--threads", default="1,2", help="comma-separated thread counts (1,2)")
    p.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help=(
            "seconds per row, in rounds of read probe, BLAS, LUT kernel and LUT gemv taking turns"
            " (at least 5; 1.0)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from edgert.cli.common import print_json
    from edgert.errors import EdgertError
    from edgert.measure.kernels import bench_kernels, table

    try:
        bits = [int(b) for b in args.bits.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError as e:
        raise EdgertError(f"--bits/--threads take comma-separated integers ({e})") from e
    res = bench_kernels(
        bits=bits, shapes=args.shapes.split(","), threads=threads, seconds=args.seconds
    )
    if args.json:
        print_json(res)
    else:
        print(table(res))
    return 0
