import itertools
import json
import subprocess
import sys

import numpy as np
from conftest import run_cli
from test_reference_archs import CONFIGS, random_model

from edgert.measure.bench import bench, rss_bytes, table
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
    t = table(r)
    assert "pp16" in t and "tg5" in t


#: what the benchmarked child holds resident (touched), and the parent's resident ballast when it
#: starts the child: far apart, so neither bound below is met by accident (the child's own
#: interpreter, numpy and edgert come to about 40 MiB)
CHILD_TOUCHED, PARENT_BALLAST = 64 << 20, 512 << 20

PEAK_RSS_CHILD = f"""
import json, resource
import numpy as np
from edgert.measure.bench import bench, rss_bytes

class Eng:
    cfg = type("C", (), {{"vocab_size": 8}})()
    def reset(self):
        pass
    def forward(self, tokens, last_only=True):
        return np.zeros(8, np.float32)

held = np.ones({CHILD_TOUCHED}, np.uint8)  # written, so resident
rss = rss_bytes()  # before the peak is read: a peak is never below an earlier RSS
r = bench(Eng(), model="m", kind="reference", size_bytes=1, bits=None, threads=1, load_s=0.0,
          n_prompt=4, n_gen=2, reps=1)
print(json.dumps({{"peak": r.peak_rss_bytes, "rss": rss,
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def test_peak_rss_is_the_process_own_peak():
    """peak_rss_bytes is the benchmarked process's own peak: at least what it held resident
    (its RSS read before, and the array it touched), and not its parent's size,
    which getrusage's ru_maxrss carries into a child that was forked and then exec'd."""
    ballast = np.ones(PARENT_BALLAST, np.uint8)
    parent_rss = rss_bytes()
    # preexec_fn makes subprocess fork (not vfork/posix_spawn): the child's address space is a
    # copy of this process's until exec, as when a large process starts a benchmark
    r = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD], capture_output=True, text=True,
                       preexec_fn=lambda: None, timeout=120, check=False)  # fmt: skip
    del ballast
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # the trap is set: getrusage's peak holds the parent's memory copied at fork (the ballast)
    assert d["ru_maxrss"] >= PARENT_BALLAST
    assert CHILD_TOUCHED <= d["rss"] <= d["peak"] < PARENT_BALLAST <= parent_rss


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
    # pp's warm-up (1 random id), tg's untimed warm-up (one token: no cache learns from the
    # tokens), then the two timed tg runs
    assert [len(r) for r in runs] == [1, 1 + 1, 7, 7]
    for first, *gen in runs[1:]:
        assert len(first) == 1 and gen == [[417]] * len(gen)
    assert r.stream_tg is None and len(r.samples["tg_tok_s"]) == 2


class _Counting(_Peaked):
    """A streaming engine with an expert cache: one lookup per forward, counted in
    ``stream_stats``; tg's warm-up runs the cache to its steady state (TRACE_WARMUP tokens)."""

    def __init__(self, vocab: int, peak: int):
        super().__init__(vocab, peak)
        self.stream_stats = ExpertStats()
        self.expert_cache = object()

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


def test_depth_puts_the_tg_runs_behind_a_prompt_of_that_length():
    """--depth D: each tg run (and its warm-up) starts after an untimed D-token prompt, so
    decode is measured at that context; the table says so as llama-bench does."""
    eng = _Counting(vocab=1000, peak=417)
    r = bench(
        eng, model="m", kind="reference", size_bytes=1, bits=None, threads=1, load_s=0.0,
        n_prompt=5, n_gen=4, reps=3, depth=40,
    )  # fmt: skip
    lengths = [len(f) for f in eng.fed if f is not None]
    # pp warm-up and runs, then per tg run (warm-up first): the 40-token prompt, then 1-token steps
    assert lengths[:4] == [5, 5, 5, 5]
    assert lengths[4:] == [40] + [1] * TRACE_WARMUP + ([40] + [1] * 4) * 3
    assert r.depth == 40 and r.stream_tg["tokens"] == 12
    assert "tg4 @ d40" in table(r)
