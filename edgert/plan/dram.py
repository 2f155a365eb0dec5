"""A dense model within a DRAM budget: which layers' projections stay resident and which stream
from flash through a few staging buffers (read one layer per read while the layers before it
compute); a budget below the minimum (every layer streamed) is refused, naming it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgert.errors import EdgertError
from edgert.format.kvcache import DEFAULT as DEFAULT_KV
from edgert.format.spans import layer_spans, span_names
from edgert.plan.sizes import BUDGET_HINT, READ_CHUNK, fixed_memory, fmt_size


@dataclass
class DramPlan:
    """What a budget keeps in DRAM. Bytes: ``fixed`` = tensors that never stream (head, norms,
    the embedding table unless read by rows: edgert.plan.sizes.embedding_by_rows) + KV cache +
    scratch; each layer's projections either resident or streamed
    through ``slots`` staging buffers (1 or 2) of the largest streamed span."""

    budget: int | None
    fixed: int
    kv: int
    scratch: int
    layer_bytes: list[int]
    streamed: list[int]
    slots: int
    minimum: int
    max_ctx: int = 0
    #: bytes per flash read request (read_chunk of the device's flash)
    chunk: int = READ_CHUNK
    #: never-streamed weights read every token (the head and the norms; not the embedding
    #: table, of which a token reads one row, unless the head shares it)
    head_bytes: int = 0
    #: tokens per forward call the scratch is sized for (longer prompts run in several calls)
    batch: int = 0

    @property
    def staging(self) -> int:
        return self.slots * max((self.layer_bytes[i] for i in self.streamed), default=0)

    @property
    def resident_layers(self) -> int:
        streamed = set(self.streamed)
        return sum(b for i, b in enumerate(self.layer_bytes) if i not in streamed)

    @property
    def planned(self) -> int:
        """Bytes the plan uses (<= budget)."""
        return self.fixed + self.resident_layers + self.staging

    @property
    def streamed_bytes_per_token(self) -> int:
        return sum(self.layer_bytes[i] for i in self.streamed)

    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes a decode step reads from DRAM (streamed layers from their staging
        buffers), whatever the budget."""
        return self.head_bytes + sum(self.layer_bytes)

    def flash_reads_per_token(self) -> int:
        return sum(-(-self.layer_bytes[i] // self.chunk) for i in self.streamed)

    def describe(self) -> str:
        return (
            f"dram budget {fmt_size(self.budget)}: plan {fmt_size(self.planned)}, "
            f"{len(self.streamed)} of {len(self.layer_bytes)} layers stream"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            planned=self.planned,
            staging=self.staging,
            streamed_bytes_per_token=self.streamed_bytes_per_token,
            weight_bytes_per_token=self.weight_bytes_per_token,
        )
        return d


def plan_dram(
    art,
    cfg,
    *,
    max_ctx: int,
    budget: int | None,
    n_batch: int | None = None,
    slots: int | None = None,
    chunk: int = READ_CHUNK,
    kv=DEFAULT_KV,
) -> DramPlan:
    """Stream the fewest layers that make the budget (spread evenly over the depth, so reads
    overlap resident layers' compute); refuse a budget below the minimum (every layer streamed).
    Under a budget, prompts run :data:`BUDGET_BATCH` tokens per call.

    Staging buffers: two (the next streamed layer's read in flight while one computes) where
    that streams no more layers than one buffer would, else one: a layer's flash read takes
    longer than computing it (flash is slower than DRAM), so the layer the second buffer's bytes
    keep resident saves more than the overlap it gives. ``slots`` fixes the count."""
    spans = layer_spans(art, cfg.n_layers)
    f = fixed_memory(
        art, cfg, span_names(spans), max_ctx=max_ctx, budget=budget, n_batch=n_batch, kv=kv
    )
    never, kv, scratch, fixed = f.never, f.kv, f.scratch, f.total
    sizes = [s.nbytes for s in spans]
    choices = (slots,) if slots else (2, 1)
    least = min(choices)
    minimum = f.least + least * max(sizes)  # what a budget holds: the table read by rows
    plan = DramPlan(
        budget, fixed, kv, scratch, sizes, [], choices[0], minimum, max_ctx, chunk, f.touched,
        f.batch,
    )  # fmt: skip
    if budget is None or fixed + sum(sizes) <= budget:
        return plan
    if budget < minimum:
        raise EdgertError(
            f"--dram-budget {fmt_size(budget)} is below the minimum this artifact needs: "
            f"{fmt_size(minimum)} (tensors that never stream {fmt_size(never)}, KV cache for "
            f"{max_ctx} tokens {fmt_size(kv)}, scratch {fmt_size(scratch)}, {least} staging "
            f"buffer{'s' * (least > 1)} of {fmt_size(max(sizes))})",
            BUDGET_HINT,
        )
    n = cfg.n_layers
    for k in range(1, n + 1):
        streamed = sorted({(j * n) // k + (n // k) // 2 for j in range(k)})
        resident = sum(b for i, b in enumerate(sizes) if i not in streamed)
        for n_slots in choices:
            if fixed + resident + n_slots * max(sizes[i] for i in streamed) <= budget:
                plan.streamed, plan.slots = streamed, n_slots
                return plan
    raise AssertionError("unreachable: the minimum streams every layer")
