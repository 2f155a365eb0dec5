"""Sizes and the memory every plan counts first: ``--dram-budget`` values, the KV cache, the
forward pass's scratch, the tensors that never stream, and the size of a flash read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgert.errors import EdgertError
from edgert.format import kvcache, names

#: prefill rows per kernel call (the C forward pass runs longer prompts in several calls)
MAX_BATCH = 512
#: tokens per forward call under a budget (the scratch for a batch of 512 would be most of a
#: small model's budget; prompts run in more calls instead)
BUDGET_BATCH = 64
#: bytes per flash read request where the device's flash is not known
READ_CHUNK = 4 << 20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
}


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``300M`` / ``300MB`` (10^6), ``1.5GiB`` (2^30)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise EdgertError(
            f"cannot read the size {text!r}", "write it as bytes or with a unit: 300M, 1.5G, 512MiB"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def fmt_size(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def read_chunk(flash_mbs: float, latency_us: float) -> int:
    """The read request size for a flash: the smallest power of two whose transfer takes 20x the
    per-request latency (latency then costs <= 5% of bandwidth), between 256 KiB and 8 MiB."""
    want = 20 * flash_mbs * 1e6 * latency_us * 1e-6
    chunk = 256 << 10
    while chunk < want and chunk < (8 << 20):
        chunk *= 2
    return chunk


def flash_chunk(flash: tuple[float, float] | None) -> int:
    """The read size for a flash of (MB/s, latency us), :data:`READ_CHUNK` where not known."""
    return READ_CHUNK if flash is None else read_chunk(*flash)


def flash_gap(flash: tuple[float, float] | None) -> int:
    """Bytes a flash of (MB/s, latency us) transfers in one request latency: a gap between two
    wanted ranges shorter than this costs less to read through than to skip with a second
    request (0 where the flash is not known)."""
    return 0 if flash is None else int(flash[0] * flash[1])


def kv_positions(cfg, layer: int, max_ctx: int, batch: int = MAX_BATCH, kv=kvcache.DEFAULT) -> int:
    """Positions layer ``layer``'s KV cache holds at context ``max_ctx``: all of them, or for a
    sliding-window layer a ring of its window and one call's ``batch`` tokens less one (the
    oldest key the first token of a call still sees must outlive the call's writes); with q4
    keys (``kv``: keys, values), which are stored by groups of positions, a ring of whole groups,
    one more than those positions span."""
    w = cfg.window(layer)
    if not w:
        return max_ctx
    ring = w + batch - 1
    if kv[0] == "q4":
        g = kvcache.KEY_GROUP
        ring = g * (-(-ring // g) + 1)
    return min(max_ctx, ring)


def kv_cache_bytes(cfg, max_ctx: int, batch: int = MAX_BATCH, kv=kvcache.DEFAULT) -> int:
    """The K and V caches of every layer for ``max_ctx`` tokens, ``batch`` per call, held as
    ``kv`` (keys, values: edgert.format.kvcache types), q4 keys' float16 tail included."""
    n = cfg.n_kv_heads * cfg.head_dim
    row = kvcache.key_row_bytes(kv[0], n) + kvcache.row_bytes(kv[1], n)
    positions = sum(kv_positions(cfg, i, max_ctx, batch, kv) for i in range(cfg.n_layers))
    return row * positions + cfg.n_layers * kvcache.key_tail_bytes(kv[0], n)


#: a budget hint shared by the plans' refusals
BUDGET_HINT = (
    "raise the budget, lower the context with --ctx, or keep the KV cache in fewer bytes "
    "(--kv-cache f16, q8 or q4)"
)


def resident_besides(art, tensors, *, sparse: bool = False) -> dict[str, int]:
    """Bytes of each tensor but ``tensors`` that a run loads (tensors stored for streaming only,
    like neuron bundles, are never loaded; their index only by a ``sparse`` run)."""
    return {
        n: e["nbytes"]
        for n, e in art.tensors.items()
        if n not in tensors and e["residency"] != "streamed" and (sparse or n != names.BUNDLE_INDEX)
    }


def row_table_bytes(art) -> int:
    """Bytes of the embedding table that a run under a budget leaves on flash, reading its
    tokens' rows there (one read per row and buffer: a few KiB a token) instead of holding it;
    0 where it cannot: the head is the same table (a tied head reads all of it every step) or
    its rows are not stored whole (8-bit or float32). Llama-3-8B's 8-bit table is 591 MB, 14%
    of a 4 GB board. (The cost model leaves these reads out: two small reads a token.)"""
    e = art.tensors.get(names.EMBEDDING)
    head = art.manifest.get("plan", {}).get("head") or names.OUTPUT
    if e is None or head == names.EMBEDDING or e["format"] not in ("q8", "f32"):
        return 0
    return e["nbytes"]


def embedding_by_rows(art, budget: int | None) -> bool:
    """Whether a run under ``budget`` reads the embedding table by rows (:func:`row_table_bytes`):
    any run with a budget, where the artifact allows it."""
    return bool(budget) and row_table_bytes(art) > 0


def touched_per_step(art, resident: dict[str, int]) -> int:
    """Bytes of ``resident`` a step reads: all but the embedding table (a token reads one row),
    unless the head shares it."""
    head = art.manifest.get("plan", {}).get("head") or names.OUTPUT
    return sum(b for n, b in resident.items() if n == head or n != names.EMBEDDING)


def scratch_bytes(cfg, n_batch: int, n_logits: int = 1) -> int:
    """The forward pass's working memory for ``n_batch`` tokens per call: its activation buffers,
    the LUT tables (8 bytes per activation), the embeddings in and ``n_logits`` rows of logits
    out (generation keeps the last row; scoring every position needs n_batch rows)."""
    d, qd, kd, f = cfg.dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim
    acts = n_batch * (3 * d + 2 * qd + 2 * kd + 2 * f) * 4
    tables = n_batch * max(d, f) * 8
    return acts + tables + n_logits * cfg.vocab_size * 4


def budget_batch(budget: int | None, n_batch: int | None = None) -> int:
    """Tokens per forward call: ``n_batch`` if given, else :data:`BUDGET_BATCH` under a budget and
    the kernels' largest batch without one."""
    return n_batch or (BUDGET_BATCH if budget else MAX_BATCH)


@dataclass
class Fixed:
    """What a plan holds whatever streams: the tensors that never stream (``never`` bytes, of
    which a step reads ``touched``), the KV cache, and the scratch for ``batch`` tokens per call."""

    never: int
    touched: int
    kv: int
    scratch: int
    batch: int
    #: the KV cache's types (keys, values)
    kv_types: tuple[str, str] = kvcache.DEFAULT
    #: bytes of ``never`` that a run under a budget leaves on flash (the embedding table read by
    #: rows); 0 under a budget, where it is not held already
    by_rows: int = 0

    @property
    def total(self) -> int:
        return self.never + self.kv + self.scratch

    @property
    def least(self) -> int:
        """:attr:`total` under a budget: what a plan's minimum builds on."""
        return self.total - self.by_rows


def fixed_memory(
    art,
    cfg,
    streamed,
    *,
    max_ctx: int,
    budget: int | None,
    n_batch: int | None = None,
    sparse: bool = False,
    kv=kvcache.DEFAULT,
) -> Fixed:
    """:class:`Fixed` for a plan that streams the tensors named in ``streamed`` (``sparse``: the
    FFN on neuron bundles, whose index it loads), its KV cache held as ``kv``."""
    rows = row_table_bytes(art)
    if budget and rows:
        streamed = {*streamed, names.EMBEDDING}
    resident = resident_besides(art, streamed, sparse=sparse)
    batch = budget_batch(budget, n_batch)
    return Fixed(
        never=sum(resident.values()),
        touched=touched_per_step(art, resident),
        kv=kv_cache_bytes(cfg, max_ctx, batch, kv),
        scratch=scratch_bytes(cfg, batch),
        batch=batch,
        kv_types=tuple(kv),
        by_rows=0 if budget else rows,
    )
