"""Calibration tokens: from a text file (``--calib FILE``) or sampled from the model itself
(data-free calibration: the model writes its own calibration text, temperature 1, fixed seed;
cached under the cache directory by the model's content, length and seed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.model import ModelGraph


#: the longest self-written calibration sequence (longer requests are several sequences)
SELF_SEQ = 512


def calibration_tokens(
    model: ModelGraph, *, file: str | Path | None = None, n_tokens: int = 64, seed: int = 0
) -> list[int]:
    tok = model.tokenizer
    if file is not None:
        p = Path(file)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EdgertError(f"cannot read calibration text {p}: {e}") from e
        if tok is None:
            raise EdgertError("the model has no tokenizer to read --calib text with")
        ids = tok.encode(text)
        if len(ids) < n_tokens:
            raise EdgertError(
                f"{p} has {len(ids)} tokens; calibration needs {n_tokens}",
                "pass a longer text (or fewer --calib-tokens)",
            )
        return ids[:n_tokens]
    from edgert.progress import Progress
    from edgert.runtime.generate import Sampler
    from edgert.runtime.reference import ReferenceEngine
    from edgert.settings import cache_dir

    cached = cache_dir() / "calib" / f"{model_fingerprint(model)}-{n_tokens}-{seed}.json"
    try:
        ids = json.loads(cached.read_text())
        if isinstance(ids, list) and len(ids) == n_tokens:
            return [int(i) for i in ids]
    except (OSError, ValueError):
        pass
    # up to SELF_SEQ tokens: one sequence; more: sequences of SELF_SEQ written side by side
    n_seq = -(-n_tokens // SELF_SEQ)
    length = -(-n_tokens // n_seq)
    eng = ReferenceEngine(model, max_ctx=length + 1, batch=n_seq)
    start = tok.meta.bos_id if tok is not None and tok.meta.bos_id is not None else 0
    samplers = [Sampler(temp=1.0, top_k=0, top_p=1.0, seed=seed + s) for s in range(n_seq)]
    seqs = [[start] for _ in range(n_seq)]
    with Progress(length * n_seq, "writing calibration text") as bar:
        logits = eng.forward([start] * n_seq)
        bar.update(n_seq)
        while len(seqs[0]) < length:
            nxt = [smp(row) for smp, row in zip(samplers, logits)]
            for sq, t in zip(seqs, nxt):
                sq.append(t)
            logits = eng.forward(nxt)
            bar.update(n_seq)
    ids = [t for sq in seqs for t in sq][:n_tokens]
    ids = [int(i) for i in np.asarray(ids)]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ids))
    os.replace(tmp, cached)
    return ids


def model_fingerprint(model: ModelGraph) -> str:
    """A short hash of the model's content: its configuration and tensors that differ between
    any two trained models (the norms of every layer and the first embedding rows)."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    parts = [names.EMBEDDING, names.OUTPUT_NORM]
    parts += [names.attn_norm(i) for i in range(model.config.n_layers)]
    for name in parts:
        a = np.ascontiguousarray(model.tensor(name)[:64], np.float32)
        h.update(name.encode() + a.tobytes())
    return h.hexdigest()[:16]


def ffn_inputs(model: ModelGraph, tokens: list[int]) -> list[np.ndarray]:
    """Each layer's FFN input (after its norm), (len(tokens), dim) float32, from one float forward
    pass of the model over ``tokens``."""
    from edgert.runtime.reference import ReferenceEngine

    class Recorder(ReferenceEngine):
        def _ffn(self, i: int, x: np.ndarray) -> np.ndarray:
            xs[i].append(x.astype(np.float32))
            return super()._ffn(i, x)

    xs: list[list[np.ndarray]] = [[] for _ in range(model.config.n_layers)]
    Recorder(model, max_ctx=len(tokens)).forward(tokens)
    return [np.concatenate(x) for x in xs]


def routing_trace(model: ModelGraph, tokens: list[int], n_prompt: int) -> dict[str, np.ndarray]:
    """How a mixture of experts routes while it decodes text: for each of ``tokens`` after the
    first ``n_prompt``, per layer (float32 (steps, layers, experts)) ``route``, the layer's router
    logits, and ``guess``, the next layer's router on the stream entering this layer's FFN (what
    the runtime reads ahead by; zero on the last layer). The planner replays it through the
    expert cache to predict hits and flash reads. One causal forward over all the tokens gives
    each token what decoding it step by step would, and touches each layer's weights once (a
    model larger than memory goes through layer by layer)."""
    from edgert.runtime.reference import ReferenceEngine, rms_norm

    c = model.config
    steps = len(tokens) - n_prompt
    route = np.zeros((steps, c.n_layers, c.n_experts), np.float32)
    guess = np.zeros_like(route)

    class Recorder(ReferenceEngine):
        def _ffn(self, i: int, x: np.ndarray) -> np.ndarray:
            route[:, i] = self._mm(x[n_prompt:], names.router(i))
            if i + 1 < c.n_layers:
                h = rms_norm(self.ffn_stream[n_prompt:], self._w(names.ffn_norm(i + 1)), c.rms_eps)
                guess[:, i] = self._mm(h, names.router(i + 1))
            return super()._ffn(i, x)

    Recorder(model, max_ctx=len(tokens)).forward(tokens, last_only=True)
    return {"route": route, "guess": guess}
