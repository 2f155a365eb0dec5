"""Text generation: sampling (greedy, temperature, top-k, top-p, seed) and the decode loop."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from edgert.errors import EdgertError


@dataclass
class Sampler:
    temp: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    seed: int | None = None
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.temp < float("inf"):  # nan and inf too
            raise EdgertError(
                f"--temp {self.temp} is not a temperature >= 0", "use 0 for greedy decoding"
            )
        if not 0 < self.top_p <= 1:
            raise EdgertError(f"--top-p {self.top_p} is outside (0, 1]")
        if self.top_k < 0:
            raise EdgertError(f"--top-k {self.top_k} is negative", "use 0 to disable top-k")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temp == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temp
        if not self.top_k and self.top_p >= 1.0:  # the whole distribution: no order needed
            p = np.exp(z - z.max())
            return int(self.rng.choice(len(p), p=p / p.sum()))
        order = np.argsort(-z, kind="stable")
        if self.top_k:
            order = order[: self.top_k]
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[self.rng.choice(len(order), p=p)])


@dataclass
class GenerateResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    stop_reason: str  # "eos" | "length"
    pp_s: float  # prompt processing time
    tg_s: float  # time for the generated tokens after the first
    pp_tok_s: float
    tg_tok_s: float

    def to_dict(self, engine=None) -> dict:
        """The result; with ``engine``, also its DRAM plan and what it read from flash (where it
        runs under a budget)."""
        d = asdict(self)
        if getattr(engine, "kv_cache", None):
            d["kv_cache"] = engine.kv_cache
        plan = getattr(engine, "dram_plan", None)
        if plan is not None:
            stats = getattr(engine, "stream_stats", None)
            d["dram"] = plan.to_dict()
            d["stream"] = stats.to_dict() if stats is not None else None
        return d


class _Detok:
    """Incremental detokenizer: yields the new text for each token, holding back partial UTF-8."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new = text[self.emitted :]
        self.emitted = len(text)
        return new


def generate(
    engine,
    *,
    prompt: str | None = None,
    prompt_ids: list[int] | None = None,
    n_predict: int = 64,
    sampler: Sampler | None = None,
    on_text: Callable[[str], None] | None = None,
    stop_at_eos: bool = True,
) -> GenerateResult:
    """Generate up to ``n_predict`` tokens after ``prompt`` (or ``prompt_ids``)."""
    tok = engine.tokenizer
    if prompt_ids is None:
        if tok is None:
            raise EdgertError("this model has no tokenizer", "pass token ids instead of text")
        prompt_ids = tok.encode(prompt or "")
    if not prompt_ids:
        raise EdgertError("the prompt is empty", "pass some text with -p")
    if n_predict < 0:
        raise EdgertError(f"-n {n_predict} is negative")
    sampler = sampler or Sampler()
    stops = tok.stop_ids if (tok is not None and stop_at_eos) else set()
    detok = _Detok(tok) if tok is not None else None
    engine.reset()
    t0 = time.perf_counter()
    logits = engine.forward(prompt_ids, last_only=True)
    t1 = time.perf_counter()
    out: list[int] = []
    text_parts: list[str] = []
    reason = "length"
    t_first = t1
    for step in range(n_predict):
        nxt = sampler(logits)
        if nxt in stops:
            reason = "eos"
            break
        out.append(nxt)
        if detok is not None:
            piece = detok.push(nxt)
            if piece:
                text_parts.append(piece)
                if on_text:
                    on_text(piece)
        if step == 0:
            t_first = time.perf_counter()
        if step + 1 < n_predict:
            logits = engine.forward([nxt], last_only=True)
    t2 = time.perf_counter()
    text = tok.decode(out) if tok is not None else ""
    if detok is not None and on_text and len(text) > detok.emitted:
        on_text(text[detok.emitted :])
    n_tg = max(len(out) - 1, 0)
    tg_s = t2 - t_first
    return GenerateResult(
        text=text,
        tokens=out,
        prompt_tokens=len(prompt_ids),
        stop_reason=reason,
        pp_s=t1 - t0,
        tg_s=tg_s,
        pp_tok_s=len(prompt_ids) / (t1 - t0) if t1 > t0 else 0.0,
        tg_tok_s=n_tg / tg_s if n_tg and tg_s > 0 else 0.0,
    )
