"""TVM's CPU pipeline for a target: how ONNX networks (compiler/onnx) are lowered, scheduled and
compiled, and linked with the target's toolchain."""

from __future__ import annotations


def _float_extreme(kind: str):
    """A legalization of ``relax.max`` / ``relax.min`` whose float reductions start from -inf /
    +inf, as ONNX's do (TVM's start from the lowest / highest finite value, so the max of a row
    that is all -inf, such as a fully masked attention row, comes out finite)."""
    from tvm import te, tirx, topi

    combine, start, fallback = {
        "max": (lambda a, b: tirx.max(a, b), float("-inf"), topi.max),
        "min": (lambda a, b: tirx.min(a, b), float("inf"), topi.min),
    }[kind]
    reducer = te.comm_reducer(combine, lambda t: tirx.const(start, t), name=f"{kind}_inf")

    def reduce(data, axis, keepdims):
        nd = len(data.shape)
        axes = sorted({int(a) % nd for a in axis}) if axis is not None else list(range(nd))
        ks = {a: te.reduce_axis((0, data.shape[a]), f"k{a}") for a in axes}
        shape = [1 if i in ks else data.shape[i] for i in range(nd) if keepdims or i not in ks]

        def body(*idx):
            it = iter(idx)
            at = []
            for i in range(nd):
                if i in ks:
                    at.append(ks[i])
                    if keepdims:
                        next(it)
                else:
                    at.append(next(it))
            return reducer(data[tuple(at)], axis=list(ks.values()))

        return te.compute(shape, body, name=kind)

    def legalize(bb, call):
        x = call.args[0]
        axis, keepdims = call.attrs.axis, bool(call.attrs.keepdims)
        nd = len(x.ty.shape)
        if "float" not in str(x.ty.dtype) or (axis is not None and len(axis) == 0) or nd == 0:
            return bb.call_te(fallback, x, axis, keepdims)
        return bb.call_te(reduce, x, axis, keepdims, primfunc_name_hint=kind)

    return legalize


def legalize_passes(target):
    """TVM's CPU legalization passes, with float max / min reductions starting from infinities."""
    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cg

    custom = {"relax.max": _float_extreme("max"), "relax.min": _float_extreme("min")}
    ours = tvm.relax.transform.LegalizeOps(customize_legalize_map=custom)
    return [ours if p.info.name == ours.info.name else p for p in cg.legalize_passes(target)]


def cpu_pipeline(target, *, parallel_fallback: bool = False):
    """TVM's CPU pipeline with dlight's CPU schedules (GEMV, reductions) applied after fusion;
    ``parallel_fallback`` adds :mod:`edgert.compiler.lower.schedule`'s rule for every other operator."""
    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cg
    import tvm.s_tir.dlight as dl

    rules = [dl.cpu.GEMV(), dl.cpu.Reduction()]
    if parallel_fallback:
        from edgert.compiler.lower.schedule import default_cpu_rules

        rules = default_cpu_rules()

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            passes = (
                cg.library_dispatch_passes(target)
                + legalize_passes(target)
                + [dl.ApplyDefaultSchedule(*rules)]
                + cg.dataflow_lower_passes(target)
                + cg.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_module(
    mod,
    tvm_target: dict,
    *,
    out_so: str,
    cxx: str | None = None,
    addons: list[str] | None = None,
    parallel_fallback: bool = False,
) -> None:
    """Compile ``mod`` for ``tvm_target`` and link it (with ``addons`` objects) into ``out_so``."""
    import tvm
    from tvm import relax

    target = tvm.target.Target(tvm_target)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    pipeline = cpu_pipeline(target, parallel_fallback=parallel_fallback)
    ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    kw = {}
    if cxx:
        from tvm.support import cc

        kw["fcompile"] = cc.cross_compiler(cxx)
    ex.export_library(out_so, addons=addons or [], **kw)
