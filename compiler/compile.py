"""`edgert compile`: a model file in, a deployable artifact for one target out.

Stages: load (frontend) -> calibrate (tokens from --calib or written by the model, input
statistics of every linear layer) -> plan bits (uniform, or allocated under --bits-budget from
measured sensitivity) -> quantize + pack every linear weight into the LUT kernel formats (by
--quant-method) -> measure what the compiled weights keep (KL and top-1 agreement on held-back
calibration tokens) -> build the target's library (the C forward pass and the kernels, with the
target's toolchain through TVM's compiler driver) -> write the artifact atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from edgert.compiler.package import CompileSummary
from edgert.compiler.quant.scheme import QuantScheme

from edgert.errors import EdgertError
from edgert.format import names
from edgert.format.artifact import ArtifactError
from edgert.format.target import Target, load_target

log = logging.getLogger(__name__)

#: calibration tokens for --sparse-ffn thresholds
SPARSE_CALIB_TOKENS = 256
#: calibration tokens for the quantizers' statistics (--calib-tokens)
QUANT_CALIB_TOKENS = 4096
#: calibration tokens held back to measure the compiled weights' quality
QUALITY_TOKENS = 512
#: a model whose float32 weights exceed this is never held whole: each stage goes through it
#: layer by layer, keeping COMPILE_CACHE_BYTES of float32 tensors beyond those in use (a 30B model
#: compiles in a few GB); a smaller one is loaded once (its forward passes then cost no loading)
MATERIALIZE_BYTES = 8 << 30
COMPILE_CACHE_BYTES = 512 << 20
#: of the statistics' tokens, those bit allocation measures sensitivity on
SENSITIVITY_TOKENS = 256


def plan_bits(
    model, scheme: QuantScheme, quantizer, *, bits_budget: float | None, tokens: list[int]
) -> tuple[dict[str, int], list]:
    """Bits for each unit (a dense layer's projection, a mixture layer's attention, or an expert)
    — uniform, or allocated under the budget (stored bits per weight) from each unit's measured
    sensitivity at every width (the fits are kept for the artifact)."""
    from edgert.compiler.quant.bitalloc import allocate, measure_sensitivity, units_for

    units = units_for(model)
    if bits_budget is None:
        return {u.name: scheme.bits for u in units}, units
    cands = tuple(b for b in scheme.widths() if b >= 2)

    def qdq(name: str, expert: int | None, w: np.ndarray, bits: int) -> np.ndarray:
        return quantizer(name, w, bits, expert=expert, keep=True).dequantize()

    from edgert.format.lut import bits_per_weight

    measure_sensitivity(model, tokens[:SENSITIVITY_TOKENS], units, cands, qdq)
    stored = lambda b: bits_per_weight(scheme.fmt, b, scheme.group_size)  # noqa: E731
    return allocate(units, cands, bits_budget, stored), units


def calibrate_quant(model, *, calib: str | None, method: str, n_tokens: int, budget: bool):
    """Tokens (from ``calib`` or written by the model), split into those the statistics and bit
    allocation use (with ``rtn``: none, or the sensitivity's under a ``budget``) and
    :data:`QUALITY_TOKENS` held back; the statistics (None for ``rtn``)."""
    from edgert.compiler.quant.calib import collect_stats
    from edgert.compiler.transform.calibrate import calibration_tokens

    if n_tokens < 16 and method != "rtn":
        raise EdgertError(f"--calib-tokens {n_tokens} is too few", "use 1024 or more")
    fit = n_tokens if method != "rtn" else SENSITIVITY_TOKENS if budget else 0
    tokens = calibration_tokens(model, file=calib, n_tokens=fit + QUALITY_TOKENS)
    stats = collect_stats(model, tokens[:fit]) if method != "rtn" else None
    return tokens[:fit], tokens[fit:], stats


def compile_model(
    *,
    model: str | Path,
    target: str,
    out: str | Path,
    scheme: QuantScheme,
    bits_budget: float | None = None,
    calib: str | None = None,
    force: bool = False,
    dram: tuple | None = None,
    sparse_ffn: bool = False,
    moefy: tuple[int, ...] | None = None,
    head_bits: int = 8,
    quant_method: str | None = None,
    calib_tokens: int | None = None,
    keep: bool = False,
) -> CompileSummary:
    """``moefy`` = (experts, top-k[, shared]): split every dense FFN into that many experts with
    a router (edgert.compiler.transform.moefy) before quantizing, ``shared`` of the top-k slices
    one shared expert; the artifact is then a mixture of experts.
    ``head_bits``: the output head in 8-bit rows (8) or in the scheme's LUT format at 2-4 bits
    (a tied head gets its own copy; the embedding table stays 8-bit). ``quant_method``: gptq,
    imatrix or rtn (edgert.compiler.quant.quantizer), calibrated on ``calib_tokens`` tokens of
    ``calib`` (default: text the model writes). ``keep`` (``--bits keep``): a GGUF's quantized
    tensors imported as they are (edgert.compiler.quant.ggml), no calibration nor rounding."""
    from edgert.compiler.quant.quantizer import METHODS, WeightQuantizer

    if keep:
        given = {"--bits-budget": bits_budget is not None, "--moefy": moefy is not None,
                 "--sparse-ffn": sparse_ffn, "--head-bits": head_bits != 8,
                 "--format hlq": scheme.fmt != "uniform", "--quant-method": quant_method,
                 "--calib-tokens": calib_tokens is not None}  # fmt: skip
        if any(given.values()):
            raise EdgertError(
                f"--bits keep takes the model's quantization as it is; "
                f"{', '.join(k for k, v in given.items() if v)} would change it",
                "drop them, or use --bits N to quantize again",
            )
    quant_method = quant_method or "gptq"
    calib_tokens = QUANT_CALIB_TOKENS if calib_tokens is None else calib_tokens
    if quant_method not in METHODS:
        raise EdgertError(
            f"unknown --quant-method {quant_method!r}", f"use one of {', '.join(METHODS)}"
        )
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
    if 4 * m.n_params() <= MATERIALIZE_BYTES:
        m.materialize()
    else:
        m.cache_limit = COMPILE_CACHE_BYTES
    times = {"load": time.perf_counter() - t0}
    moe_record = None
    if moefy is not None:
        from edgert.compiler.transform.calibrate import calibration_tokens
        from edgert.compiler.transform.moefy import MOEFY_CALIB_TOKENS, moefy_model

        t = time.perf_counter()
        tokens = calibration_tokens(m, file=calib, n_tokens=MOEFY_CALIB_TOKENS)
        m, moe_record = moefy_model(
            m, *moefy[:2], tokens, group=scheme.group_size, shared=(moefy[2:] or (0,))[0]
        )
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
    if keep:
        from edgert.compiler.quant.bitalloc import units_for
        from edgert.compiler.quant.ggml import KeptWeights

        quantizer = KeptWeights(m)
        units = units_for(m)
        quantizer.check([n for u in units for n, _ in u.tensors])
        _, held_back, _ = calibrate_quant(m, calib=calib, method="rtn", n_tokens=0, budget=False)
        times["calibrate"] = time.perf_counter() - t
        bits = {u.name: max(quantizer.form(n)[1] for n, _ in u.tensors) for u in units}
        form = quantizer.form(names.OUTPUT) if names.OUTPUT in m else ("q8", 8)
        head_bits = form[1] if form[0] == "lut" else 8  # an output head of a LUT type as such
    else:
        fit_tokens, held_back, stats = calibrate_quant(
            m, calib=calib, method=quant_method, n_tokens=calib_tokens,
            budget=bits_budget is not None,
        )  # fmt: skip
        quantizer = WeightQuantizer(scheme, quant_method, stats)
        times["calibrate"] = time.perf_counter() - t
        t = time.perf_counter()
        bits, units = plan_bits(m, scheme, quantizer, bits_budget=bits_budget, tokens=fit_tokens)
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
        quantizer=quantizer, quality_tokens=held_back,
    )  # fmt: skip
    times["quantize + build + write"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return summary
