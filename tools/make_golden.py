"""Regenerate tests/data/golden_smollm2.json — the only way golden files change.

Token ids of tricky strings come from llama.cpp (llama-cpp-python must be installed, as
`tools/setup.sh bench` does), so the tokenizer is checked against an independent implementation;
greedy continuations come from edgert's reference forward and guard against regressions.

    tools/setup.sh bench && .venv/bin/python tools/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_smollm2.json"

STRINGS = [
    "Hello world! The year 2024 was   great.\n\nYes",
    "def f(x):\n    return x**2  # square\n",
    "Ünïcödé — “quotes” and emoji 🙂 in 東京",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n",
    "   leading and trailing spaces   ",
]
PROMPTS = [
    "The three primary colors are",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
N_TOKENS = 32


def main() -> None:
    from llama_cpp import Llama

    from edgert.device.hub import pull
    from edgert.runtime.generate import Sampler, generate
    from edgert.runtime.open import open_engine

    path = pull("smollm2-135m")
    llm = Llama(str(path), n_ctx=256, verbose=False, vocab_only=True)
    tokens = {s: llm.tokenize(s.encode(), add_bos=False, special=True) for s in STRINGS}
    engine = open_engine(path, max_ctx=256)
    greedy = {}
    for p in PROMPTS:
        r = generate(
            engine, prompt=p, n_predict=N_TOKENS, sampler=Sampler(temp=0), stop_at_eos=False
        )
        greedy[p] = r.tokens
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {"model": "smollm2-135m", "tokenize": tokens, "greedy": greedy},
            indent=1,
            ensure_ascii=False,
        )
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
