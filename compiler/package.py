"""Quantize, pack, lower and write: the artifact for one target (see edgert.format.artifact)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from edgert.compiler.lower.relax import LinearSpec, build_module, compile_module
from edgert.compiler.quant.scheme import QuantScheme

from edgert.format.artifact import ArtifactWriter
from edgert.progress import Progress
from edgert.format.q8 import quantize_q8
from edgert.runtime.engine import expert_name
from edgert.format.target import Target

log = logging.getLogger(__name__)

#: role in the lowering -> GGUF tensor suffix (per layer)
DENSE_ROLES = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}
ATTN_ROLES = {r: t for r, t in DENSE_ROLES.items() if r in "qkvo"}
EXPERT_ROLES = {"e_gate": "gate", "e_up": "up", "e_down": "down"}
SHARED_ROLES = {"s_gate": "ffn_gate_shexp", "s_up": "ffn_up_shexp", "s_down": "ffn_down_shexp"}


def variant_name(fmt: str, bits: int) -> str:
    return f"{'u' if fmt == 'uniform' else 'h'}{bits}"


def lut_spec(m: int, k: int, fmt: str, bits: int, group: int) -> LinearSpec:
    """The function-input layout of an (m, k) weight in a LUT format (see edgert.runtime.kernels)."""
    tiles, groups = -(-m // 32), -(-k // group)
    scale = (tiles, groups, bits, 32) if fmt == "hlq" else (tiles, groups, 32)
    bufs = (
        ("planes", (tiles, groups * group // 4, bits, 16), "uint8"),
        ("scale", scale, "uint16"),
        ("zero", (tiles, groups, 32), "uint16"),
    )
    meta = {"fmt": fmt, "bits": bits, "group_size": group, "m": m, "k": k}
    return LinearSpec(m, k, fmt=fmt, buffers=bufs, meta=tuple(sorted(meta.items())))


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
    dram: tuple[int, int | None] | None = None,
    sparse: dict | None = None,
    moefy: dict | None = None,
    trace: dict | None = None,
):
    """Everything after the bit plan: returns a CompileSummary. ``dram`` = (budget bytes,
    context tokens): the DRAM plan for that budget is made (an impossible budget fails the
    compile, naming the minimum) and recorded as the artifact's default budget. ``sparse``
    (thresholds, order, calib_tokens from edgert.compiler.transform.sparsify.calibrate): neuron bundles
    are written too. ``moefy``: how the model's experts were split from its dense FFNs
    (edgert.compiler.transform.moefy), recorded in the manifest. ``trace``: a mixture's routing while it
    decodes (edgert.compiler.transform.calibrate.routing_trace), stored for the planner."""
    from edgert.compiler.compile import CompileSummary, _tvm_version

    from edgert.runtime.kernels import build_objects, quantize_hlq, quantize_uniform

    c = m.config
    quant = quantize_hlq if scheme.fmt == "hlq" else quantize_uniform
    layer_bits = [0] * c.n_layers
    expert_bits = [[0] * c.n_experts for _ in range(c.n_layers)]
    for u in units:
        if ".expert." in u.name:
            expert_bits[u.layer][int(u.name.rsplit(".", 1)[1])] = bits[u.name]
        else:
            layer_bits[u.layer] = bits[u.name]
    variants: dict[str, dict[str, LinearSpec]] = {}
    sizes = {"quantized": 0, "q8": 0, "f32": 0}
    t0 = time.perf_counter()
    with ArtifactWriter(out, force=force) as w:

        def put_lut(
            name: str, wt: np.ndarray, b: int, role: str, variant: str, residency: str = "resident"
        ) -> None:
            pw = quant(wt, bits=b, group_size=scheme.group_size)
            meta = dict(pw.meta) if hasattr(pw, "meta") else {}
            w.add_tensor(
                name,
                pw.to_buffers(),
                residency=residency,
                meta={
                    "format": pw.fmt,
                    "bits": b,
                    "group_size": scheme.group_size,
                    "shape": list(pw.shape),
                    "kernel": meta,
                },
            )
            sizes["quantized"] += pw.nbytes
            spec = lut_spec(*pw.shape, pw.fmt, b, scheme.group_size)
            old = variants.setdefault(variant, {}).get(role)
            if old is not None and old != spec:
                raise RuntimeError(f"{name}: layout differs from other {role} weights")
            variants[variant][role] = spec

        def put_f32(name: str) -> None:
            a = m.tensor(name)
            w.add_tensor(name, {"data": a}, meta={"format": "f32", "shape": list(a.shape)})
            sizes["f32"] += a.nbytes

        n_lin = sum(len(u.tensors) for u in units)
        with Progress(n_lin, "quantizing") as bar:
            for i in range(c.n_layers):
                p = f"blk.{i}."
                lv = variant_name(scheme.fmt, layer_bits[i])
                for name in ("attn_norm.weight", "ffn_norm.weight"):
                    put_f32(p + name)
                for extra in (
                    "attn_q.bias",
                    "attn_k.bias",
                    "attn_v.bias",
                    "attn_q_norm.weight",
                    "attn_k_norm.weight",
                    "ffn_gate_inp.weight",
                    "ffn_gate_inp_shexp.weight",
                ):
                    if p + extra in m:
                        put_f32(p + extra)
                roles = ATTN_ROLES if c.is_moe else DENSE_ROLES
                if c.shared_expert_ffn_dim:
                    roles = {**roles, **SHARED_ROLES}
                for role, t in roles.items():
                    put_lut(p + t + ".weight", m.tensor(p + t + ".weight"), layer_bits[i], role, lv)
                    bar.update(1)
                for e in range(c.n_experts):
                    ev = variant_name(scheme.fmt, expert_bits[i][e])
                    for role, proj in EXPERT_ROLES.items():
                        stacked = m.tensor(p + f"ffn_{proj}_exps.weight")
                        put_lut(expert_name(i, proj, e), stacked[e], expert_bits[i][e], role, ev)
                    bar.update(3)
        if moefy is not None:
            w.manifest["moefy"] = moefy
        if trace is not None:
            from edgert.runtime.experts import TRACE

            shape = list(trace["route"].shape)
            # read by the planner only, never loaded by a run
            w.add_tensor(
                TRACE, trace, residency="streamed", meta={"format": "trace", "shape": shape}
            )
        if sparse is not None:
            from edgert.compiler.transform.sparsify import write_activity, write_bundles

            from edgert.runtime.sparse import SPARSITIES

            bf = write_bundles(w, m, layer_bits, scheme.group_size, sparse["order"])
            write_activity(w, sparse["levels"])
            sizes["bundles"] = c.n_layers * c.ffn_dim * bf.nbytes
            w.manifest["sparse_ffn"] = {
                "dim": bf.dim,
                "bits": bf.bits,
                "group": bf.group,
                "sparsities": list(SPARSITIES),
                "thresholds": sparse["thresholds"].tolist(),
                "calib_tokens": sparse["calib_tokens"],
            }
        # embeddings and head: 8-bit
        emb = quantize_q8(m.tensor("token_embd.weight"))
        w.add_tensor(
            "token_embd.weight", emb, meta={"format": "q8", "shape": [c.vocab_size, c.dim]}
        )
        sizes["q8"] += sum(a.nbytes for a in emb.values())
        head_name = "token_embd.weight"
        if "output.weight" in m:
            head = quantize_q8(m.tensor("output.weight"))
            w.add_tensor(
                "output.weight", head, meta={"format": "q8", "shape": [c.vocab_size, c.dim]}
            )
            sizes["q8"] += sum(a.nbytes for a in head.values())
            head_name = "output.weight"
            emb_for_spec = head
        else:
            emb_for_spec = emb
        put_f32("output_norm.weight")
        head_spec = LinearSpec(
            c.vocab_size,
            c.dim,
            fmt="q8",
            buffers=tuple((k, tuple(a.shape), str(a.dtype)) for k, a in emb_for_spec.items()),
        )
        # every variant gets every role (a budget may put only experts, or only attention, at
        # some width): the lowering emits complete function sets per variant
        shapes = {
            r: (sp.out_features, sp.in_features) for v in variants.values() for r, sp in v.items()
        }
        for name, v in variants.items():
            b = int(name[1:])
            for r, (mm, kk) in shapes.items():
                if r not in v:
                    v[r] = lut_spec(mm, kk, scheme.fmt, b, scheme.group_size)
        router = LinearSpec(c.n_experts, c.dim) if c.is_moe else None
        for v in variants.values():
            if router is not None:
                v["router"] = router
        first = next(iter(variants))
        variants[first]["head"] = head_spec
        times["quantize"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        tok = m.tokenizer
        if tok is not None:
            tok.save(w.path)
        objs = build_objects(cc=tgt.cc, cflags=tgt.cflags, out_dir=w.path / "lib" / "obj")
        compile_module(
            build_module(c, variants),
            tgt.tvm_target,
            out_so=str(w.path / "lib" / "model.so"),
            cxx=tgt.cross_cxx,
            addons=[str(o) for o in objs],
        )
        for o in objs:
            Path(o).unlink()
        (w.path / "lib" / "obj").rmdir()
        times["lower + link"] = time.perf_counter() - t1
        avg = sum(u.params * bits[u.name] for u in units) / sum(u.params for u in units)
        w.manifest.update(
            {
                "tvm_version": _tvm_version(),
                "target": tgt.manifest_entry(),
                "model": c.to_dict(),
                "source": {"path": str(m.source), "n_params": m.n_params()},
                "tokenizer": "tokenizer.json" if tok is not None else None,
                "libs": {"model": "lib/model.so"},
                "quant": {
                    "format": scheme.fmt,
                    "group_size": scheme.group_size,
                    "avg_bits": avg,
                    "units": {u.name: bits[u.name] for u in units},
                },
                "plan": {
                    "layer_variants": [variant_name(scheme.fmt, b) for b in layer_bits],
                    "expert_variants": [
                        [variant_name(scheme.fmt, b) for b in row] for row in expert_bits
                    ]
                    if c.is_moe
                    else None,
                    "head": head_name,
                },
            }
        )
        if dram is not None:
            from edgert.format.artifact import Artifact
            from edgert.runtime.stream import plan_dram

            budget, ctx = dram[0], dram[1] or min(c.context_length, 4096)
            dp = plan_dram(Artifact(w.path, w.manifest), c, max_ctx=ctx, budget=budget)
            w.manifest["dram"] = {
                "budget": budget,
                "ctx": ctx,
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
    )
