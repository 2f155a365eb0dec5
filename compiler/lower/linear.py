"""Low-bit linear layers in the TVM lowering: a TE extern stage whose body calls the LUT kernel
library (kernels_neon, linked into the module) on the packed buffers passed as inputs."""

from __future__ import annotations

from edgert.format.lut import FMT_CODE


def _te_lut_linear(x, planes, scale, zero, *, m: int, k: int, bits: int, group: int, fmt: int):
    from tvm import te, tirx

    def body(ins, outs):
        xb, pb, sb, zb = ins
        return tirx.call_extern(
            "int32",
            "edgert_lut_gemm",
            outs[0].data,
            xb.data,
            xb.shape[0],
            tirx.const(m, "int64"),
            tirx.const(k, "int64"),
            pb.data,
            sb.data,
            zb.data,
            tirx.const(bits, "int32"),
            tirx.const(group, "int32"),
            tirx.const(fmt, "int32"),
            tirx.const(0, "int32"),
        )

    return te.extern(
        (x.shape[0], m), [x, planes, scale, zero], body, name="lut_linear", dtype="float32"
    )


def emit_lut_linear(bb, x, params, spec):
    """y (n, m) = x (n, k) . W^T for a LUT-format LinearSpec; params = (planes, scale, zero)."""
    meta = dict(spec.meta)
    return bb.emit(
        bb.call_te(
            _te_lut_linear,
            x,
            *params,
            m=spec.out_features,
            k=spec.in_features,
            bits=int(meta["bits"]),
            group=int(meta["group_size"]),
            fmt=FMT_CODE[spec.fmt],
            primfunc_name_hint=f"lut_{spec.fmt}{meta['bits']}_{spec.out_features}x{spec.in_features}",
        )
    )


def _te_q8_linear(x, q, scale, *, m: int, k: int):
    from tvm import te, tirx

    def body(ins, outs):
        xb, qb, sb = ins
        return tirx.call_extern(
            "int32",
            "edgert_q8_gemm",
            outs[0].data,
            xb.data,
            xb.shape[0],
            tirx.const(m, "int64"),
            tirx.const(k, "int64"),
            qb.data,
            sb.data,
            tirx.const(0, "int32"),
        )

    return te.extern((x.shape[0], m), [x, q, scale], body, name="q8_linear", dtype="float32")


def emit_q8_linear(bb, x, params, spec):
    """y (n, m) = x (n, k) . W^T for 8-bit rows; params = (q, scale)."""
    return bb.emit(
        bb.call_te(
            _te_q8_linear,
            x,
            *params,
            m=spec.out_features,
            k=spec.in_features,
            primfunc_name_hint=f"q8_{spec.out_features}x{spec.in_features}",
        )
    )
