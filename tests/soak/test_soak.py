"""Soak: 10 000 generated tokens of the real SmolLM2 under a DRAM budget, with its experts
streaming (``--moefy 8x2``) and with its FFN neurons streaming (``--sparse-ffn``). Peak RSS stays
within the budget plus the process's fixed overhead, and nothing grows as the run goes on: not
the resident set after the first turn, not the open files, not the threads.

Benchmark tier (minutes): ``./test.sh soak``; the figures it prints are in BENCHMARKS.md
("Soak")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FIXED_OVERHEAD

pytestmark = pytest.mark.soak

TOKENS = 10_000
#: SmolLM2's context is 8192 tokens: the soak is a session of turns, each from an empty cache
TURN = 2_000
#: the resident set may move by this much between the first turn and the last (pages the
#: allocator keeps, page tables); a leak of a KV cache or a read buffer per turn is larger
DRIFT = 8 << 20

CHILD = """
import json, os, sys
path, (budget, n, turn), opts = sys.argv[1], map(int, sys.argv[2:5]), json.loads(sys.argv[5])
import tokenizers, edgert.runtime.engine  # the runtime's own footprint: the baseline
from edgert.measure.bench import peak_rss_bytes, rss_bytes  # VmHWM: ru_maxrss carries pytest's
from edgert.runtime.generate import Sampler, generate
from edgert.runtime.open import open_artifact_engine
base = rss_bytes()
eng = open_artifact_engine(path, max_ctx=turn + 32, dram_budget=budget, **opts)
prompts = ["The three primary colors are", "Once upon a time", "def fib(n):", "In 1969,"]
done, turns, after = 0, [], []
while done < n:
    k = len(turns)
    r = generate(eng, prompt=prompts[k % len(prompts)], n_predict=min(turn, n - done),
                 sampler=Sampler(temp=0.8, seed=k), stop_at_eos=False)
    done += len(r.tokens)
    turns.append({"tokens": done, "tok_s": r.tg_tok_s,
                  "rss": rss_bytes(), "fds": len(os.listdir("/proc/self/fd")),
                  "threads": len(os.listdir("/proc/self/task"))})
stats = eng.stream_stats
print(json.dumps({"base": base, "peak": peak_rss_bytes(), "tokens": done,
                  "planned": eng.dram_plan.planned, "turns": turns,
                  "stream": stats.to_dict() if stats is not None else None}, default=float))
"""


def _compile(tmp_path_factory, name: str, *options: str):
    """SmolLM2 at 4 bits, rounded to nearest: what is held is memory, which the quantization
    method does not change, and rounding needs no statistics (minutes less to compile)."""
    out = tmp_path_factory.mktemp("soak") / f"{name}.edgert"
    r = subprocess.run(
        [sys.executable, "-m", "edgert", "compile", "smollm2-135m", "--target", "host",
         "--bits", "4", "--quant-method", "rtn", *options, "-o", str(out)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _soak(art, budget: int, opts: dict) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(art), str(budget), str(TOKENS), str(TURN),
         json.dumps(opts)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    first, last = d["turns"][0], d["turns"][-1]
    rss = ", ".join(f"{t['rss'] / 2**20:.1f}" for t in d["turns"])
    speed = ", ".join(f"{t['tok_s']:.1f}" for t in d["turns"])
    bound = d["base"] + budget + FIXED_OVERHEAD
    print(
        f"soak {art.name}: {d['tokens']} tokens in {len(d['turns'])} turns, budget "
        f"{budget / 1e6:.1f} MB (plan {d['planned'] / 1e6:.1f} MB), baseline "
        f"{d['base'] / 2**20:.1f} MiB, peak RSS {d['peak'] / 2**20:.1f} MiB (bound "
        f"{bound / 2**20:.1f}), RSS after each turn {rss} MiB, decode {speed} tok/s, "
        f"open files {first['fds']} -> {last['fds']}, threads "
        f"{first['threads']} -> {last['threads']}; stream {json.dumps(d['stream'])}"
    )
    assert d["tokens"] == TOKENS and d["planned"] <= budget
    assert d["peak"] <= bound, d
    assert last["rss"] <= first["rss"] + DRIFT, d["turns"]
    assert [t["fds"] for t in d["turns"]] == [first["fds"]] * len(d["turns"])
    assert [t["threads"] for t in d["turns"]] == [first["threads"]] * len(d["turns"])
    return d


def test_experts_streaming_soak(tmp_path_factory):
    from edgert.format.artifact import Artifact
    from edgert.plan.moe import plan_moe

    art = _compile(tmp_path_factory, "smol-m82", "--moefy", "8x2")
    a = Artifact.open(art)
    p = plan_moe(a, a.config(), max_ctx=TURN + 32, budget=None)
    budget = p.minimum + 4 * a.config().n_layers * p.expert_bytes  # half the experts cached
    d = _soak(art, budget, {})
    s = d["stream"]
    assert s["read_bytes"] > 0 and 0 < s["hits"] < s["lookups"]


def test_sparse_ffn_soak(tmp_path_factory):
    from edgert.format.artifact import Artifact
    from edgert.plan.sparse import plan_sparse

    art = _compile(tmp_path_factory, "smol-sparse", "--sparse-ffn")
    a = Artifact.open(art)
    p = plan_sparse(a, a.config(), max_ctx=TURN + 32, budget=1 << 40, sparsity=0.5)
    budget = p.minimum + p.neurons * p.bundle_bytes // 4  # a quarter of the neurons cached
    d = _soak(art, budget, {"ffn": {"sparsity": 0.5, "window": 0}})
    assert d["stream"]["flash_bytes"] > 0
