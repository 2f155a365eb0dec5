from __future__ import annotations

from pathlib import Path

HELP = "perplexity of a text file (llama.cpp convention: ctx chunks, second half scored)"


def add_arguments(p) -> None:
    p.add_argument("model", help="GGUF file, HF model directory, or known name")
    p.add_argument("-f", "--file", required=True, help="UTF-8 text file")
    p.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (512)")
    p.add_argument("--chunks", type=int, default=None, help="evaluate at most this many chunks")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from edgert.cli.common import add_dram_budget, add_kv_cache

    add_dram_budget(p, experts=False)
    add_kv_cache(p)


def run(args) -> int:
    from edgert.cli.common import dram_budget, ffn_options, print_json, resolve_model
    from edgert.errors import EdgertError
    from edgert.progress import Progress
    from edgert.runtime.open import open_engine
    from edgert.runtime.perplexity import perplexity

    path = Path(args.file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise EdgertError(f"no such text file: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise EdgertError(f"cannot read {path} as UTF-8 text: {e}") from e
    engine = open_engine(
        resolve_model(args.model),
        max_ctx=args.ctx,
        dram_budget=dram_budget(args),
        ffn=ffn_options(args),
        kv_cache=args.kv_cache,
    )
    tok = engine.tokenizer
    tokens = tok.encode(text)
    bos = tok.meta.bos_id if tok.meta.add_bos else None
    with Progress(None, "perplexity", enabled=None if not args.json else False) as bar:

        def on_chunk(i: int, n: int, ppl: float) -> None:
            bar.total = n
            bar.desc = f"perplexity {ppl:8.4f}"
            bar.update(1)

        res = perplexity(
            engine,
            tokens=tokens,
            ctx=args.ctx,
            bos_id=bos,
            max_chunks=args.chunks,
            on_chunk=on_chunk,
        )
    stats = getattr(engine, "stream_stats", None)
    if args.json:
        extra = {"stream": stats.to_dict()} if stats is not None else {}
        print_json({**res.to_dict(), "tokens": len(tokens), "kv_cache": engine.kv_cache, **extra})
    else:
        print(
            f"ppl = {res.ppl:.4f} over {res.scored} scored tokens "
            f"({res.chunks} chunks of {res.ctx}, {len(tokens)} tokens)"
        )
    return 0
