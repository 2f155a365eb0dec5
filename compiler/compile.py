"""`edgert compile`: a model file in, a deployable artifact for one target out.

Stages: load (frontend) -> plan bits (uniform, or allocated under --bits-budget from measured
sensitivity) -> quantize + pack every linear weight into the LUT kernel formats -> build the
target's library (the C forward pass and the kernels, with the target's toolchain through TVM's
compiler driver) -> write the artifact atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from edgert.compiler.package import CompileSummary
from edgert.compiler.quant.scheme import QuantScheme

from edgert.errors import EdgertError
from edgert.format.artifact import ArtifactError
from edgert.format.target import Target, load_target

log = logging.getLogger(__name__)

#: calibration tokens for --sparse-ffn thresholds
SPARSE_CALIB_TOKENS = 256


def plan_bits(
    model,
    scheme: QuantScheme,
    *,
    bits_budget: float | None,
    calib: str | None,
    calib_tokens: int = 64,
) -> tuple[dict[str, int], list]:
    """Bits for each unit (layer, or expert) — uniform, or allocated under the budget."""
    from edgert.compiler.quant.bitalloc import allocate, measure_sensitivity, units_for
    from edgert.compiler.quant.lut import quantize_hlq, quantize_uniform

    units = units_for(model)
    if bits_budget is None:
        return {u.name: scheme.bits for u in units}, units
    from edgert.compiler.quant.scheme import FORMAT_BITS
    from edgert.compiler.transform.calibrate import calibration_tokens

    cands = tuple(b for b in FORMAT_BITS[scheme.fmt] if b >= 2)
    quant = quantize_hlq if scheme.fmt == "hlq" else quantize_uniform

    def qdq(w: np.ndarray, bits: int) -> np.ndarray:
        return quant(w, bits=bits, group_size=scheme.group_size).dequantize()

    tokens = calibration_tokens(model, file=calib, n_tokens=calib_tokens)
    measure_sensitivity(model, tokens, units, cands, qdq)
    return allocate(units, cands, bits_budget), units


def compile_model(
    *,
    model: str | Path,
    target: str,
    out: str | Path,
    scheme: QuantScheme,
    bits_budget: float | None = None,
    calib: str | None = None,
    force: bool = False,
    dram: tuple[int, int | None] | None = None,
    sparse_ffn: bool = False,
    moefy: tuple[int, int] | None = None,
    head_bits: int = 8,
) -> CompileSummary:
    """``moefy`` = (experts, top-k): split every dense FFN into that many experts with a router
    (edgert.compiler.transform.moefy) before quantizing; the artifact is then a mixture of experts.
    ``head_bits``: the output head in 8-bit rows (8) or in the scheme's LUT format at 2-4 bits
    (a tied head gets its own copy; the embedding table stays 8-bit)."""
    if head_bits not in (2, 3, 4, 8):
        raise EdgertError(f"--head-bits must be 2, 3, 4 or 8, not {head_bits}")
    t0 = time.perf_counter()
    tgt: Target = load_target(target)
    tgt.require_toolchain()
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists", "choose another -o or pass --force")
    from edgert.compiler.frontends import load_model

    m = load_model(model)
    if moefy is not None:
        from edgert.compiler.transform.moefy import check_moefy

        check_moefy(m.config, *moefy)
        if dram is not None or sparse_ffn:
            raise EdgertError(
                "--moefy makes a mixture of experts, which streams its experts at run time",
                "compile without --dram-budget / --sparse-ffn (pass --dram-budget to run)",
            )
    if dram is not None and m.config.is_moe:
        raise EdgertError(
            "--dram-budget plans dense models (a mixture of experts streams its experts at run "
            "time)",
            "compile without --dram-budget",
        )
    if sparse_ffn and m.config.is_moe:
        raise EdgertError(
            "--sparse-ffn applies to dense models (a mixture of experts streams its experts)",
            "compile without --sparse-ffn",
        )
    m.materialize()
    times = {"load": time.perf_counter() - t0}
    moe_record = None
    if moefy is not None:
        from edgert.compiler.transform.calibrate import calibration_tokens
        from edgert.compiler.transform.moefy import MOEFY_CALIB_TOKENS, moefy_model

        t = time.perf_counter()
        tokens = calibration_tokens(m, file=calib, n_tokens=MOEFY_CALIB_TOKENS)
        m, moe_record = moefy_model(m, *moefy, tokens)
        times["split into experts"] = time.perf_counter() - t
    trace = None
    if m.config.is_moe:
        from edgert.compiler.transform.calibrate import calibration_tokens, routing_trace

        from edgert.plan.moe import TRACE_PROMPT_TOKENS, TRACE_TOKENS

        t = time.perf_counter()
        n = TRACE_PROMPT_TOKENS + TRACE_TOKENS
        trace = routing_trace(m, calibration_tokens(m, file=calib, n_tokens=n), n - TRACE_TOKENS)
        times["trace routing"] = time.perf_counter() - t
    t = time.perf_counter()
    bits, units = plan_bits(m, scheme, bits_budget=bits_budget, calib=calib)
    times["plan bits"] = time.perf_counter() - t
    sparse = None
    if sparse_ffn:
        from edgert.compiler.transform.calibrate import calibration_tokens
        from edgert.compiler.transform.sparsify import calibrate

        t = time.perf_counter()
        tokens = calibration_tokens(m, file=calib, n_tokens=SPARSE_CALIB_TOKENS)
        thresholds, order, levels = calibrate(m, tokens)
        sparse = {
            "thresholds": thresholds,
            "order": order,
            "levels": levels,
            "calib_tokens": len(tokens),
        }
        times["calibrate sparsity"] = time.perf_counter() - t
    from edgert.compiler.package import write_artifact

    t = time.perf_counter()
    summary = write_artifact(
        m, tgt, out, scheme=scheme, bits=bits, units=units, force=force, times=times, dram=dram,
        sparse=sparse, moefy=moe_record, trace=trace, head_bits=head_bits,
    )  # fmt: skip
    times["quantize + build + write"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return summary
