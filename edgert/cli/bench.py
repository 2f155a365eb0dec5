from __future__ import annotations

HELP = (
    "speed test: llama-bench-style pp/tg tokens per second for language models; "
    "latency (init, first, avg ± std) for compiled ONNX models"
)


def add_arguments(p) -> None:
    p.add_argument("model", help="artifact (NAME.edgert), GGUF file, HF directory or known name")
    p.add_argument("-p", "--n-prompt", type=int, default=128, help="prompt tokens (128)")
    p.add_argument(
        "-n",
        "--n-gen",
        type=int,
        default=64,
        help="generated tokens (64; each sampled from the model, temperature 1, seeded)",
    )
    p.add_argument(
        "-d", "--depth", type=int, default=0, metavar="N",
        help="tokens in the KV cache before each tg run (untimed): decode at that context, as "
        "llama-bench's -d (0)",
    )  # fmt: skip
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (big cores, else all)")
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
    from edgert.cli.common import add_dram_budget, add_kv_cache

    add_dram_budget(p)
    add_kv_cache(p)
    p.add_argument(
        "--emulate",
        default=None,
        metavar="TARGET",
        help="run under TARGET's memory (cgroup limit: --dram-budget, default the device's DRAM, "
        "page cache included) and flash (reads throttled to its bandwidth) after dropping the "
        "page cache; needs root and cgroup v1",
    )
    import argparse

    # the emulated flash for the prediction, "TARGET,MBS,LATENCY_US" (set by --emulate for its
    # child, which runs under TARGET's limits)
    p.add_argument("--flash-figures", default=None, help=argparse.SUPPRESS)
    # this machine's DRAM read rate for the prediction, GB/s (set by whoever put the run under an
    # emulated board's memory limit, measured outside it)
    p.add_argument("--dram-gbs", type=float, default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    from edgert.errors import EdgertError
    from edgert.settings import default_threads, set_threads

    threads = args.threads or default_threads()
    if (
        threads < 1
        or (args.repetitions is not None and args.repetitions < 1)
        or args.n_prompt < 0
        or args.n_gen < 0
        or args.depth < 0
    ):
        raise EdgertError("-t, -r must be >= 1 and -p, -n, -d >= 0")
    set_threads(threads)  # before numpy / TVM start their pools
    from edgert.runtime.onnx import is_dnn_artifact

    if is_dnn_artifact(args.model):
        if args.emulate or args.dram_budget or args.depth:
            raise EdgertError("--emulate, --dram-budget and --depth apply to language models")
        return _bench_dnn(args, threads)
    from edgert.cli.common import dram_budget, expert_options, print_json, resolve_model
    from edgert.measure.bench import bench_model, table

    path = resolve_model(args.model)
    if args.emulate:
        r = _bench_emulated(args, path, threads)
    else:
        dram_gbs = args.dram_gbs
        if dram_gbs is None and args.flash_figures is None and _plans(args, path):
            from edgert.measure.kernels import dram_read_gbs_apart

            dram_gbs = dram_read_gbs_apart(threads)  # before the model takes the memory
        r, engine = bench_model(
            path,
            threads=threads,
            n_prompt=args.n_prompt,
            n_gen=args.n_gen,
            reps=args.repetitions or 3,
            dram_budget=dram_budget(args),
            experts=expert_options(args),
            ffn=_ffn_options(args),
            kv_cache=args.kv_cache,
            depth=args.depth,
        )
        plan = getattr(engine, "dram_plan", None)
        if plan is not None:  # layer, expert and sparse plans
            from edgert.measure.bench import predict, predict_board

            predict(r, plan, _figures(args, engine, threads, dram_gbs))
            board = _board(args)
            if board is not None:  # what the emulated board itself would do
                r.prediction_board = predict_board(plan, board, r)
    if args.json:
        print_json(r.to_dict())
    else:
        print(table(r))
    return 0


def _ffn_options(args) -> dict | None:
    """--sparsity options; reads are joined across gaps of what --flash-figures' device reads in
    one latency (an emulated device's flash, not the artifact target's)."""
    from edgert.cli.common import ffn_options

    ffn, flash = ffn_options(args), _flash_figures(args)
    if ffn is not None and flash is not None:
        ffn["gap_bytes"] = int(flash[1] * flash[2])
    return ffn


def _flash_figures(args) -> tuple[str, float, float] | None:
    """--flash-figures NAME,MB/S,LATENCY_US, or None."""
    if not args.flash_figures:
        return None
    name, mbs, lat = args.flash_figures.split(",")
    return name, float(mbs), float(lat)


def _board(args):
    """The target an --emulate child runs as (None for a plain run)."""
    from edgert.format.target import load_target

    flash = _flash_figures(args)
    return load_target(flash[0]) if flash is not None else None


def _plans(args, path) -> bool:
    """Whether a run of ``path`` gets a DRAM plan, so a prediction: an artifact under a budget
    (asked for, else compiled) or with --sparsity."""
    import json

    manifest = path / "manifest.json"
    if not (path.is_dir() and manifest.exists()):
        return False
    from edgert.cli.common import dram_budget

    budget = dram_budget(args)
    if args.sparsity is not None:
        return True
    if budget is not None:
        return budget > 0
    return bool(json.loads(manifest.read_text()).get("dram"))


def _figures(args, engine, threads: int, dram_gbs: float | None):
    """The figures of what runs the benchmark: this machine (targets/host.toml, its DRAM read
    rate ``dram_gbs`` as measured for this run where given) with its flash measured on the
    model's disk, or, under --emulate, the emulated board: its flash as throttled, this
    machine's cores and DRAM bandwidth (DeviceFigures.emulated)."""
    from edgert.format.target import load_target
    from edgert.plan.cost import DeviceFigures

    host = load_target("host")
    flash = _flash_figures(args)
    if flash is not None:
        return DeviceFigures.emulated(
            _board(args), host, threads=threads, flash=flash[1:], dram_gbs=dram_gbs
        )
    fig = DeviceFigures.from_target(host, threads=threads).with_dram(dram_gbs)
    streams = engine.streamer or engine.expert_cache or engine.neurons
    if streams is None:
        return fig
    from edgert.measure.flash import measure_flash

    mbs, lat = measure_flash(streams.reader.path)
    return fig.with_flash("host", mbs, lat)


def _bench_emulated(args, path, threads: int):
    """``edgert bench`` again in a child process under the target's limits."""
    import json
    import sys

    from edgert.cli.common import dram_budget
    from edgert.emulation.limits import emulation, run_emulated
    from edgert.errors import EdgertError
    from edgert.format.artifact import Artifact
    from edgert.format.target import load_target
    from edgert.measure.bench import BenchResult
    from edgert.measure.flash import measure_flash
    from edgert.measure.kernels import dram_read_gbs_apart

    if not (path.is_dir() and (path / "manifest.json").exists()):
        raise EdgertError("--emulate benchmarks compiled artifacts", "compile the model first")
    tgt = load_target(args.emulate)
    budget = dram_budget(args)
    if budget is None:  # the artifact's compiled budget, else the device's DRAM
        budget = (Artifact.open(path, verify_resident=False).manifest.get("dram") or {}).get(
            "budget"
        )
    em = emulation(tgt, budget=budget, model_path=path)
    weights = max((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    host_mbs, host_lat = measure_flash(weights)
    dram_gbs = dram_read_gbs_apart(threads)  # here, outside the board's memory limit
    # the throttle cannot make the disk faster than it is, nor add latency
    flash = f"{tgt.name},{min(tgt.flash_read_mbs, host_mbs)},{max(tgt.flash_latency_us, host_lat)}"
    argv = [sys.executable, "-m", "edgert", "bench", str(path), "--json",
            "-p", str(args.n_prompt), "-n", str(args.n_gen), "-t", str(threads),
            "-r", str(args.repetitions or 3), "--dram-budget", str(em.budget_bytes),
            "--flash-figures", flash, "--expert-cache", args.expert_cache,
            "--expert-predictor", args.expert_predictor]  # fmt: skip
    if dram_gbs:
        argv += ["--dram-gbs", str(dram_gbs)]
    if args.no_prefetch:
        argv.append("--no-prefetch")
    if args.kv_cache:
        argv += ["--kv-cache", args.kv_cache]
    if args.depth:
        argv += ["--depth", str(args.depth)]
    if args.sparsity is not None:
        argv += ["--sparsity", str(args.sparsity), "--window", str(args.window)]
    p = run_emulated(argv, em, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise EdgertError(f"the emulated run failed (exit {p.returncode}): {tail[0]}")
    r = BenchResult(**json.loads(p.stdout))
    r.emulation = em.to_dict()
    r.emulation["host_flash"] = {"read_mbs": host_mbs, "latency_us": host_lat}
    r.emulation["host_dram_read_gbs"] = dram_gbs
    return r


def _bench_dnn(args, threads: int) -> int:
    from edgert.cli.common import print_json
    from edgert.measure.onnx import bench_dnn

    r = bench_dnn(args.model, threads=threads, runs=args.repetitions or 50, warmup=args.warmup)
    if args.json:
        print_json(r.to_dict())
    else:
        print(r.table())
    return 0
