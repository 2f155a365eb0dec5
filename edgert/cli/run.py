from __future__ import annotations

import sys

HELP = (
    "run an artifact on this machine: a compiled ONNX model on arrays (--input x.npy), "
    "or a language model on a prompt (-p TEXT)"
)

#: outputs up to this many elements are printed in full with --json
JSON_VALUES_MAX = 4096


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory")
    p.add_argument(
        "-i",
        "--input",
        action="append",
        default=None,
        metavar="[NAME=]FILE",
        help="ONNX models: an input array (.npy; NAME= when the model has several) or one .npz",
    )
    p.add_argument("-o", "--output", default=None, help="ONNX models: write outputs (.npy/.npz)")
    p.add_argument("-p", "--prompt", default=None, help="language models: prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (64)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (big cores, else all)")
    # None: not given (an ONNX model refuses them; a language model takes the defaults)
    p.add_argument("--temp", type=float, default=None, help="temperature; 0 = greedy (0)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 = off (40)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (0.95)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    p.add_argument(
        "--ctx", type=int, default=None, help="language models: context length (model's, max 4096)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="run on a device where the artifact was deployed (`edgert deploy ART DEVICE`)",
    )
    p.add_argument(
        "--accept-new-host-key", action="store_true", help="trust an unknown SSH host key"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget, add_kv_cache

    add_dram_budget(p)
    add_kv_cache(p)


def run(args) -> int:
    from edgert.errors import EdgertError
    from edgert.runtime.onnx import is_dnn_artifact
    from edgert.settings import default_threads, set_threads

    threads = args.threads or default_threads()
    if threads < 1:
        raise EdgertError("-t must be >= 1")
    set_threads(threads)
    dnn = is_dnn_artifact(args.artifact)
    _check_args(args, dnn)
    if args.device:
        return _run_remote(args, dnn=dnn)
    return _run_dnn(args) if dnn else _run_llm(args)


def _check_args(args, dnn: bool) -> None:
    from edgert.errors import EdgertError

    sampling = [f for f, v in (("--temp", args.temp), ("--top-k", args.top_k),
                               ("--top-p", args.top_p), ("--seed", args.seed),
                               ("--ignore-eos", args.ignore_eos or None)) if v is not None]  # fmt: skip
    if dnn and sampling:
        raise EdgertError(
            f"{', '.join(sampling)} sample a language model's tokens; "
            f"{args.artifact} is a compiled ONNX model",
            f"drop {', '.join(sampling)}",
        )
    if dnn and args.prompt is not None:
        raise EdgertError(
            f"{args.artifact} is a compiled ONNX model: it takes arrays, not a prompt",
            "pass --input FILE.npy",
        )
    if not dnn and (args.input or args.output):
        raise EdgertError(
            f"{args.artifact} is not a compiled ONNX model: --input/--output do not apply",
            "language models take -p PROMPT",
        )
    if args.dram_budget is not None and dnn:
        raise EdgertError("--dram-budget applies to language models", "drop --dram-budget")
    if not dnn and args.prompt is None:
        raise EdgertError("a language model needs a prompt", "pass -p TEXT")
    if not dnn:
        _sampler(args)  # a bad --temp / --top-k / --top-p is refused before any work
    if dnn and not args.input:
        from edgert.format.artifact import Artifact
        from edgert.runtime.onnx import TensorSpec

        g = Artifact.open(args.artifact, verify_resident=False).manifest["graph"]
        wanted = ", ".join(TensorSpec.from_dict(d).describe() for d in g["inputs"])
        raise EdgertError(f"no --input given (the model takes {wanted})", "pass --input FILE.npy")


def _sampler(args):
    """The language model's sampler from the flags (refusing bad values before any work)."""
    from edgert.errors import EdgertError
    from edgert.runtime.generate import Sampler

    if args.seed is not None and args.seed < 0:
        raise EdgertError(f"--seed {args.seed} is negative", "use a seed >= 0")
    return Sampler(
        temp=0.0 if args.temp is None else args.temp,
        top_k=40 if args.top_k is None else args.top_k,
        top_p=0.95 if args.top_p is None else args.top_p,
        seed=args.seed,
    )


def _run_remote(args, *, dnn: bool) -> int:
    """The same run on a device: the artifact (deployed under its name) is loaded by the agent."""
    from edgert.cli.common import print_json
    from edgert.device.client import Device
    from edgert.device.deploy import artifact_name

    name = artifact_name(args.artifact)
    with Device(args.device, accept_new_host_key=args.accept_new_host_key) as dev:
        if dnn:
            from edgert.format.artifact import Artifact
            from edgert.runtime.onnx import TensorSpec, load_inputs, save_outputs

            dev.load(name, local=args.artifact)
            g = Artifact.open(args.artifact, verify_resident=False).manifest["graph"]
            feeds = load_inputs(args.input or [], [TensorSpec.from_dict(d) for d in g["inputs"]])
            outs, run_ms = dev.infer(name, feeds, threads=args.threads)
            saved = str(save_outputs(outs, args.output)) if args.output else None
            _print_outputs(args, outs, saved, load_s=None, run_ms=run_ms)
            return 0
        from edgert.cli.common import dram_budget, expert_options, ffn_options

        # the same budget and options as a run on this machine
        dev.load(name, local=args.artifact, ctx=args.ctx, dram_budget=dram_budget(args),
                 experts=expert_options(args), ffn=ffn_options(args),
                 kv_cache=args.kv_cache)  # fmt: skip
        if not args.json:
            sys.stdout.write(args.prompt)
        smp = _sampler(args)
        # -t only where given: the device's own cores otherwise, not this machine's
        res = dev.generate(
            name, args.prompt, n_predict=args.n_predict, temp=smp.temp, top_k=smp.top_k,
            top_p=smp.top_p, seed=smp.seed, ignore_eos=args.ignore_eos, threads=args.threads,
            on_text=None if args.json else lambda s: (sys.stdout.write(s), sys.stdout.flush()),
        )  # fmt: skip
    if args.json:
        print_json(res)
    else:
        sys.stdout.write("\n")
        print(
            f"on {args.device}: prompt {res['prompt_tokens']} tokens, {res['pp_tok_s']:.1f} tok/s"
            f" | generated {len(res['tokens'])} tokens, {res['tg_tok_s']:.1f} tok/s",
            file=sys.stderr,
        )
        d, st = res.get("dram"), res.get("stream")
        if d and d.get("budget"):
            line = f"dram budget {d['budget'] / 1e6:.1f} MB: plan {d['planned'] / 1e6:.1f} MB"
            per_step = (st or {}).get("flash_bytes_per_call")
            if per_step is not None:
                line += f", {per_step / 1e6:.1f} MB read from flash per step"
            print(line, file=sys.stderr)
    return 0


def _run_dnn(args) -> int:
    import time

    from edgert.runtime.onnx import load_inputs, open_dnn, save_outputs

    t0 = time.perf_counter()
    eng = open_dnn(args.artifact)
    load_s = time.perf_counter() - t0
    feeds = load_inputs(args.input, eng.inputs)
    t = time.perf_counter()
    outs = eng.run(feeds)
    run_ms = (time.perf_counter() - t) * 1e3
    saved = str(save_outputs(outs, args.output)) if args.output else None
    _print_outputs(args, outs, saved, load_s=load_s, run_ms=run_ms)
    return 0


def _print_outputs(args, outs: dict, saved: str | None, *, load_s, run_ms: float) -> None:
    """--json: shapes, dtypes and (small) values; else a short line per output."""
    import numpy as np

    from edgert.cli.common import print_json

    if args.json:
        print_json(
            {
                "outputs": {
                    k: {
                        "shape": list(v.shape),
                        "dtype": str(v.dtype),
                        **({"values": v.tolist()} if v.size <= JSON_VALUES_MAX else {}),
                    }
                    for k, v in outs.items()
                },
                "saved": saved,
                "load_s": load_s,
                "run_ms": run_ms,
                "device": args.device,
            }
        )
        return
    for k, v in outs.items():
        with np.printoptions(precision=5, threshold=20, edgeitems=4, suppress=True):
            body = np.array2string(v.reshape(-1)) if v.size else "[]"
        print(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'} {v.dtype}: {body}")
    where = f" on {args.device}" if args.device else ""
    load = f"load {load_s * 1e3:.1f} ms, " if load_s is not None else ""
    print(
        f"{load}inference{where} {run_ms:.2f} ms"
        + (f", outputs written to {saved}" if saved else ""),
        file=sys.stderr,
    )


def _run_llm(args) -> int:
    from edgert.cli.common import dram_budget, expert_options, ffn_options
    from edgert.cli.generate import report
    from edgert.runtime.generate import generate
    from edgert.runtime.open import open_artifact_engine

    sampler = _sampler(args)
    engine = open_artifact_engine(
        args.artifact,
        max_ctx=args.ctx,
        dram_budget=dram_budget(args),
        experts=expert_options(args),
        ffn=ffn_options(args),
        kv_cache=args.kv_cache,
    )
    if not args.json:
        sys.stdout.write(args.prompt)
    res = generate(
        engine,
        prompt=args.prompt,
        n_predict=args.n_predict,
        sampler=sampler,
        on_text=None if args.json else lambda s: (sys.stdout.write(s), sys.stdout.flush()),
        stop_at_eos=not args.ignore_eos,
    )
    report(res, as_json=args.json, engine=engine)
    return 0
