"""The real SmolLM2-135M: tokenizer against llama.cpp's ids, greedy tokens against the golden file.

Golden data is regenerated only by tools/make_golden.py.
"""

import json
from pathlib import Path

import pytest

from edgert.runtime.generate import Sampler, generate
from edgert.runtime.reference import ReferenceEngine

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_smollm2.json").read_text())


@pytest.mark.parametrize("text", list(GOLDEN["tokenize"]))
def test_tokenizer_matches_llama_cpp(smollm2, text):
    ids = smollm2.tokenizer.encode(text)
    assert ids == GOLDEN["tokenize"][text]
    assert smollm2.tokenizer.decode(ids, skip_special=False) == text


@pytest.mark.parametrize("prompt", list(GOLDEN["greedy"]))
def test_greedy_tokens(smollm2, prompt):
    eng = ReferenceEngine(smollm2, max_ctx=256)
    r = generate(eng, prompt=prompt, n_predict=32, sampler=Sampler(temp=0), stop_at_eos=False)
    assert r.tokens == GOLDEN["greedy"][prompt]


def test_chat_answer_is_coherent(smollm2):
    eng = ReferenceEngine(smollm2, max_ctx=256)
    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    r = generate(eng, prompt=prompt, n_predict=24, sampler=Sampler(temp=0))
    assert "Paris" in r.text
    assert r.stop_reason == "eos"  # stops at <|im_end|> instead of running on


def test_prefill_equals_incremental_decode(smollm2):
    """Batched prefill and token-by-token decode through the KV cache give the same logits."""
    import numpy as np

    ids = smollm2.tokenizer.encode("The quick brown fox jumps over the lazy dog because")
    a = ReferenceEngine(smollm2, max_ctx=64)
    full = a.forward(ids)
    b = ReferenceEngine(smollm2, max_ctx=64)
    step = np.stack([b.forward([t], last_only=True) for t in ids])
    assert np.max(np.abs(full - step)) < 2e-3  # float32 summation order only
