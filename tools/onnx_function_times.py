"""Where an ONNX model's time goes: each compiled (fused) TIR function of the host lowering, built
and timed on its own with random buffers, slowest first.

    python tools/onnx_function_times.py MODEL.onnx [--input-shape NAME:DIMS ...] [--bits 8]
        [-n 20] [--script NAME]

Set TVM_NUM_THREADS to the thread count to time. ``--script NAME`` prints the scheduled TIR of
the functions whose name contains NAME.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", action="append", default=None)
    ap.add_argument("--bits", type=int, default=None)
    ap.add_argument("-n", type=int, default=20, help="calls timed per function")
    ap.add_argument("--script", default=None)
    a = ap.parse_args()

    import tvm
    import tvm.relax.backend.cpu_generic.pipeline as cg
    import tvm.s_tir.dlight as dl
    from edgert.compiler.lower.schedule import default_cpu_rules
    from edgert.compiler.onnx.compile import fuse_dequantize_matmul
    from edgert.compiler.onnx.frontend import (
        fold_batch_norms,
        load_onnx,
        parse_input_shapes,
        quantize_weights_int8,
        to_relax,
    )
    from tvm import relax

    from edgert.format.target import load_target

    m = load_onnx(a.model, input_shapes=parse_input_shapes(a.input_shape))
    fold_batch_norms(m)
    if a.bits == 8:
        quantize_weights_int8(m)
    mod, _, _ = to_relax(m)
    mod = relax.transform.DecomposeOpsForInference()(fuse_dequantize_matmul(mod))
    target = tvm.target.Target(load_target("host").tvm_target)
    with target:
        mod = tvm.transform.Sequential(
            cg.library_dispatch_passes(target) + cg.legalize_passes(target)
        )(mod)
        mod = dl.ApplyDefaultSchedule(*default_cpu_rules())(mod)
    rows = []
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        name = str(gv.name_hint)
        fn = tvm.compile(f.with_attr("global_symbol", "main"), target=target)["main"]
        rng = np.random.default_rng(0)
        args = [
            tvm.runtime.tensor(
                np.asarray(rng.random([int(d) for d in p.shape])).astype(str(p.dtype))
            )
            for p in f.params
        ]
        fn(*args)
        t = time.perf_counter()
        for _ in range(a.n):
            fn(*args)
        rows.append(((time.perf_counter() - t) * 1e3 / a.n, name))
        if a.script and a.script in name:
            print(f.script())
    total = sum(ms for ms, _ in rows)
    for ms, name in sorted(rows, reverse=True):
        print(f"{ms:9.3f} ms  {100 * ms / total:5.1f}%  {name}")
    print(f"{total:9.3f} ms  total of {len(rows)} functions")


if __name__ == "__main__":
    main()
