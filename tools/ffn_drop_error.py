"""What dropping half of each FFN costs, layer by layer, before any perplexity run: the float
model's FFN inputs on calibration tokens (self-generated, as the compiler's) and on held-out text;
per rule, the relative squared error of each layer's FFN output on the held-out tokens, given the
dense model's inputs (no error carried from layer to layer). Rules (each keeps about half the
neurons per token):

- ``gate``: \\|act(gate x)\\| above the calibrated median (``--sparsity``'s rule);
- ``gate_scaled``: the same times a per-neuron scale (mean \\|up x\\| times the down column's norm);
- ``true_h``: \\|act(gate x) * (up x)\\| times the down column's norm (needs every up row);
- ``teal``: inputs of gate and up below the median \\|x\\| zeroed, then ``true_h`` (TEAL's rule);
- ``fixed``: the same half for every token (largest mean contribution);
- ``moefy`` / ``moefy_shared``: ``--moefy 8x4`` neuron by neuron, without and with
  ``--moefy-shared 2`` (edgert.compiler.transform.moefy.split_layer and its router);
- ``refit``: ``fixed`` with the kept neurons' down projection refitted by ridge least squares on
  the calibration tokens.

    .venv/bin/python tools/ffn_drop_error.py MODEL.gguf --file tests/data/gpl-3.0.txt [--every 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from edgert.compiler.frontends import load_model
from edgert.compiler.transform.calibrate import calibration_tokens, ffn_inputs
from edgert.compiler.transform.moefy import MOEFY_CALIB_TOKENS, split_layer

from edgert.format import names
from edgert.runtime.reference import ACTIVATION


def layer_errors(xc, xh, gate, up, down, act, seed):
    """{rule: relative squared error of the FFN output on xh} for one layer."""
    f = gate.shape[0]
    dn = np.linalg.norm(down, axis=0)
    gc, uc = act(xc @ gate.T), xc @ up.T
    hc = gc * uc
    ah, uh = act(xh @ gate.T), xh @ up.T
    hh = ah * uh
    y = hh @ down.T
    err = lambda ys: float(np.sum((y - ys) ** 2) / np.sum(y**2))
    ac = np.abs(gc)
    out = {"gate": err((hh * (np.abs(ah) > np.median(ac))) @ down.T)}
    scale = np.abs(uc).mean(0) * dn
    out["gate_scaled"] = err((hh * (np.abs(ah) * scale > np.median(ac * scale))) @ down.T)
    out["true_h"] = err((hh * (np.abs(hh) * dn > np.median(np.abs(hc) * dn))) @ down.T)
    xs = np.where(np.abs(xh) > np.median(np.abs(xc)), xh, 0)
    hs = act(xs @ gate.T) * (xs @ up.T)
    out["teal"] = err((hs * (np.abs(hs) * dn > np.median(np.abs(hc) * dn))) @ down.T)
    keep = np.argsort(-(np.abs(hc) * dn).mean(0))[: f // 2]
    out["fixed"] = err(hh[:, keep] @ down[:, keep].T)
    for rule, shared in (("moefy", 0), ("moefy_shared", 2)):
        order, router, _ = split_layer(xc, gate, up, down, 8, 4, seed=seed, shared=shared)
        fe, sf = f // 8, shared * f // 8
        ho, do = hh[:, order], down[:, order]
        ys = ho[:, :sf] @ do[:, :sf].T
        pick = np.argsort(-(xh @ router.T), axis=1, kind="stable")[:, : 4 - shared]
        for t in range(len(xh)):
            cols = np.concatenate([np.arange(sf + e * fe, sf + (e + 1) * fe) for e in pick[t]])
            ys[t] += ho[t, cols] @ do[:, cols].T
        out[rule] = err(ys)
    k = hc[:, keep]
    g = k.T @ k
    g += 1e-2 * np.trace(g) / len(g) * np.eye(len(g))
    refit = np.linalg.solve(g, k.T @ (hc @ down.T)).T
    out["refit"] = err(hh[:, keep] @ refit.T)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--file", required=True, help="held-out UTF-8 text")
    ap.add_argument("--tokens", type=int, default=400, help="held-out tokens")
    ap.add_argument("--every", type=int, default=1, help="every k-th layer")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    m = load_model(a.model)
    m.materialize()
    c = m.config
    act = ACTIVATION[c.activation]
    cal = calibration_tokens(m, file=None, n_tokens=MOEFY_CALIB_TOKENS)
    held = m.tokenizer.encode(Path(a.file).read_text(encoding="utf-8"))[: a.tokens]
    xc, xh = ffn_inputs(m, cal), ffn_inputs(m, held)
    per_layer = {}
    for i in range(0, c.n_layers, a.every):
        gate, up, down = (m.tensor(names.weight(i, p)) for p in names.FFN_PROJECTIONS)
        per_layer[i] = layer_errors(xc[i], xh[i], gate, up, down, act, seed=i)
    rules = list(next(iter(per_layer.values())))
    mean = {r: float(np.mean([e[r] for e in per_layer.values()])) for r in rules}
    if a.json:
        print(json.dumps({"mean": mean, "layers": per_layer}))
        return
    for r in rules:
        print(f"{r:14s} {mean[r]:.4f}")


if __name__ == "__main__":
    main()
