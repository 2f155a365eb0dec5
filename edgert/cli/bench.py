from __future__ import annotations

HELP = (
    "speed test: llama-bench-style pp/tg tokens per second for language models; "
    "latency (init, first, avg ± std) for compiled ONNX models"
)


def add_arguments(p) -> None:
    p.add_argument("model", help="artifact (NAME.edgert), GGUF file, HF directory or known name")
    p.add_argument("-p", "--n-prompt", type=int, default=128, help="prompt tokens (128)")
    p.add_argument("-n", "--n-gen", type=int, default=64, help="generated tokens (64)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (all cores)")
    p.add_argument(
        "-r",
        "--repetitions",
        type=int,
        default=None,
        help="repetitions (3; for ONNX models: timed inferences, 50)",
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed inferences before timing (ONNX; 3)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget

    add_dram_budget(p)


def run(args) -> int:
    from edgert.errors import EdgertError
    from edgert.settings import default_threads, set_threads

    threads = args.threads or default_threads()
    if (
        threads < 1
        or (args.repetitions is not None and args.repetitions < 1)
        or args.n_prompt < 0
        or args.n_gen < 0
    ):
        raise EdgertError("-t, -r must be >= 1 and -p, -n >= 0")
    set_threads(threads)  # before numpy / TVM start their pools
    from edgert.dnn import is_dnn_artifact

    if is_dnn_artifact(args.model):
        return _bench_dnn(args, threads)
    from edgert.bench import bench_model, table
    from edgert.cli.common import dram_budget, print_json, resolve_model

    r, _ = bench_model(
        resolve_model(args.model),
        threads=threads,
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        reps=args.repetitions or 3,
        dram_budget=dram_budget(args),
    )
    if args.json:
        print_json(r.to_dict())
    else:
        print(table(r))
    return 0


def _bench_dnn(args, threads: int) -> int:
    from edgert.cli.common import print_json
    from edgert.dnn import bench_dnn

    r = bench_dnn(args.model, threads=threads, runs=args.repetitions or 50, warmup=args.warmup)
    if args.json:
        print_json(r.to_dict())
    else:
        print(r.table())
    return 0
