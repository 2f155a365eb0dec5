import itertools
import json

import numpy as np
from conftest import run_cli
from test_reference_archs import CONFIGS, random_model

from edgert.measure.bench import bench, table
from edgert.plan.moe import TRACE_WARMUP
from edgert.plan.stats import ExpertStats
from edgert.runtime.reference import ReferenceEngine

KEYS = {
    "pp_tok_s",
    "tg_tok_s",
    "tg_tok_s_std",
    "threads",
    "peak_rss_bytes",
    "flash_bytes_per_token",
    "samples",
    "load_s",
    "ttft_s",
}


def test_bench_counts_and_table():
    m = random_model(CONFIGS["mixtral"], seed=0)
    eng = ReferenceEngine(m, max_ctx=64)
    r = bench(
        eng,
        model="tiny",
        kind="reference",
        size_bytes=1,
        bits=None,
        threads=1,
        load_s=0.0,
        n_prompt=16,
        n_gen=5,
        reps=3,
    )
    assert len(r.samples["pp_tok_s"]) == 3 and len(r.samples["tg_tok_s"]) == 3
    assert all(x > 0 for x in r.samples["tg_tok_s"])
    assert r.peak_rss_bytes > 10 << 20
    t = table(r)
    assert "pp16" in t and "tg5" in t


def test_cli_json(smollm2_path):
    r = run_cli("bench", str(smollm2_path), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert KEYS <= set(d)
    assert d["threads"] == 1 and len(d["samples"]["tg_tok_s"]) == 2 and d["tg_tok_s"] > 0


class _Peaked:
    """An engine whose last logits always peak at ``peak``: what it was fed is recorded."""

    def __init__(self, vocab: int, peak: int):
        self.cfg = type("C", (), {"vocab_size": vocab})()
        self.peak, self.fed = peak, []

    def reset(self):
        self.fed.append(None)

    def forward(self, tokens, last_only=True):
        self.fed.append(list(tokens))
        logits = np.zeros(self.cfg.vocab_size, np.float32)
        logits[self.peak] = 100.0  # Gumbel noise above 100 is never drawn in practice
        return logits


def test_tg_feeds_back_tokens_sampled_from_the_logits():
    """tg decodes what the model writes (sampled from its last logits), not random ids, so a
    mixture of experts routes as in use; with no stream stats there is nothing per tg run."""
    eng = _Peaked(vocab=1000, peak=417)
    r = bench(
        eng, model="m", kind="reference", size_bytes=1, bits=None, threads=1, load_s=0.0,
        n_prompt=0, n_gen=6, reps=2,
    )  # fmt: skip
    resets = [i for i, f in enumerate(eng.fed) if f is None] + [len(eng.fed)]
    runs = [eng.fed[a + 1 : b] for a, b in itertools.pairwise(resets)]
    # pp's warm-up (1 random id), tg's untimed warm-up, then the two timed tg runs
    assert [len(r) for r in runs] == [1, 1 + TRACE_WARMUP, 7, 7]
    for first, *gen in runs[1:]:
        assert len(first) == 1 and gen == [[417]] * len(gen)
    assert r.stream_tg is None and len(r.samples["tg_tok_s"]) == 2


class _Counting(_Peaked):
    """A streaming engine: one lookup per forward, counted in ``stream_stats``."""

    def __init__(self, vocab: int, peak: int):
        super().__init__(vocab, peak)
        self.stream_stats = ExpertStats()

    def forward(self, tokens, last_only=True):
        self.stream_stats.lookups += 1
        return super().forward(tokens, last_only)


def test_pp_runs_before_tg_and_tg_counts_only_its_timed_tokens():
    """pp's random ids run before tg's warm-up, not between tg runs; stream_tg counts the timed
    tokens' lookups alone (not the 1-token prompts, warm-ups or pp)."""
    eng = _Counting(vocab=1000, peak=417)
    r = bench(
        eng, model="m", kind="reference", size_bytes=1, bits=None, threads=1, load_s=0.0,
        n_prompt=5, n_gen=4, reps=3,
    )  # fmt: skip
    lengths = [len(f) for f in eng.fed if f is not None]
    assert lengths[:4] == [5, 5, 5, 5]  # the pp warm-up and 3 pp runs, then only 1-token calls
    assert set(lengths[4:]) == {1} and len(lengths[4:]) == (1 + TRACE_WARMUP) + 3 * (1 + 4)
    assert r.stream_tg["lookups"] == r.stream_tg["tokens"] == 12
