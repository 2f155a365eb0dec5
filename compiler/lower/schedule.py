"""A default CPU schedule for operators no tuned rule covers (the ONNX path's convolutions,
matmuls, normalisations and elementwise glue).

TVM legalizes every Relax operator to a plain loop nest: one thread, no SIMD. This rule gives
each remaining block the shape a CPU wants without tuning:

- producers that can be inlined into their consumers are (padding, reshapes, bias adds);
- a reduction block (matmul, convolution, pooling) keeps its innermost spatial axis innermost,
  below the reduction loops, split by the target's vector width and vectorized — for
  ``C[i, j] += A[i, k] * B[k, j]`` or an NCHW convolution's output row that is the contiguous
  axis of the weights / input, so every step is one vector FMA; a row that is no multiple of
  the vector width (a 13-, 27- or 55-wide feature map) is split by the width all the same, its
  last vector masked;
- the outer spatial loops are fused and run in parallel on the TVM runtime's thread pool;
- an injective block runs its rows in parallel and its last axis in vectors.

A block the rule cannot transform is left as legalized (correct, slower); functions a tuned
rule already scheduled are untouched. Tuned schedules (MetaSchedule records) can replace it per
operator later: it is the floor, not the ceiling.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: float32 lanes of the widest vector unit, by target feature (NEON: 4, AVX2: 8)
VECTOR_LANES = {"avx512f": 16, "avx2": 8, "neon": 4}
#: vector accumulators per reduction tile (kept in registers: 4 x 8 floats on AVX2)
ACCUMULATORS = 4
#: outputs along a reuse axis (conv output channels, matmul rows) that share each vector load
REUSE_ROWS = 4
#: below this many outer iterations a parallel loop costs more than it saves
MIN_PARALLEL = 4


def vector_lanes(target) -> int:
    attrs = " ".join(str(a) for a in (target.attrs.get("mattr") or []))
    arch = str(target.attrs.get("mtriple", ""))
    for feat, lanes in VECTOR_LANES.items():
        if feat in attrs:
            return lanes
    return 4 if arch.startswith("aarch64") else 8


def _const(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def default_cpu_rules() -> list:
    """dlight rules in order: this rule where its vector loads are contiguous, dlight's CPU GEMV
    rule (``x . W^T``), then this rule for whatever is left. dlight's CPU Reduction rule is not
    used: it recomputes a layer norm's mean and variance once per output element (10 ms for one
    2048-wide row on this machine, against 2 us for a serial pass)."""
    import tvm.s_tir.dlight as dl

    return [_rule(strict=True), dl.cpu.GEMV(), _rule(strict=False)]


def _rule(*, strict: bool):
    """The rule as a dlight ScheduleRule (built lazily: TVM is imported only when compiling)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    def reads_along_inner_spatial(sch, info) -> bool:
        """Whether a read buffer's innermost index moves with the innermost spatial axis (the
        vector loads this rule makes are then contiguous: matmul with (K, N) weights, NCHW
        convolutions); otherwise the block reduces along contiguous memory (softmax, norms,
        x . W^T): dlight's GEMV rule takes x . W^T, and the rest runs row-parallel here."""
        blk = sch.get(info.block_rv)
        kinds = info.dom_kind()
        spatial = [iv.var for iv, k in zip(blk.iter_vars, kinds) if k == "S"]
        if not spatial:
            return False
        inner = spatial[-1]
        for region in blk.reads:
            if not region.region:
                continue
            used = tirx.analysis.undefined_vars(region.region[-1].min)
            if any(v.same_as(inner) for v in used):
                return True
        return False

    def reuse_axis(sch, info, s) -> int | None:
        """Index in ``s`` of an outer spatial axis the largest input does not depend on (a
        convolution's output channels, a matmul's rows): outputs along it reuse the same input
        vectors, so a few of them are computed together from registers."""
        blk = sch.get(info.block_rv)
        spatial = [iv.var for iv, k in zip(blk.iter_vars, info.dom_kind()) if k == "S"]
        regions = [rg for rg in blk.reads if rg.region]
        if not regions:
            return None

        def size(rg) -> int:
            n = 1
            for d in (getattr(rg, "buffer", None) or rg.source).shape:
                n *= _const(d) or 1
            return n

        big = max(regions, key=size)
        used_vars = [v for rng in big.region for v in tirx.analysis.undefined_vars(rng.min)]
        for i in range(len(s) - 2, -1, -1):
            ext = _const(sch.get(s[i]).extent)
            if ext and ext % REUSE_ROWS == 0 and not any(spatial[i].same_as(v) for v in used_vars):
                return i
        return None

    def parallel_over(sch, loops):
        """Fuse ``loops`` into one and run it on the thread pool when it is long enough."""
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        n = _const(sch.get(fused).extent)
        if n is None or n >= MIN_PARALLEL:
            sch.parallel(fused)
        return fused

    def schedule_block(sch, info, lanes: int, vectors: int) -> None:
        """Schedule one block; ``vectors`` accumulators of ``lanes`` floats per reduction tile,
        kept in a block-local buffer (registers) and written out once per tile."""
        block = info.block_rv
        loops = sch.get_loops(block)
        kinds = info.dom_kind()
        if len(loops) != len(kinds) or "O" in kinds or not loops:
            return
        s = [lp for lp, k in zip(loops, kinds) if k == "S"]
        r = [lp for lp, k in zip(loops, kinds) if k == "R"]
        if not s:
            return
        if r and not reads_along_inner_spatial(sch, info):
            # a reduction along contiguous memory (norms, softmax): rows in parallel, each
            # reduced by a serial loop (no gathers across rows)
            sch.reorder(*s, *r)
            parallel_over(sch, s)
            return
        if r:
            sch.reorder(*s, *r)
            inner = _const(sch.get(s[-1]).extent)
            reuse = reuse_axis(sch, info, s) if vectors > 1 else None
            tile = lanes * (max(1, vectors // REUSE_ROWS) if reuse is not None else vectors)
            while tile > lanes and (inner is None or inner % tile):
                tile //= 2
            si = None
            outer = s
            ragged = inner is not None and inner > lanes and inner % lanes != 0
            if ragged:  # a row that is no multiple of the vector: one vector, the tail masked
                tile = lanes
            if inner is not None and inner >= tile >= lanes and (inner % tile == 0 or ragged):
                so, si = sch.split(s[-1], factors=[None, tile])
                rows = []
                outer = [*s[:-1], so]
                if reuse is not None:  # REUSE_ROWS outputs share each vector load
                    ro, ri = sch.split(s[reuse], factors=[None, REUSE_ROWS])
                    rows = [ri]
                    outer = [*s[:reuse], ro, *s[reuse + 1 : -1], so]
                sch.reorder(*outer, *r, *rows, si)
                for ri in rows:
                    sch.unroll(ri)
            fused = parallel_over(sch, outer)
            if si is None:
                return
            if vectors > 1:  # accumulate the tile locally, store it once
                acc = sch.cache_write(block, 0, "local")
                sch.reverse_compute_at(acc, fused)
                for consumer in sch.get_consumers(acc):  # bias / activation on the way out
                    try:
                        sch.reverse_compute_inline(consumer)
                    except Exception as e:  # noqa: BLE001 - not elementwise: scheduled apart
                        log.debug("epilogue left apart: %s", str(e)[-200:])
                sch.vectorize(sch.get_loops(acc)[-1])
            sch.vectorize(si)  # the init stays in place (a branch on the first k step)
            return
        # injective: rows in parallel, the last axis in vectors (lane indices stay affine, no
        # division per element as a split of the fully fused loop would give)
        last = _const(sch.get(s[-1]).extent)
        rows = s[:-1]
        if last is not None and last >= lanes and last % lanes == 0:
            lo, li = sch.split(s[-1], factors=[None, lanes])
            sch.vectorize(li)
            if not rows:
                rows = [lo]
        if rows:
            parallel_over(sch, rows)

    class ParallelVectorize(CPUScheduleRule):
        def __init__(self, strict: bool):
            self.strict = strict

        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            lanes = vector_lanes(target)
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            # padding stays a separate pass: inlined, it puts a bounds check in every load
            keep = [i for i in infos if i.name.startswith("pad")]
            infos = try_inline(sch, [i for i in infos if not i.name.startswith("pad")]) + keep
            if self.strict and any(
                i.is_reduction() and not reads_along_inner_spatial(sch, i) for i in infos
            ):
                return None  # dlight's GEMV rule first, then this rule without strictness
            for info in infos:
                for vectors in (ACCUMULATORS, 1):  # register tile, else plain vector loop
                    trial = sch.copy()
                    try:
                        schedule_block(trial, info, lanes, vectors)
                    except Exception as e:  # noqa: BLE001 - TVM raises ScheduleError and more
                        log.debug("block %s (%d): %s", info.name, vectors, str(e)[-600:])
                        continue
                    sch = trial
                    break
            return sch

    return ParallelVectorize(strict)
