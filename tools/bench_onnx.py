"""Compiled ONNX models vs onnxruntime, side by side: same model, same inputs, same threads, runs
interleaved in one process per thread count (so both see the same machine state). Prints a table
of median latencies and the ratio, and writes JSON.

    python tools/bench_onnx.py [--size bench] [-t 1,2] [--reps 5] [--runs 20] [--out FILE.json]
    python tools/bench_onnx.py --models light [--only resnet50,squeezenet] ...

The models are the ones tools/make_onnx_models.py builds (``bench`` size: a 224x224 conv net, a
1024-wide MLP, a 128-token transformer block), or with ``--models light`` the model-zoo graphs
the ``onnx`` package ships for backend testing (``light_*.onnx``: resnet50, squeezenet, ...);
each is compiled for the host as float32 and as int8 weight-only, and onnxruntime runs the
float32 model with its default optimizations. "max err" compares with onnxruntime's float32
output on the same random inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgert.settings import THREAD_VARS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

#: model -> batch shape overrides for its dynamic axes
SHAPES = {"convnet": {"image": (1, 3, 224, 224)}, "mlp": {"x": (1, 1024)}, "attention": {}}


def prepare(size: str, work: Path, models: str = "bench", only: set | None = None) -> list[dict]:
    """Build the models and compile them (cached in ``work`` by size)."""
    import onnx
    from edgert.compiler.onnx.compile import compile_onnx
    from make_onnx_models import BUILDERS

    work.mkdir(parents=True, exist_ok=True)
    if models == "light":
        from edgert.compiler.onnx.backend import light_models

        sources = {n: (p, {}) for n, p in light_models().items()}
        size = "light"
    else:
        sources = {n: (work / f"{n}-{size}.onnx", shapes) for n, shapes in SHAPES.items()}
    cases = []
    for name, (src, shapes) in sources.items():
        if only and name not in only:
            continue
        if not src.exists():
            onnx.save(BUILDERS[name](size), src)
        for bits in (None, 8):
            art = work / f"{name}-{size}-{'int8' if bits else 'f32'}.edgert"
            secs = None
            if not art.exists():
                t = time.perf_counter()
                compile_onnx(model=src, target="host", out=art, bits=bits, input_shapes=shapes)
                secs = round(time.perf_counter() - t, 1)
            cases.append(
                {
                    "name": name,
                    "onnx": str(src),
                    "artifact": str(art),
                    "bits": bits,
                    "compile_s": secs,
                }
            )
    return cases


def child(cases: list[dict], threads: int, reps: int, runs: int) -> list[dict]:
    """Runs in a fresh process whose thread pools were sized by the parent's environment."""
    import numpy as np
    import onnxruntime as ort

    from edgert.runtime.onnx import open_dnn

    out = []
    for c in cases:
        eng = open_dnn(c["artifact"])
        feeds = eng.random_inputs(0)
        if c["name"] == "attention":
            from make_onnx_models import causal_mask

            feeds["mask"] = causal_mask(feeds["mask"].shape[0])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(c["onnx"], opts, providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)
        got = eng.run(feeds)
        err = max(
            float(np.max(np.abs(g - r)) / max(1.0, float(np.max(np.abs(r)))))
            for g, r in zip(got.values(), ref)
        )
        for _ in range(3):  # warm both
            eng.run(feeds)
            sess.run(None, feeds)
        e_ms, o_ms = [], []
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(runs):
                eng.run(feeds)
            e_ms.append((time.perf_counter() - t) * 1e3 / runs)
            t = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feeds)
            o_ms.append((time.perf_counter() - t) * 1e3 / runs)
        out.append(
            {
                **c,
                "threads": threads,
                "edgert_ms": statistics.median(e_ms),
                "onnxruntime_ms": statistics.median(o_ms),
                "edgert_samples": e_ms,
                "onnxruntime_samples": o_ms,
                "max_rel_err_vs_onnxruntime": err,
            }
        )
    return out


def cpu_model() -> str:
    try:
        r = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="bench", choices=["small", "bench"])
    ap.add_argument("--models", default="bench", choices=["bench", "light"])
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median)")
    ap.add_argument("--runs", type=int, default=20, help="inferences per repetition")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_onnx")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        spec = json.loads(a.child)
        print(json.dumps(child(spec["cases"], spec["threads"], a.reps, a.runs)))
        return
    only = {x for x in a.only.split(",") if x}
    t0 = time.perf_counter()
    cases = prepare(a.size, a.work, a.models, only)
    print(f"compiled in {time.perf_counter() - t0:.0f} s (cached in {a.work})", file=sys.stderr)
    results = []
    for t in [int(x) for x in a.threads.split(",")]:
        env = {**os.environ, **{var: str(t) for var in THREAD_VARS}}  # sized before start
        r = subprocess.run(
            [sys.executable, __file__, "--reps", str(a.reps), "--runs", str(a.runs),
             "--child", json.dumps({"cases": cases, "threads": t})],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if r.returncode:
            sys.exit(f"benchmark child failed:\n{r.stderr[-3000:]}")
        results += json.loads(r.stdout.strip().splitlines()[-1])
    hdr = ("model", "weights", "threads", "edgert ms", "onnxruntime ms", "ort/edgert", "max err")
    rows = [hdr]
    for r in results:
        rows.append(
            (
                r["name"],
                "int8" if r["bits"] else "f32",
                str(r["threads"]),
                f"{r['edgert_ms']:.3f}",
                f"{r['onnxruntime_ms']:.3f}",
                f"{r['onnxruntime_ms'] / r['edgert_ms']:.2f}x",
                f"{r['max_rel_err_vs_onnxruntime']:.1e}",
            )
        )
    from edgert.measure.bench import markdown_table

    print("\n".join(markdown_table(rows)))
    meta = {
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "size": a.size if a.models == "bench" else "light",
        "reps": a.reps,
        "runs": a.runs,
    }
    print(f"{meta['machine']}, {meta['cores']} cores, {meta['date']}; medians of {a.reps} x "
          f"{a.runs} inferences")  # fmt: skip
    out = a.out or a.work / f"results-{meta['size']}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
