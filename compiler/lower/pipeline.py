"""TVM's CPU pipeline for a target: how ONNX networks (compiler/onnx) are lowered, scheduled and
compiled, and linked with the target's toolchain."""

from __future__ import annotations


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
                + cg.legalize_passes(target)
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
