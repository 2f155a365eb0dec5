"""Dense FFNs split into experts (``edgert compile --moefy EXPERTSxTOPK``), so expert offloading
(edgert.runtime.experts) serves dense models too.

Calibration runs the float model over calibration tokens and records each layer's FFN input x.
A neuron's contribution to a token is |act(gate x) * (up x)| times the norm of its down column.
Per layer:

- **Experts**: neurons are split into EXPERTS groups of equal size by balanced k-means on their
  contribution patterns over the calibration tokens (cosine similarity), so neurons that fire
  together land in the same expert.
- **Router**: a linear map (EXPERTS x dim, no bias: the artifact's router) fitted by ridge
  regression from x to each expert's share of the token's total contribution. At run time the
  TOPK experts with the highest scores run, each with weight 1: their neurons add up exactly as
  in the dense FFN, so TOPK = EXPERTS is the dense model.
- **Shares**: the fraction of a token's FFN contribution the router's TOPK experts hold, and the
  best TOPK experts' (an oracle that knew the activations); measured on the last fifth of the
  calibration tokens with a router fitted on the rest, then the router is refitted on all.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.model import ModelGraph, TensorInfo
from edgert.runtime.reference import ACTIVATION

#: calibration tokens (the router fit has dim unknowns per expert)
MOEFY_CALIB_TOKENS = 512
#: source types that are not quantized (any split of them is rounded once)
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
#: ridge strength relative to the mean diagonal of x^T x
RIDGE = 1e-2
KMEANS_ITERS = 20


def parse_moefy(text: str, ffn_dim: int | None = None) -> tuple[int, int]:
    """``"8x2"`` -> (8 experts, 2 used per token), checked against the FFN width if given."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise EdgertError(
            f"cannot read --moefy {text!r}", "write EXPERTSxTOPK, e.g. 8x2: 8 experts, 2 per token"
        )
    e, k = int(m.group(1)), int(m.group(2))
    if e < 2 or not 1 <= k <= e:
        raise EdgertError(
            f"--moefy {text}: needs at least 2 experts and 1 <= TOPK <= EXPERTS",
            "for example 8x2",
        )
    if ffn_dim is not None and ffn_dim % e:
        divs = [d for d in range(2, min(ffn_dim, 64) + 1) if ffn_dim % d == 0]
        raise EdgertError(
            f"--moefy {text}: the FFN width {ffn_dim} does not split into {e} equal experts",
            f"choose EXPERTS among {', '.join(map(str, divs))}",
        )
    return e, k


def check_moefy(cfg, experts: int, top_k: int, shared: int = 0) -> None:
    """Refuse a model or split ``--moefy`` (and ``--moefy-shared``) cannot make (before any
    work)."""
    if cfg.is_moe:
        raise EdgertError("--moefy splits dense FFNs; this model already has experts")
    parse_moefy(f"{experts}x{top_k}", cfg.ffn_dim)
    if not 0 <= shared < top_k or experts - shared < 2:
        raise EdgertError(
            f"--moefy-shared {shared} with --moefy {experts}x{top_k}: the shared part must be "
            "fewer than TOPK slices and leave at least 2 experts to route",
            f"use 0..{min(top_k, experts - 1) - 1}",
        )


def balanced_kmeans(x: np.ndarray, k: int, *, iters: int = KMEANS_ITERS, seed: int = 0):
    """Labels (n,) putting exactly n // k of the unit-norm rows of ``x`` in each of ``k``
    clusters (n must be a multiple of k): k-means on cosine similarity whose assignment step
    gives rows to their most similar centroid that still has room, most similar pairs first."""
    n = len(x)
    size = n // k
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(n, k, replace=False)]
    labels = np.full(n, -1)
    for _ in range(iters):
        new = _assign(x @ cent.T, size)
        if (new == labels).all():
            break
        labels = new
        cent = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
        cent /= np.linalg.norm(cent, axis=1, keepdims=True) + 1e-12
    return labels


def _assign(sim: np.ndarray, size: int) -> np.ndarray:
    n, k = sim.shape
    labels = np.full(n, -1)
    room = np.full(k, size)
    left = n
    for flat in np.argsort(-sim, axis=None, kind="stable"):
        i, j = divmod(int(flat), k)
        if labels[i] < 0 and room[j]:
            labels[i] = j
            room[j] -= 1
            left -= 1
            if not left:
                break
    return labels


def fit_router(x: np.ndarray, share: np.ndarray) -> np.ndarray:
    """(experts, dim) least-squares map from x (n, dim) to share (n, experts), ridge regularized."""
    g = x.T @ x
    g += RIDGE * np.trace(g) / len(g) * np.eye(len(g))
    return np.linalg.solve(g, x.T @ share).T.astype(np.float32)


def shares(x: np.ndarray, share: np.ndarray, router: np.ndarray, top_k: int) -> tuple[float, float]:
    """Mean fraction of a token's FFN contribution held by the router's top-k experts, and by the
    best top-k experts (an oracle that knew the activations)."""
    pick = np.argsort(-(x @ router.T), axis=1, kind="stable")[:, :top_k]
    got = np.take_along_axis(share, pick, axis=1).sum(axis=1).mean()
    best = -np.sort(-share, axis=1)[:, :top_k].sum(axis=1).mean()
    return float(got), float(best)


def split_layer(
    x: np.ndarray, gate, up, down, experts: int, top_k: int, seed: int = 0, act: str = "silu",
    unit: int = 1, shared: int = 0,
):  # fmt: skip
    """One dense FFN -> (neuron order grouped by expert (ffn,), router (experts, dim), (router's,
    oracle's) share of the contribution on held-out tokens). ``act``: the FFN's gate activation.
    ``unit``: experts take runs of that many consecutive neurons whole (the down projection's
    quantization groups of a quantized source, so each expert keeps them). ``shared``: that many
    of the ``experts`` equal slices are one shared expert every token runs, first in the order —
    the runs of neurons with the largest mean contribution; the others are clustered into
    ``experts - shared`` routed experts, ``top_k - shared`` per token (the router's shape and
    the shares are theirs, of what the shared expert leaves)."""
    h = ACTIVATION[act](x @ gate.T) * (x @ up.T)
    contrib = np.abs(h) * np.linalg.norm(down, axis=0)  # (n, ffn)
    runs = contrib.reshape(len(x), -1, unit).sum(axis=2)  # (n, ffn / unit)
    n_shared = shared * runs.shape[1] // experts
    hot = np.argsort(-runs.mean(axis=0), kind="stable")[:n_shared]
    rest = np.setdiff1d(np.arange(runs.shape[1]), hot)
    routed = experts - shared
    feats = runs[:, rest].T
    feats = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)
    run_labels = np.full(runs.shape[1], -1)
    run_labels[rest] = balanced_kmeans(feats, routed, seed=seed)
    labels = np.repeat(run_labels, unit)  # -1: the shared expert
    onehot = np.eye(routed, dtype=np.float32)[labels[labels >= 0]]  # (routed neurons, routed)
    share = contrib[:, labels >= 0] @ onehot
    share /= share.sum(axis=1, keepdims=True) + 1e-12
    cut = len(x) * 4 // 5
    held_out = shares(x[cut:], share[cut:], fit_router(x[:cut], share[:cut]), top_k - shared)
    order = np.argsort(labels, kind="stable")
    return order, fit_router(x, share), held_out


def moefy_model(
    model: ModelGraph, experts: int, top_k: int, tokens: list[int], *, group: int = 32,
    shared: int = 0, progress=None,
):  # fmt: skip
    """The model with every dense FFN split into ``experts`` experts (``top_k`` per token) and a
    router per layer; returns (model, manifest record). Where every expert runs (``top_k ==
    experts``: the dense model streamed in experts), a quantized source's FFN neurons are split in
    runs of ``group`` (the quantization group): the experts' down projections keep the source's
    groups and are not rounded across them again, so the split costs nothing. Where the router
    chooses, neurons are clustered one by one: runs of a group's neurons, which do not fire
    together, cost far more than that second rounding (BENCHMARKS, "Flash-saving
    transforms"). ``shared`` of the slices form a shared expert (:func:`split_layer`),
    behind a sigmoid gate of weight 0 (one half) with its down projection doubled (exact)."""
    from edgert.compiler.transform.calibrate import ffn_inputs

    from edgert.progress import Progress

    c = model.config
    check_moefy(c, experts, top_k, shared)
    fe = c.ffn_dim // experts
    routed, sf = experts - shared, shared * fe  # routed experts, the shared expert's width
    xs = ffn_inputs(model, tokens)
    arrays: dict[str, np.ndarray] = {}
    split = {names.weight(i, p) for i in range(c.n_layers) for p in names.FFN_PROJECTIONS}
    infos = [i for n, i in model.infos.items() if n not in split]
    held = []
    down_type = model.infos[names.weight(0, "ffn_down")].source_type
    every = top_k == experts  # every expert runs: which neurons go together changes nothing
    unit = group if every and down_type not in FLOAT_TYPES and fe % group == 0 else 1
    with Progress(c.n_layers, "splitting FFNs into experts", enabled=progress) as bar:
        for i in range(c.n_layers):
            dense = [names.weight(i, p) for p in names.FFN_PROJECTIONS]
            gate, up, down = (model.tensor(n) for n in dense)
            order, router, sh = split_layer(
                xs[i], gate, up, down, experts, top_k, seed=i, act=model.config.activation,
                unit=unit, shared=shared,
            )  # fmt: skip
            held.append(sh)
            src = model.infos[names.weight(i, "ffn_up")].source_type
            mine, theirs = order[:sf], order[sf:]  # the shared expert's neurons, the routed
            new = {
                names.experts(i, "gate"): gate[theirs].reshape(routed, fe, c.dim),
                names.experts(i, "up"): up[theirs].reshape(routed, fe, c.dim),
                names.experts(i, "down"): np.ascontiguousarray(
                    down[:, theirs].reshape(c.dim, routed, fe).transpose(1, 0, 2)
                ),
            }
            if shared:
                new |= {
                    names.shared(i, "gate"): gate[mine],
                    names.shared(i, "up"): up[mine],
                    names.shared(i, "down"): 2 * down[:, mine],  # behind sigmoid(0) = 1/2
                }
                arrays[names.shared_gate(i)] = np.zeros(c.dim, np.float32)
                infos.append(TensorInfo(names.shared_gate(i), (c.dim,), "F32"))
            arrays[names.router(i)] = router
            infos.append(TensorInfo(names.router(i), router.shape, "F32"))
            for n, a in new.items():
                arrays[n] = a
                infos.append(TensorInfo(n, a.shape, src))
            for n in dense:
                model.drop(n)
            bar.update(1)
    cfg = dataclasses.replace(
        c,
        n_experts=routed,
        n_experts_used=top_k - shared,
        expert_ffn_dim=fe,
        shared_expert_ffn_dim=sf,
        expert_weights_norm=False,
        expert_weights_unit=True,
    )
    out = ModelGraph(
        cfg,
        infos,
        lambda n: arrays[n] if n in arrays else model.tensor(n),
        tokenizer=model.tokenizer,
        source=model.source,
    )
    record = {
        "experts": experts,
        "top_k": top_k,
        "shared": shared,
        "calib_tokens": len(tokens),
        "neurons_per_unit": unit,
        "router_share": [round(h[0], 4) for h in held],
        "oracle_share": [round(h[1], 4) for h in held],
    }
    return out, record
