from __future__ import annotations

import sys

HELP = "generate text from a model file (GGUF / HF directory) or a known model name"


def add_arguments(p) -> None:
    p.add_argument("model", help="GGUF file, HF model directory, or known name (smollm2-135m)")
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate (64)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k sampling, 0 = off (40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (0.95)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the model's chat template"
    )
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    p.add_argument(
        "--ctx", type=int, default=None, help="context length (default: model's, max 4096)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    from edgert.cli.common import add_dram_budget, add_kv_cache

    add_dram_budget(p)
    add_kv_cache(p)


def run(args) -> int:
    from edgert.cli.common import dram_budget, expert_options, ffn_options, resolve_model
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.open import open_engine

    sampler = Sampler(temp=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    engine = open_engine(
        resolve_model(args.model),
        max_ctx=args.ctx,
        dram_budget=dram_budget(args),
        experts=expert_options(args),
        ffn=ffn_options(args),
        kv_cache=args.kv_cache,
    )
    prompt = args.prompt
    if args.chat:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if not args.json:
        sys.stdout.write(args.prompt if not args.chat else "")
    res = generate(
        engine,
        prompt=prompt,
        n_predict=args.n_predict,
        sampler=sampler,
        on_text=None if args.json else stream,
        stop_at_eos=not args.ignore_eos,
    )
    report(res, as_json=args.json, engine=engine, prompt=prompt if args.chat else None)
    return 0


def report(res, *, as_json: bool, engine=None, prompt: str | None = None) -> None:
    """After streaming: the JSON object (with ``prompt``, the chat template's rendering, where
    given), or a newline and the speed line on stderr (and, when the engine streams layers under
    --dram-budget, what it read from flash)."""
    from edgert.cli.common import print_json

    plan = getattr(engine, "dram_plan", None)
    stats = getattr(engine, "stream_stats", None)
    if as_json:
        print_json({**res.to_dict(engine), **({"prompt": prompt} if prompt is not None else {})})
        return
    sys.stdout.write("\n")
    print(
        f"prompt: {res.prompt_tokens} tokens, {res.pp_tok_s:.1f} tok/s | "
        f"generated: {len(res.tokens)} tokens, {res.tg_tok_s:.1f} tok/s ({res.stop_reason})",
        file=sys.stderr,
    )
    if plan is not None:
        line = plan.describe()
        if stats is not None:
            line += ", " + stats.describe()
        print(line, file=sys.stderr)
