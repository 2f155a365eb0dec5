import numpy as np
import pytest

from edgert.errors import EdgertError
from edgert.runtime.generate import Sampler

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03], dtype=np.float32))


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=100).astype(np.float32)
        assert Sampler(temp=0)(x) == int(np.argmax(x))


def test_top_k_1_and_tiny_top_p_are_greedy():
    assert all(Sampler(temp=1.0, top_k=1, seed=s)(LOGITS) == 0 for s in range(20))
    assert all(Sampler(temp=1.0, top_k=0, top_p=0.01, seed=s)(LOGITS) == 0 for s in range(20))


def test_seed_reproducible():
    a = Sampler(temp=1.0, top_k=0, top_p=1.0, seed=7)
    b = Sampler(temp=1.0, top_k=0, top_p=1.0, seed=7)
    assert [a(LOGITS) for _ in range(50)] == [b(LOGITS) for _ in range(50)]


def test_temperature_one_matches_softmax():
    s = Sampler(temp=1.0, top_k=0, top_p=1.0, seed=1)
    n = 20000
    counts = np.bincount([s(LOGITS) for _ in range(n)], minlength=5) / n
    # each frequency within 4 standard errors of its probability
    p = np.exp(LOGITS) / np.exp(LOGITS).sum()
    assert np.all(np.abs(counts - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_top_p_truncates_tail():
    # top_p 0.8 keeps {0.5, 0.25, 0.15} (cumulative 0.9 is the first >= 0.8)
    s = Sampler(temp=1.0, top_k=0, top_p=0.8, seed=3)
    seen = {s(LOGITS) for _ in range(2000)}
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("kw", [{"temp": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_bad_arguments(kw):
    with pytest.raises(EdgertError):
        Sampler(**kw)


def test_temperature_must_be_a_finite_number():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(EdgertError, match="not a temperature >= 0"):
            Sampler(temp=bad)
