"""Quantize, pack, lower and write: the artifact for one target (see edgert.format.artifact)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edgert.compiler.lower.library import build_library, tvm_version
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format import names
from edgert.format.artifact import ArtifactWriter
from edgert.format.target import Target
from edgert.progress import Progress
from edgert.runtime.cpu import host_flags

log = logging.getLogger(__name__)


@dataclass
class CompileSummary:
    out: str
    target: str
    fmt: str
    avg_bits: float
    bits_per_unit: dict[str, int]
    bytes_by_kind: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    #: stored bits per weight of the blocks' linear weights (codes, scales and zeros)
    bits_per_weight: float = 0.0
    method: str = "rtn"
    #: KL and top-1 agreement with the float model on held-back tokens (quant.quality)
    quality: dict | None = None
    #: tensors by how they were quantized (gptq / imatrix / rtn), or kept (Q4_K, Q6_K -> 8-bit)
    tensors_by_method: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        rows = [("stage", "seconds")] + [(k, f"{v:.1f}") for k, v in self.seconds.items()]
        rows += [("", ""), ("method", self.method)]
        rows += [(f"  {k}", f"{n} tensors") for k, n in self.tensors_by_method.items()]
        rows += [("bits per weight", f"{self.bits_per_weight:.3f} (nominal {self.avg_bits:.2f})")]
        if self.quality:
            q = self.quality
            rows += [
                ("KL vs float", f"{q['kl']:.3g} nats/token ({q['tokens']} held-back tokens)"),
                ("top-1 agreement", f"{100 * q['top1']:.1f}%"),
            ]
        rows += [("", "")] + [
            (f"{k} bytes", f"{v / 2**20:.2f} MiB") for k, v in self.bytes_by_kind.items()
        ]
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def layer_f32(i: int) -> list[str]:
    """Float32 tensors layer ``i`` may have besides its norms, in the order they are written."""
    return [*(names.bias(i, p) for p in names.BIASES), names.q_norm(i), names.k_norm(i),
            names.post_attn_norm(i), names.post_ffn_norm(i), names.router(i),
            names.shared_gate(i)]  # fmt: skip


def variant_name(fmt: str, *bits: int) -> str:
    """``u3``, ``h2``; a layer whose projections differ: ``u2-4`` (its narrowest and widest)."""
    span = f"{min(bits)}" if min(bits) == max(bits) else f"{min(bits)}-{max(bits)}"
    return f"{'u' if fmt == 'uniform' else 'h'}{span}"


def write_artifact(
    m,
    tgt: Target,
    out: Path,
    *,
    scheme: QuantScheme,
    bits: dict[str, int],
    units: list,
    force: bool,
    times: dict[str, float],
    dram: tuple | None = None,
    sparse: dict | None = None,
    moefy: dict | None = None,
    trace: dict | None = None,
    head_bits: int = 8,
    quantizer=None,
    quality_tokens: list[int] | None = None,
):
    """Everything after the bit plan: returns a CompileSummary. ``dram`` = (budget bytes,
    context tokens[, KV cache types; None: edgert.format.kvcache.choose]): the DRAM plan for
    that budget is made (an impossible budget fails the
    compile, naming the minimum) and recorded as the artifact's default budget. ``sparse``
    (thresholds, order, calib_tokens from edgert.compiler.transform.sparsify.calibrate): neuron bundles
    are written too. ``moefy``: how the model's experts were split from its dense FFNs
    (edgert.compiler.transform.moefy), recorded in the manifest. ``trace``: a mixture's routing while it
    decodes (edgert.compiler.transform.calibrate.routing_trace), stored for the planner.
    ``head_bits`` < 8: the output head in the LUT format at that width (its own tensor, also when
    tied to the embeddings, which stay 8-bit for their row lookups). ``quantizer``: a
    :class:`~edgert.compiler.quant.quantizer.WeightQuantizer` (default: round to nearest).
    ``quality_tokens``: held-back calibration tokens the compiled weights' KL and top-1 agreement
    with the float model are measured on (edgert.compiler.quant.quality), stored in the manifest.
    """
    from edgert.compiler.quant.quantizer import WeightQuantizer

    c = m.config
    quant = quantizer or WeightQuantizer(scheme, "rtn")
    lut_params = lut_bits = 0  # weights of the LUT-format tensors, and their nominal bits
    groups: set[int] = set()  # their group sizes
    #: (tensor, expert or None) -> width; a layer's label lists the widths of its projections
    tensor_bits = {(t, e): bits[u.name] for u in units for t, e in u.tensors}
    widths = [sorted({tensor_bits[(t, e)] for u in units if u.layer == i for t, e in u.tensors
                      if e is None}) for i in range(c.n_layers)]  # fmt: skip
    layer_bits = [max(ws) if ws else 0 for ws in widths]  # what neuron bundles are cut at
    expert_bits = [
        [tensor_bits.get((names.experts(i, "up"), e), 0) for e in range(c.n_experts)]
        for i in range(c.n_layers)
    ]
    sizes = {"quantized": 0, "q8": 0, "f32": 0}
    t0 = time.perf_counter()
    with ArtifactWriter(out, force=force) as w:
        bundles = None
        if sparse is not None:
            from edgert.compiler.transform.sparsify import BundleWriter

            bundles = BundleWriter(w, m, layer_bits, scheme.group_size, sparse["order"])

        def put_lut(name: str, wt: np.ndarray, b: int, src: str, expert: int | None = None):
            """A linear weight in the LUT format at ``b`` bits (a --bits keep quantizer may give
            it in another width or group, or as 8-bit rows: it is written as given); returns
            it."""
            nonlocal lut_params, lut_bits
            pw = quant(src, wt, b, expert=expert)
            if isinstance(pw, dict):  # 8-bit rows
                w.add_tensor(name, pw, meta={"format": "q8", "shape": list(wt.shape)})
                nbytes, width = sum(a.nbytes for a in pw.values()), 8
            else:
                w.add_tensor(
                    name,
                    pw.to_buffers(),
                    meta={
                        "format": pw.fmt,
                        "bits": pw.bits,
                        "group_size": pw.group_size,
                        "shape": list(pw.shape),
                        "kernel": pw.meta,
                    },
                )
                nbytes, width = pw.nbytes, pw.bits
                groups.add(pw.group_size)
            lut_params += wt.size
            lut_bits += width * wt.size
            sizes["quantized"] += nbytes
            return pw

        def values(name: str, e: int | None = None) -> np.ndarray:
            """Tensor ``name``'s float values (expert ``e`` of a stack alone: a stack of a 30B
            model is 805 MB in float32), or where the quantizer takes the stored blocks (--bits
            keep) only their shape, with nothing loaded."""
            if quant.needs_values(name):
                return m.tensor(name) if e is None else m.part(name, e)
            shape = m.infos[name].shape
            return np.broadcast_to(np.float32(0), shape if e is None else shape[1:])

        def put_f32(name: str) -> None:
            a = m.tensor(name)
            w.add_tensor(name, {"data": a}, meta={"format": "f32", "shape": list(a.shape)})
            sizes["f32"] += a.nbytes

        n_lin = sum(len(u.tensors) for u in units)
        with Progress(n_lin, "quantizing") as bar:
            for i in range(c.n_layers):
                for name in (names.attn_norm(i), names.ffn_norm(i)):
                    put_f32(name)
                for name in layer_f32(i):
                    if name in m:
                        put_f32(name)
                # a layer's projections one after another: it streams as one read
                projs = names.ATTN_PROJECTIONS if c.is_moe else names.PROJECTIONS
                linear = [names.weight(i, p) for p in projs]
                if c.shared_expert_ffn_dim:
                    linear += [names.shared(i, p) for p in names.EXPERT_PROJECTIONS]
                packed = {}
                for name in linear:
                    packed[name] = put_lut(name, values(name), tensor_bits[(name, None)], name)
                    bar.update(1)
                if bundles is not None:  # cut from the projections just written
                    up, down = (packed[names.weight(i, p)] for p in ("ffn_up", "ffn_down"))
                    bundles.add_layer(i, up, down)
                del packed
                for e in range(c.n_experts):  # each expert's projections together, too
                    for proj in names.EXPERT_PROJECTIONS:
                        src = names.experts(i, proj)
                        put_lut(names.expert(i, proj, e), values(src, e), tensor_bits[(src, e)],
                                src, e)  # fmt: skip
                    bar.update(3)
        if moefy is not None:
            w.manifest["moefy"] = moefy
        if trace is not None:
            shape = list(trace["route"].shape)
            # read by the planner only, never loaded by a run
            w.add_tensor(
                names.ROUTING_TRACE,
                trace,
                residency="streamed",
                meta={"format": "trace", "shape": shape},
            )
        if sparse is not None:
            from edgert.compiler.transform.sparsify import SPARSITIES, write_activity

            bf = bundles.finish()
            write_activity(w, sparse["levels"])
            sizes["bundles"] = c.n_layers * c.ffn_dim * bf.nbytes
            w.manifest["sparse_ffn"] = {
                "dim": bf.dim,
                "bits": bf.bits,
                "group": bf.group,
                "down_group": bf.down_group,
                "rounded_again": bundles.rounded,
                "sparsities": list(SPARSITIES),
                "thresholds": sparse["thresholds"].tolist(),
                "calib_tokens": sparse["calib_tokens"],
            }
        # embeddings and head: 8-bit
        lut_bytes = sizes["quantized"]  # of the blocks' linear weights, before any LUT head
        block_params, block_bits = lut_params, lut_bits

        def put_q8(name: str) -> None:
            q8 = quant.rows8(name, m.rows(name))  # in row slices: a large table is 1.2 GB f32
            w.add_tensor(name, q8, meta={"format": "q8", "shape": [c.vocab_size, c.dim]})
            sizes["q8"] += sum(a.nbytes for a in q8.values())

        put_q8(names.EMBEDDING)
        head_name = names.EMBEDDING
        if head_bits < 8:  # the head read whole every token: fewer bytes in the LUT format
            src = names.OUTPUT if names.OUTPUT in m else names.EMBEDDING
            put_lut(names.OUTPUT, values(src), head_bits, src)
            head_name = names.OUTPUT
        elif names.OUTPUT in m:
            put_q8(names.OUTPUT)
            head_name = names.OUTPUT
        put_f32(names.OUTPUT_NORM)
        for name in (names.ROPE_FREQS, names.ROPE_FACTORS_LONG, names.ROPE_FACTORS_SHORT):
            if name in m:
                put_f32(name)
        times["quantize"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        tok = m.tokenizer
        if tok is not None:
            tok.save(w.path)
        build_library(tgt, w.path / "lib" / "model.so")
        times["build library"] = time.perf_counter() - t1
        avg = block_bits / max(block_params, 1)
        bpw = 8 * lut_bytes / max(block_params, 1)
        w.manifest.update(
            {
                "tvm_version": tvm_version(),
                # with the features of the SIMD flags this machine gave a host_simd build
                "target": tgt.manifest_entry(host_flags() if tgt.host_simd else []),
                "model": c.to_dict(),
                "source": {"path": str(m.source), "n_params": m.n_params()},
                "tokenizer": "tokenizer.json" if tok is not None else None,
                "libs": {"model": "lib/model.so"},
                "quant": {
                    "format": scheme.fmt,
                    # one size, or several when --bits keep took each tensor's own
                    "group_size": min(groups) if len(groups) == 1 else None,
                    "group_sizes": sorted(groups),
                    "avg_bits": avg,
                    "bits_per_weight": bpw,
                    "method": quant.method,
                    "tensors_by_method": dict(quant.counts),
                    "calib_tokens": quant.stats.tokens if quant.stats is not None else 0,
                    "quality": None,  # measured below, on the weights as written
                    "units": {u.name: bits[u.name] for u in units},
                },
                "plan": {
                    "layer_variants": [variant_name(scheme.fmt, *ws) for ws in widths],
                    "expert_variants": [
                        [variant_name(scheme.fmt, b) for b in row] for row in expert_bits
                    ]
                    if c.is_moe
                    else None,
                    "head": head_name,
                },
            }
        )
        quality = None
        if quality_tokens:
            from edgert.compiler.quant.quality import measure_quality

            from edgert.format.artifact import Artifact
            from edgert.runtime.weights import reference_model

            t2 = time.perf_counter()
            w.flush()  # the weights are read back as written: what the artifact computes with
            compiled = reference_model(Artifact(w.path, w.manifest))
            compiled.cache_limit = m.cache_limit
            quality = measure_quality(m, compiled, quality_tokens)
            w.manifest["quant"]["quality"] = quality
            times["measure quality"] = time.perf_counter() - t2
        if dram is not None:
            from edgert.format import kvcache
            from edgert.format.artifact import Artifact
            from edgert.plan.dram import plan_dram

            budget, ctx = dram[0], dram[1] or min(c.context_length, 4096)
            spec = dram[2] if len(dram) > 2 else None
            art = Artifact(w.path, w.manifest)

            def make(kv):
                return plan_dram(art, c, max_ctx=ctx, budget=budget, kv=kv)

            if spec is None:  # float32, or f16 / q8 where the budget cannot hold float32
                kv, dp = kvcache.choose(make, c.head_dim)
            else:
                kv = kvcache.parse(spec)
                kvcache.check_heads(kv, c.head_dim)
                dp = make(kv)
            w.manifest["dram"] = {
                "budget": budget,
                "ctx": ctx,
                "kv_cache": kvcache.name(kv),
                "streamed_layers": dp.streamed,
                "planned": dp.planned,
                "minimum": dp.minimum,
            }
    return CompileSummary(
        out=str(out),
        target=tgt.name,
        fmt=scheme.fmt,
        avg_bits=avg,
        bits_per_unit={u.name: bits[u.name] for u in units},
        bytes_by_kind=sizes,
        seconds=times,
        bits_per_weight=bpw,
        method=quant.method,
        quality=quality,
        tensors_by_method=dict(quant.counts),
    )
