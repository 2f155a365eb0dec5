"""llama-bench-style measurements: prompt processing (pp N) and text generation (tg N) rates,
load time, time to first token and peak RSS, repeated ``-r`` times."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass

import numpy as np


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM of its own address space.
    (``getrusage``'s ru_maxrss also carries the parent's peak into a child it forked and exec'd,
    so a benchmark started by a large process would report the parent's size.)"""
    v = _status_bytes("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Resident set size of this process now (0 where /proc is missing)."""
    return _status_bytes("VmRSS") or 0


@dataclass
class BenchResult:
    model: str
    kind: str  # "reference" | "artifact"
    size_bytes: int
    bits: float | None
    threads: int
    n_prompt: int
    n_gen: int
    reps: int
    load_s: float
    ttft_s: float
    pp_tok_s: float
    pp_tok_s_std: float
    tg_tok_s: float
    tg_tok_s_std: float
    peak_rss_bytes: int
    flash_bytes_per_token: float
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: RSS before the model was opened (interpreter and libraries)
    baseline_rss_bytes: int = 0
    #: tokens in the cache before each tg run (llama-bench's depth: decode at that context)
    depth: int = 0
    #: the DRAM plan (edgert.plan.dram.DramPlan.to_dict) of a dense artifact
    dram: dict | None = None
    #: what streaming did over the run (edgert.plan.stats)
    stream: dict | None = None
    #: the same counters over the timed tg runs alone (their numeric fields; ``hit_rate`` where
    #: lookups are counted), comparable to the cost model's per-token figures
    stream_tg: dict | None = None
    #: the cost model's decode figures for this run (edgert.plan.cost.Prediction.to_dict) and
    #: the peak RSS it predicts (baseline + plan)
    prediction: dict | None = None
    #: the device limits the run was under (edgert.emulation.limits.Emulation.to_dict)
    emulation: dict | None = None
    #: under --emulate: the cost model's decode figures for the emulated board itself, all its
    #: figures its own (CPU and DRAM bandwidth too, which the emulation leaves this machine's)
    prediction_board: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def bench(
    engine,
    *,
    model: str,
    kind: str,
    size_bytes: int,
    bits: float | None,
    threads: int,
    load_s: float,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 3,
    seed: int = 0,
    depth: int = 0,
) -> BenchResult:
    """Measure ``engine``: pp = one forward over ``n_prompt`` random token ids from an empty
    cache; tg = ``n_gen`` single-token forwards after a 1-token prompt (``depth`` > 0: an
    untimed prompt of that many random ids, so decode runs at that context), each token sampled from
    the last logits at temperature 1 (seeded): text the model writes itself, as its calibration
    text is, so a mixture of experts routes as in use rather than on random ids. The sampling
    noise (Gumbel-max) is drawn before the clock starts; the argmax is timed.

    As llama-bench, the pp runs come first, then the tg runs, each test after one untimed
    warm-up: first-call costs (page faults, JIT caches) stay out of the samples, and where a
    cache learns from the tokens (experts or FFN neurons kept from flash) tg's warm-up decodes
    :data:`~edgert.plan.moe.TRACE_WARMUP` tokens, so the timed tokens meet it in the steady state
    the cost model's replay counts from, not what random prompt ids left in it (one token
    otherwise: a dense model streaming its layers reads the same bytes every token)."""
    from edgert.plan.moe import TRACE_WARMUP

    vocab = engine.cfg.vocab_size
    rng = np.random.default_rng(seed)
    pp, tg, ttft = [], [], []
    tg_stream: dict | None = None
    engine.reset()
    engine.forward(rng.integers(0, vocab, max(1, min(n_prompt, 8))).tolist(), last_only=True)
    for _ in range(reps if n_prompt else 0):
        toks = rng.integers(0, vocab, n_prompt).tolist()
        engine.reset()
        t0 = time.perf_counter()
        engine.forward(toks, last_only=True)
        dt = time.perf_counter() - t0
        pp.append(n_prompt / dt)
        ttft.append(dt)
    if n_gen:
        learns = any(getattr(engine, a, None) is not None for a in ("expert_cache", "neurons"))
        _generate(engine, rng, TRACE_WARMUP if learns else 1, depth)
    for _ in range(reps if n_gen else 0):
        dt, before, after = _generate(engine, rng, n_gen, depth)
        tg.append(n_gen / dt)
        tg_stream = _add_counters(tg_stream, before, after)
    flash = getattr(engine, "flash_bytes_per_token", 0.0)
    return BenchResult(
        model=model,
        kind=kind,
        size_bytes=size_bytes,
        bits=bits,
        threads=threads,
        n_prompt=n_prompt,
        n_gen=n_gen,
        reps=reps,
        load_s=load_s,
        ttft_s=statistics.mean(ttft) if ttft else 0.0,
        pp_tok_s=statistics.mean(pp) if pp else 0.0,
        pp_tok_s_std=_std(pp),
        tg_tok_s=statistics.mean(tg) if tg else 0.0,
        tg_tok_s_std=_std(tg),
        peak_rss_bytes=peak_rss_bytes(),
        flash_bytes_per_token=float(flash),
        samples={"pp_tok_s": pp, "tg_tok_s": tg, "ttft_s": ttft},
        stream_tg=_tg_summary(tg_stream, len(tg) * n_gen),
        depth=depth,
    )


def _generate(engine, rng, n: int, depth: int = 0) -> tuple[float, dict | None, dict | None]:
    """Decode ``n`` tokens sampled at temperature 1 after a prompt of ``max(depth, 1)`` random
    ids: the seconds they took, and the engine's streaming counters before and after them."""
    engine.reset()
    prompt = rng.integers(0, engine.cfg.vocab_size, max(depth, 1)).tolist()
    logits = engine.forward(prompt, last_only=True)
    # Gumbel noise -log(-log(u)) made in place in float32: n x vocab floats (6 MB for 32
    # SmolLM2 tokens), not three times that in float64 temporaries, beside a budgeted model
    noise = rng.random((n, logits.shape[-1]), dtype=np.float32)
    with np.errstate(divide="ignore"):  # u = 0: noise -inf, a token never drawn
        for op in (np.log, np.negative, np.log, np.negative):
            op(noise, out=noise)
    before = _counters(engine)
    t0 = time.perf_counter()
    for g in noise:
        logits = engine.forward([int(np.argmax(logits + g))], last_only=True)
    dt = time.perf_counter() - t0
    return dt, before, _counters(engine)


def _counters(engine) -> dict | None:
    """The engine's streaming counters now (numeric fields of its stream stats), or None."""
    stats = getattr(engine, "stream_stats", None)
    if stats is None:
        return None
    out = {}
    for f in fields(stats):  # counters only (a nested one flattened: flash.bytes -> flash_bytes)
        v = getattr(stats, f.name)
        items = asdict(v).items() if is_dataclass(v) else [(None, v)]
        out.update(
            {"_".join(filter(None, (f.name, k))): x for k, x in items if type(x) in (int, float)}
        )
    return out


def _add_counters(total: dict | None, before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return total
    total = total or dict.fromkeys(after, 0)
    return {k: total[k] + after[k] - before[k] for k in after}


def _tg_summary(c: dict | None, tokens: int) -> dict | None:
    if c is None or not tokens:
        return None
    c = {**c, "tokens": tokens}
    if c.get("lookups"):
        c["hit_rate"] = c["hits"] / c["lookups"]
    if c.get("prefetched", 0) > c.get("prefetch_cancelled", 0):
        c["prefetch_accuracy"] = c["prefetch_used"] / (c["prefetched"] - c["prefetch_cancelled"])
    for k in ("read_bytes", "flash_bytes"):  # experts / neuron bundles, and streamed layers
        if k in c:
            c["flash_bytes_per_token"] = c[k] / tokens
    return c


def bench_model(
    path,
    *,
    threads: int,
    n_prompt: int = 128,
    n_gen: int = 64,
    reps: int = 3,
    name: str | None = None,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
    kv_cache: str | None = None,
    depth: int = 0,
):
    """Open a model file or artifact (the opening timed as load) and :func:`bench` it (a cache
    for the longer of the prompt and ``depth``, plus the generated tokens).
    Returns ``(result, engine)``."""
    import time
    from pathlib import Path

    from edgert.runtime.open import open_engine

    p = Path(path)
    is_art = p.is_dir() and (p / "manifest.json").exists()
    if is_art:  # the runtime's libraries belong to the baseline, not to the model
        import edgert.runtime.engine  # noqa: F401
        from edgert.runtime.tokenizer import backend

        if backend() == "tokenizers":  # a phone has no wheel: the Python reader is loaded per model
            import tokenizers  # noqa: F401
    baseline = rss_bytes()
    t0 = time.perf_counter()
    engine = open_engine(
        p, max_ctx=max(n_prompt, depth) + n_gen + 16, dram_budget=dram_budget, experts=experts,
        ffn=ffn,
        kv_cache=kv_cache,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    if is_art:
        art = engine.source.art
        size, bits = art.nbytes(), art.manifest.get("quant", {}).get("avg_bits")
    else:
        size, bits = (p.stat().st_size if p.is_file() else 0), None
    r = bench(
        engine,
        model=name or p.name,
        kind="artifact" if is_art else "reference",
        size_bytes=size,
        bits=bits,
        threads=threads,
        load_s=load_s,
        n_prompt=n_prompt,
        n_gen=n_gen,
        reps=reps,
        depth=depth,
    )
    r.baseline_rss_bytes = baseline
    plan = getattr(engine, "dram_plan", None)
    if plan is not None:
        r.dram = plan.to_dict()
    stats = getattr(engine, "stream_stats", None)
    if stats is not None:
        r.stream = stats.to_dict()
    return r, engine


def predict(r: BenchResult, plan, figures) -> None:
    """Fill ``r.prediction`` from ``plan`` (edgert.plan: DramPlan, MoePlan, SparsePlan) on
    ``figures`` (edgert.plan.cost.DeviceFigures): decode at the middle of the tg run's context."""
    from edgert.plan.cost import predict_decode

    d = predict_decode(plan, figures, pos=max(r.depth, 1) + r.n_gen // 2).to_dict()
    d["peak_rss_bytes"] = r.baseline_rss_bytes + plan.planned
    d["tg_measured_over_predicted"] = r.tg_tok_s / d["tok_s"] if d["tok_s"] else None
    r.prediction = d


def predict_board(plan, board, r: BenchResult) -> dict:
    """The decode prediction for ``plan`` on the board ``board`` (a target) itself, at as many
    threads as the run used, up to its cores."""
    from edgert.plan.cost import DeviceFigures, predict_decode

    fig = DeviceFigures.from_target(board, threads=min(r.threads, board.cores))
    return predict_decode(plan, fig, pos=max(r.depth, 1) + r.n_gen // 2).to_dict()


def markdown_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows (the first one the header) as the lines of a padded Markdown table."""
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return lines


def table(r: BenchResult) -> str:
    """The llama-bench table: model | size | bits | threads | test | t/s."""
    size = f"{r.size_bytes / 2**20:.1f} MiB"
    bits = f"{r.bits:.2f}" if r.bits else "f32"
    rows = [("model", "size", "bits", "threads", "test", "t/s")]
    if r.n_prompt:
        rows.append(
            (
                r.model,
                size,
                bits,
                str(r.threads),
                f"pp{r.n_prompt}",
                f"{r.pp_tok_s:.2f} ± {r.pp_tok_s_std:.2f}",
            )
        )
    if r.n_gen:
        rows.append(
            (
                r.model,
                size,
                bits,
                str(r.threads),
                f"tg{r.n_gen}" + (f" @ d{r.depth}" if r.depth else ""),
                f"{r.tg_tok_s:.2f} ± {r.tg_tok_s_std:.2f}",
            )
        )
    lines = markdown_table(rows)
    lines.append(
        f"load {r.load_s:.2f} s, time to first token {r.ttft_s * 1e3:.1f} ms "
        f"(pp{r.n_prompt}), peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB"
    )
    if r.dram and r.dram.get("streamed"):
        d = r.dram
        lines.append(
            f"DRAM plan: {len(d['streamed'])} of {len(d['layer_bytes'])} layers stream "
            f"({d['streamed_bytes_per_token'] / 1e6:.1f} MB per token), plan "
            f"{d['planned'] / 1e6:.1f} MB of budget {d['budget'] / 1e6:.1f} MB; flash "
            f"{r.flash_bytes_per_token / 1e6:.1f} MB per token measured"
        )
    if r.stream and "hit_rate" in r.stream:
        s = r.stream
        acc = ", ".join(f"{k} {v:.0%}" for k, v in s["predictor_accuracy"].items())
        lines.append(
            f"experts: {r.dram['slots']} of {r.dram['n_experts']} cached, hit rate "
            f"{s['hit_rate']:.0%}, prefetch accuracy {s['prefetch_accuracy']:.0%} (predictors: "
            f"{acc}), {r.flash_bytes_per_token / 1e6:.1f} MB read per token, "
            f"{s['stall_seconds']:.2f} s waiting for reads"
        )
    if r.emulation:
        e = r.emulation
        u = e.get("usage") or {}
        lines.append(
            f"emulated {e['target']}: memory limit {e['memory_limit_bytes'] / 1e6:.1f} MB "
            f"(cgroup peak {u.get('memory_peak_bytes', 0) / 1e6:.1f} MB, page cache included), "
            f"flash reads throttled to {e['flash_read_bps'] / 1e6:.0f} MB/s "
            f"({u.get('disk_read_bytes', 0) / 1e6:.1f} MB read)"
        )
    if r.prediction and r.n_gen:
        p = r.prediction
        lines.append(
            f"predicted on {p['device']}: tg {p['tok_s']:.2f} t/s ({p['bound']}-bound: DRAM "
            f"{p['dram_seconds'] * 1e3:.1f} ms, flash {p['flash_seconds'] * 1e3:.1f} ms per "
            f"token), peak RSS {p['peak_rss_bytes'] / 2**20:.0f} MiB; measured/predicted tg "
            f"{p['tg_measured_over_predicted']:.2f}"
        )
    if r.prediction_board and r.n_gen:
        b = r.prediction_board
        lines.append(
            f"predicted on {b['device']} itself (its CPU and DRAM figures too): tg "
            f"{b['tok_s']:.2f} t/s ({b['bound']}-bound)"
        )
    if r.stream_tg and r.n_gen:
        c, hit = r.stream_tg, ""
        if "hit_rate" in c:
            hit = f"hit rate {c['hit_rate']:.0%}, "
        per = f" (predicted {p['flash_bytes_per_token'] / 1e6:.2f})" if r.prediction else ""
        lines.append(
            f"over the tg runs: {hit}{c['flash_bytes_per_token'] / 1e6:.2f} MB read per "
            f"token{per}, {c['stall_seconds'] / c['tokens'] * 1e3:.2f} ms per token waiting "
            f"for reads"
        )
    return "\n".join(lines)
