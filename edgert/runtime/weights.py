"""Where an executor's weights come from: an artifact's buffers as stored (what runs on a device),
or a ModelGraph's float32 tensors (checks of the C forward pass against the reference), and the
artifact's weights dequantized back into a ModelGraph (the reference's input when it is the
oracle for an artifact)."""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from edgert.format import names
from edgert.format.q8 import dequantize_q8


class WeightSource(Protocol):
    def weight(self, name: str) -> tuple[str, dict, list[np.ndarray] | None]:
        """(format, {"m", "k", ...}, arrays): how the C forward pass reads tensor ``name``;
        arrays None: the tensor streams (its shape only)."""

    def embedding(self, tokens: np.ndarray) -> np.ndarray:
        """The float32 embeddings (n, dim) of ``tokens``."""


class ModelGraphSource:
    """Weights straight from a ModelGraph as float32 (an artifact's experts are stored one by
    one; here a per-expert name reads that expert of the stacked tensor)."""

    def __init__(self, model):
        self.model = model

    def _array(self, name: str) -> np.ndarray:
        e = names.parse_expert(name)
        if e is not None:
            layer, proj, i = e
            return self.model.part(names.experts(layer, proj), i)
        return self.model.tensor(name)

    def embedding(self, tokens: np.ndarray) -> np.ndarray:
        return self.model.tensor(names.EMBEDDING)[tokens]

    def weight(self, name: str):
        a = self._array(name)
        m, k = (a.shape[0], a.shape[1]) if a.ndim == 2 else (a.shape[0], 1)
        return "f32", {"m": m, "k": k}, [a]


class ArtifactSource:
    """Weights from an artifact: each tensor's buffers in the order the compiler stored them.
    Tensors in ``streamed`` are not read: :meth:`weight` describes them without data (they are
    read per step by the layer streamer or the expert cache). With ``embedding_rows`` the
    embedding table stays in its file and each step reads its tokens' rows
    (edgert.plan.sizes.embedding_by_rows)."""

    def __init__(
        self, art, *, streamed: set[str] | frozenset = frozenset(), embedding_rows: bool = False
    ):
        self.art = art
        self.streamed = set(streamed)
        self.embedding_rows = embedding_rows
        self._emb = None

    def weight(self, name: str):
        e = self.art.tensors[name]
        shape = e["shape"]
        meta = {"m": shape[0], "k": shape[1] if len(shape) > 1 else 1}
        if e["format"] in ("uniform", "hlq"):
            meta.update(bits=e["kernel"]["bits"], group_size=e["kernel"]["group_size"])
        if name in self.streamed:
            return e["format"], meta, None
        b = self._embedding() if name == names.EMBEDDING else self.art.read_tensor(name)
        if e["format"] in ("uniform", "hlq"):
            return e["format"], meta, [b["planes"], b["scale"], b["zero"]]
        if e["format"] == "q8":
            return "q8", meta, [b["q"], b["scale"]]
        return e["format"], meta, list(b.values())

    def _embedding(self) -> dict[str, np.ndarray]:
        """The embedding table's buffers, read once (a tied head uses the same arrays)."""
        if self._emb is None:
            self._emb = self.art.read_tensor(names.EMBEDDING)
        return self._emb

    def embedding(self, tokens: np.ndarray) -> np.ndarray:
        t = self.art.tensors[names.EMBEDDING]
        if self.embedding_rows:  # the tokens' rows, read now
            fd = os.open(self.art.path / t["file"], os.O_RDONLY)
            try:
                e, at = self.art.read_rows(names.EMBEDDING, tokens, fd), slice(None)
            finally:
                os.close(fd)
        else:
            e, at = self._embedding(), tokens
        if t["format"] == "f32":
            return e["data"][at]
        return dequantize_q8(e["q"][at], e["scale"][at], t["shape"][1])


def reference_model(art):
    """A ModelGraph of the artifact's weights dequantized to float32: the reference forward on
    exactly the weights the C forward pass uses (the oracle for checking it)."""
    from edgert.format.lut import FMT_CODE, PackedWeight
    from edgert.format.model import ModelGraph, TensorInfo
    from edgert.runtime.tokenizer import Tokenizer

    cfg = art.config()
    tensors = art.tensors

    def one(name: str) -> np.ndarray:
        e = tensors[name]
        b = art.read_tensor(name)
        if e["format"] == "f32":
            return b["data"]
        if e["format"] == "q8":  # in row chunks: few temporaries for a large table
            rows, cols = e["shape"]
            out = np.empty((rows, cols), np.float32)
            step = max(1, (1 << 22) // cols)
            for r in range(0, rows, step):
                out[r : r + step] = dequantize_q8(b["q"][r : r + step], b["scale"][r : r + step],
                                                  cols)  # fmt: skip
            return out
        return PackedWeight.from_buffers(e["kernel"], b).dequantize()

    stacked: dict[str, tuple[int, str]] = {}  # stacked experts' name -> (layer, proj)
    infos = []
    for name, e in tensors.items():
        ex = names.parse_expert(name)
        if ex is not None:
            layer, proj, _ = ex
            s = names.experts(layer, proj)
            if s not in stacked:
                stacked[s] = (layer, proj)
                infos.append(TensorInfo(s, (cfg.n_experts, *e["shape"]), e["format"]))
            continue
        infos.append(TensorInfo(name, tuple(e["shape"]), e["format"]))

    def part(name: str, i: int | slice) -> np.ndarray | None:
        """Expert ``i`` of a stack, or rows ``i`` of a matrix (the head): an 8-bit or float32
        one's rows, a LUT one's row tiles that hold them."""
        if name in stacked:
            layer, proj = stacked[name]
            return None if isinstance(i, slice) else one(names.expert(layer, proj, int(i)))
        e = tensors.get(name)
        if not isinstance(i, slice) or e is None or e["format"] not in ("q8", "f32", *FMT_CODE):
            return None
        b = art.read_tensor(name)
        if e["format"] == "f32":
            return b["data"][i]
        if e["format"] == "q8":
            return dequantize_q8(b["q"][i], b["scale"][i], e["shape"][1])
        r0, r1, step = i.indices(e["shape"][0])
        if step != 1:
            return None
        return PackedWeight.from_buffers(e["kernel"], b).dequantize_rows(r0, max(r0, r1))

    def loader(name: str) -> np.ndarray:
        if name in stacked:
            layer, proj = stacked[name]
            first = one(names.expert(layer, proj, 0))
            out = np.empty((cfg.n_experts, *first.shape), np.float32)
            out[0] = first
            for e in range(1, cfg.n_experts):
                out[e] = one(names.expert(layer, proj, e))
            return out
        return one(name)

    tok = Tokenizer.of_artifact(art)
    return ModelGraph(cfg, infos, loader, tokenizer=tok, source=str(art.path), parts=part)
