"""Where tensors stored together lie in an artifact's weight file: a layer's projections, an
expert's three projections — each one page-aligned range that one read brings (the compiler
writes them one after another for that reason)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgert.format import names
from edgert.format.artifact import PAGE, ArtifactError, crc32


@dataclass
class Span:
    """Tensors stored together: [offset, offset + nbytes) of ``file``, page aligned; each
    buffer's place relative to offset."""

    key: object  # a layer, or (layer, expert)
    file: str
    offset: int
    nbytes: int
    #: tensor -> part -> (rel, nbytes, dtype, shape, crc)
    buffers: dict = field(default_factory=dict)

    def arrays(self, buf: np.ndarray) -> dict[str, list[np.ndarray]]:
        """Each tensor's buffers as views of ``buf`` (the span read into it)."""
        return {
            name: [
                buf[rel : rel + nb].view(np.dtype(dt)).reshape(shape)
                for rel, nb, dt, shape, _crc in parts.values()
            ]
            for name, parts in self.buffers.items()
        }

    def check(self, buf: np.ndarray, path) -> None:
        """Every buffer of the span read into ``buf`` against the artifact's checksums."""
        for name, parts in self.buffers.items():
            for rel, nb, _dt, _shape, crc in parts.values():
                if crc32(buf[rel : rel + nb]) != crc:
                    raise ArtifactError(
                        f"{path}: tensor {name} fails its checksum (the weight file is corrupt)",
                        "copy or compile the artifact again",
                    )


def span_of(art, tensors: list[str], key) -> Span:
    """The span of ``tensors`` (stored together in one file) of artifact ``art``."""
    es = [art.tensors[n] for n in tensors]
    files = {e["file"] for e in es}
    if len(files) != 1:
        raise ArtifactError(f"{art.path}: {', '.join(tensors)} span several files")
    lo = min(b["offset"] for e in es for b in e["buffers"].values())
    hi = max(b["offset"] + b["nbytes"] for e in es for b in e["buffers"].values())
    lo -= lo % PAGE
    hi = (hi + PAGE - 1) // PAGE * PAGE
    bufs = {
        n: {
            part: (b["offset"] - lo, b["nbytes"], b["dtype"], tuple(b["shape"]), b["crc32"])
            for part, b in e["buffers"].items()
        }
        for n, e in zip(tensors, es)
    }
    return Span(key, files.pop(), lo, hi - lo, bufs)


def layer_spans(art, n_layers: int) -> list[Span]:
    """Each layer's projections."""
    return [
        span_of(art, [names.weight(i, p) for p in names.PROJECTIONS], i) for i in range(n_layers)
    ]


def expert_spans(art, cfg) -> dict[tuple[int, int], Span]:
    """Each expert's three projections, by (layer, expert)."""
    return {
        (i, e): span_of(art, names.expert_tensors(i, e), (i, e))
        for i in range(cfg.n_layers)
        for e in range(cfg.n_experts)
    }


def span_names(spans) -> set[str]:
    """The tensors ``spans`` hold."""
    return {n for s in spans for n in s.buffers}
