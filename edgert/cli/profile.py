from __future__ import annotations

HELP = (
    "profile an artifact on one or several devices: speed, per-layer time, memory over time; "
    "--html writes a self-contained report"
)


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory (deployed to each device)")
    p.add_argument(
        "--device",
        default=None,
        help="device URL or inventory name; several comma-separated run concurrently "
        "(default: this machine)",
    )
    p.add_argument("-p", "--n-prompt", type=int, default=64, help="prompt tokens (64)")
    p.add_argument("-n", "--n-gen", type=int, default=32, help="generated tokens (32)")
    p.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions (3)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (big cores, else all)")
    p.add_argument("--html", default=None, help="write the report to this HTML file")
    p.add_argument("--accept-new-host-key", action="store_true", help="trust unknown SSH hosts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget, add_kv_cache

    # a weight cache to measure the hit rate of: a mixture's experts under --dram-budget, a
    # sparse FFN's neurons under --sparsity
    add_dram_budget(p)
    add_kv_cache(p)


def run(args) -> int:
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from edgert.cli.common import print_json
    from edgert.device.deploy import artifact_name
    from edgert.errors import EdgertError
    from edgert.measure.profile import headline, html_report

    if not (Path(args.artifact) / "manifest.json").exists():
        raise EdgertError(f"no artifact at {args.artifact}", "compile one with `edgert compile`")
    from edgert.cli.common import dram_budget, expert_options, ffn_options

    opts = {"n_prompt": args.n_prompt, "n_gen": args.n_gen, "reps": args.repetitions}
    if args.threads:
        opts["threads"] = args.threads
    run_opts = {"dram_budget": dram_budget(args), "experts": expert_options(args),
                "ffn": ffn_options(args), "kv_cache": args.kv_cache}  # fmt: skip
    # asked for: the profile must say it ran with them, or its cache figures are another run's
    asked = any(run_opts[k] is not None for k in ("dram_budget", "ffn", "kv_cache"))
    from edgert.runtime.onnx import is_dnn_artifact

    if asked and is_dnn_artifact(args.artifact):
        raise EdgertError(
            "--dram-budget, --sparsity and --kv-cache apply to language models",
            "drop them for ONNX models",
        )
    if args.device:
        from edgert.device.client import Device

        devices = [d.strip() for d in args.device.split(",") if d.strip()]

        def one(url: str) -> dict:
            with Device(url, accept_new_host_key=args.accept_new_host_key) as dev:
                h, _ = dev.call(
                    "run.profile", {"name": artifact_name(args.artifact), **opts, **run_opts}
                )
            p = h["profile"]
            if asked and p.get("options") != run_opts:
                raise EdgertError(
                    f"device {url} profiled without --dram-budget / --sparsity / --kv-cache (its "
                    "edgert does not pass them on)",
                    "update edgert there (`edgert deploy` does over SSH), or profile without them",
                )
            return p

        with ThreadPoolExecutor(len(devices)) as ex:
            profiles = dict(zip(devices, ex.map(one, devices)))
    else:
        from edgert.device.sysinfo import device_info
        from edgert.measure.profile import profile_artifact
        from edgert.settings import default_threads, set_threads

        threads = args.threads or default_threads()
        set_threads(threads)
        p = profile_artifact(args.artifact, threads=threads, n_prompt=args.n_prompt,
                             n_gen=args.n_gen, reps=args.repetitions, **run_opts)  # fmt: skip
        p["device_info"] = device_info(Path.home() / ".edgert")
        profiles = {"local": p}
    if args.html:
        Path(args.html).write_text(html_report(profiles), encoding="utf-8")
    if args.json:
        print_json({"profiles": profiles, "html": args.html})
        return 0
    for dev, p in profiles.items():
        figs = ", ".join(f"{k} {v}" for k, v in headline(p).items())
        print(f"{dev}: {p['artifact']}: {figs}")
        if p.get("cache_note"):
            print(f"{dev}: {p['cache_note']}")
    if args.html:
        print(f"report written to {args.html}", file=sys.stderr)
    return 0
