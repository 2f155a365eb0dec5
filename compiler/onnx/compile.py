"""`edgert compile model.onnx`: an ONNX network (vision, audio, small transformers) into the same
artifact format as the LLMs, for any target.

Stages: load + check (``frontends.onnx``: unsupported operators and unpinned shapes are refused
before any work) -> optional int8 weight-only quantization -> Relax import with the weights as
parameters -> TVM's CPU pipeline for the target, cross-linked with the target's toolchain ->
artifact written atomically (weights as checksummed page-aligned buffers; ``kind: "onnx"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgert.errors import EdgertError
from edgert.format.artifact import ArtifactError, ArtifactWriter
from edgert.format.target import load_target
from edgert.progress import Progress

log = logging.getLogger(__name__)

#: --bits values an ONNX model accepts: 32 keeps float32 weights, 8 = int8 weight-only
ONNX_BITS = (8, 32)


@dataclass
class DnnCompileSummary:
    out: str
    target: str
    weights: str  # "f32" | "int8"
    inputs: list[dict]
    outputs: list[dict]
    pinned: list[dict]  # inputs compiled in as constants, each with its "value"
    n_params: int
    weight_bytes: int
    quantized_tensors: int
    ops: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        from edgert.runtime.onnx import format_bytes

        rows = [("stage", "seconds")] + [(k, f"{v:.1f}") for k, v in self.seconds.items()]
        rows += [("", ""), ("weights", f"{format_bytes(self.weight_bytes)} ({self.weights})")]
        rows += [(f"input {i['name']}", f"{_shape(i)} {i['dtype']}") for i in self.inputs]
        rows += [(f"input {i['name']}", f"compiled in as {i['value']}") for i in self.pinned]
        rows += [(f"output {o['name']}", f"{_shape(o)} {o['dtype']}") for o in self.outputs]
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def _shape(spec: dict) -> str:
    from edgert.runtime.onnx import format_shape

    return format_shape(spec["shape"])


def _op_name(expr) -> str | None:
    import tvm

    op = getattr(expr, "op", None)
    return op.name if isinstance(op, tvm.ir.Op) else None


def fuse_dequantize_matmul(mod):
    """``matmul(x, dequantize(w_int8, scale))`` (optionally through a transpose, as Gemm with
    transB gives) becomes one computation that reads the int8 weight inside the reduction and
    scales the sums: without it every inference first writes the whole weight back out as a
    float32 temporary (4x the bytes the int8 weight was meant to save)."""
    from tvm import relax, te
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def zero_point_is_zero(zp) -> bool:
        v = getattr(zp, "value", None)  # a constant (TVM 0.27; ``data`` before)
        v = getattr(zp, "data", None) if v is None else v
        try:
            return not np.any(v.numpy() if hasattr(v, "numpy") else np.asarray(v))
        except (TypeError, ValueError):
            return False

    @mutator
    class Rewrite(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.module = module
            self.count = 0

        def transform(self):
            for gv, func in self.module.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

        def _bound(self, v):
            return self.lookup_binding(v) if isinstance(v, relax.Var) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if _op_name(call) != "relax.matmul":
                return call
            x, w = call.args
            b = self._bound(w)
            trans = _op_name(b) == "relax.permute_dims"
            if trans:
                axes = b.attrs.axes
                if axes is not None and [int(a) for a in axes] != [1, 0]:
                    return call
                b = self._bound(b.args[0])
            if _op_name(b) != "relax.dequantize":
                return call
            wq, scale, zp = b.args
            wt, st, xt = wq.ty, scale.ty, x.ty
            if (
                str(wt.dtype) != "int8"
                or wt.ndim != 2
                or st.ndim != 1
                or str(xt.dtype) != "float32"
                or int(b.attrs.axis) != (0 if trans else 1)
                or not zero_point_is_zero(zp)
            ):
                return call

            def te_fn(xx, ww, ss):
                k = te.reduce_axis((0, xx.shape[-1]), "k")
                n = ww.shape[0] if trans else ww.shape[1]

                def w_at(j):
                    return (ww[j, k] if trans else ww[k, j]).astype("float32")

                acc = te.compute(
                    (*xx.shape[:-1], n),
                    lambda *i: te.sum(xx[(*i[:-1], k)] * w_at(i[-1]), axis=k),
                    name="matmul_int8",
                )
                return te.compute(acc.shape, lambda *i: acc[i] * ss[i[-1]], name="scale")

            self.count += 1
            return self.builder_.call_te(te_fn, x, wq, scale, primfunc_name_hint="matmul_int8")

    rw = Rewrite(mod)
    out = rw.transform()
    if rw.count:
        out = relax.transform.DeadCodeElimination(["main"])(out)
    log.debug("dequantize+matmul fused: %d", rw.count)
    return out


def compile_onnx(
    *,
    model: str | Path,
    target: str,
    out: str | Path,
    bits: int | None = None,
    input_shapes: dict | None = None,
    input_values: dict | None = None,
    force: bool = False,
) -> DnnCompileSummary:
    """Compile the ONNX file ``model`` for ``target`` into the artifact directory ``out``;
    ``input_values`` (name -> array or ``--input-value`` text) are compiled in as constants."""
    from edgert.compiler.lower.library import tvm_version
    from edgert.compiler.lower.pipeline import compile_module
    from edgert.compiler.onnx.frontend import (
        fold_batch_norms,
        load_onnx,
        quantize_weights_int8,
        to_relax,
    )

    t0 = time.perf_counter()
    bits = 32 if bits is None else int(bits)
    if bits not in ONNX_BITS:
        raise EdgertError(
            f"--bits {bits} is not available for ONNX models",
            "use --bits 8 (int8 weights) or leave it out (float32)",
        )
    tgt = load_target(target)
    if tgt.libc != "glibc":
        raise EdgertError(
            f"target {tgt.name}: ONNX models run on the TVM runtime, which is not built for "
            f"{tgt.libc} (Android's C library)",
            "compile it for a Linux board (`edgert targets`), or run a language model there",
        )
    tgt.require_toolchain()
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists", "choose another -o or pass --force")
    weights = "int8" if bits == 8 else "f32"
    m = load_onnx(model, input_shapes=input_shapes, input_values=input_values)
    folded = fold_batch_norms(m)
    if bits == 8:
        quantize_weights_int8(m)
    times = {"load + check": time.perf_counter() - t0}
    t = time.perf_counter()
    mod, params, outputs = to_relax(m)
    mod = fuse_dequantize_matmul(mod)
    inputs = [spec.to_dict() for spec in m.inputs]
    outputs = [spec.to_dict() for spec in outputs]
    pinned = [{**spec.to_dict(), "value": arr.tolist()} for spec, arr in m.pinned]
    times["import"] = time.perf_counter() - t
    with ArtifactWriter(out, force=force) as w:
        t = time.perf_counter()
        with Progress(len(params), "writing weights") as bar:
            for name, arr in params:
                w.add_tensor(name, {"data": arr}, meta={"format": arr.dtype.name})
                bar.update(1)
        times["write weights"] = time.perf_counter() - t
        t = time.perf_counter()
        compile_module(
            mod,
            tgt.tvm_target,
            out_so=str(w.path / "lib" / "model.so"),
            cxx=tgt.cross_cxx,
            parallel_fallback=True,
        )
        times["lower + link"] = time.perf_counter() - t
        weight_bytes = sum(int(a.nbytes) for _, a in params)
        w.manifest.update(
            {
                "kind": "onnx",
                "tvm_version": tvm_version(),
                "target": tgt.manifest_entry(tvm=True),  # TVM's code: its mcpu's features
                "source": {
                    "path": str(m.path.resolve()),
                    "sha256": m.sha256,
                    "opset": m.source_opset or m.opset,
                },
                "graph": {
                    "inputs": inputs,
                    "pinned": pinned,
                    "outputs": outputs,
                    "params": [n for n, _ in params],
                    "ops": m.ops,
                },
                "quant": {
                    "weights": weights,
                    "quantized_tensors": m.quantized,
                },
                "rewrites": {"batch_norms_folded": folded},
                "tokenizer": None,
                "libs": {"model": "lib/model.so"},
            }
        )
    times["total"] = time.perf_counter() - t0
    return DnnCompileSummary(
        out=str(out),
        target=tgt.name,
        weights=weights,
        inputs=inputs,
        outputs=outputs,
        pinned=pinned,
        n_params=int(sum(a.size for _, a in params)),
        weight_bytes=weight_bytes,
        quantized_tensors=len(m.quantized),
        ops=m.ops,
        seconds=times,
    )
