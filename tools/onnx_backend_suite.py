"""The ONNX backend test suite (shipped with the ``onnx`` package) through edgert and through
onnxruntime on this machine: every case compiled and run by each, counted as pass / fail / refused
/ error (``compiler/onnx/backend.py`` says which is which), grouped by the operator under test.

    python tools/onnx_backend_suite.py [--kinds node,simple,pytorch-converted,pytorch-operator,light]
        [-k SUBSTRING] [--jobs N] [--no-peer] [--out results.json] [--markdown table.md]
        [--pass-list tests/compiler/onnx_backend_pass.txt]

Cases run in worker processes (a crash counts as ``error`` for the case it happened in and the
sweep goes on). ``light`` are the model-zoo graphs the package ships without test data: their
input is made as onnx's own runner makes it (``arange / n``) and the reference is the
``light_*_output_0.pb`` beside them (rtol 1e-3, atol 1e-5: seven to a hundred convolutions
summed in a different order).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from edgert.compiler.onnx.backend import LIGHT_ATOL, LIGHT_RTOL, light_data, light_models

REPO = Path(__file__).resolve().parents[1]
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")


@dataclass
class LightCase:
    """A light model as a suite case (``model_dir``-less, data made the runner's way)."""

    name: str
    path: str
    rtol: float = LIGHT_RTOL
    atol: float = LIGHT_ATOL
    model = None
    model_dir = None
    kind = "light"


def load_cases(kinds) -> dict:
    """name -> case, for the requested kinds."""
    from onnx.backend.test import loader

    cases = {}
    for kind in kinds:
        if kind == "node":
            got = loader.load_node_model_tests()
        elif kind == "light":
            got = [LightCase(p.stem, str(p)) for p in light_models().values()]
        else:
            got = loader.load_model_tests(kind=kind)
        for c in got:
            cases[c.name] = c
    return cases


def family(case, cases) -> str:
    """The operator a case tests: its graph's op for node cases (the unexpanded twin's for
    ``*_expanded`` function bodies), the kind for model cases."""
    if getattr(case, "kind", "node") != "node":
        return f"({case.kind} models)"
    base = re.sub(r"_expanded(_ver\d+)?$", "", case.name)
    model = (cases.get(base) or case).model
    ops = [n.op_type for n in model.graph.node if n.op_type not in ("Constant", "Identity")]
    return ops[0] if ops else model.graph.node[0].op_type if model.graph.node else "(empty)"


class OrtBackend:
    """onnxruntime's own backend adapter, with its refusals told from its failures."""

    @staticmethod
    def refusals():
        from onnxruntime.capi import onnxruntime_pybind11_state as st

        return tuple(
            getattr(st, n)
            for n in ("NotImplemented", "InvalidGraph", "InvalidArgument")
            if hasattr(st, n)
        )

    @staticmethod
    def supports_device(device):
        return device == "CPU"

    @staticmethod
    def prepare(model, device="CPU", **kw):
        import onnxruntime.backend as b

        return b.prepare(model, device)


MARK = "@@case "


def worker(names: list[str], kinds, peer: bool) -> None:
    """Runs ``names``, printing one ``MARK``-prefixed JSON line per case as it starts and ends
    (anything else a compiler or runtime prints on stdout is passed over)."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("EDGERT_NO_PROGRESS", "1")
    import logging

    logging.disable(logging.WARNING)
    from edgert.compiler.onnx import backend as eb

    from edgert.errors import EdgertError

    cases = load_cases(kinds)
    ort_refusals = OrtBackend.refusals() if peer else ()
    for name in names:
        c = cases[name]
        print(MARK + json.dumps({"start": name}), flush=True)
        load = (lambda case: light_data(case.path)) if isinstance(c, LightCase) else None
        t = time.perf_counter()
        r = eb.classify(eb.EdgertBackend, c, (EdgertError,), load=load)
        row = {"name": name, "edgert": r.outcome, "edgert_detail": r.detail}
        row["seconds"] = round(time.perf_counter() - t, 3)
        if peer:
            p = eb.classify(OrtBackend, c, ort_refusals, load=load)
            row.update(ort=p.outcome, ort_detail=p.detail)
        print(MARK + json.dumps(row), flush=True)


def _run_chunks(names: list[str], args, progress) -> list[dict]:
    """Runs ``names`` in worker processes of ``--chunk`` cases each, restarting after a crash."""
    cmd = [sys.executable, __file__, "--worker", "--kinds", ",".join(args.kinds)]
    cmd += [] if args.peer else ["--no-peer"]
    rows: list[dict] = []
    todo = list(names)
    while todo:
        chunk, todo = todo[: args.chunk], todo[args.chunk :]
        p = subprocess.Popen(
            cmd + chunk, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
        )
        started, done = None, set()
        for line in p.stdout:
            if not line.startswith(MARK):
                continue
            d = json.loads(line[len(MARK) :])
            if "start" in d:
                started = d["start"]
                continue
            rows.append(d)
            done.add(d["name"])
            progress()
        rc = p.wait()
        if rc != 0 and started is not None and started not in done:
            rows.append(
                {"name": started, "edgert": "error", "edgert_detail": f"worker died ({rc})"}
            )
            if args.peer:
                rows[-1].update(ort="error", ort_detail="not run (edgert's worker died)")
            done.add(started)
            progress()
        if not done:  # it died before any case: running it again would loop for ever
            sys.exit(f"the suite's worker exited ({rc}) before its first case ended")
        todo = [n for n in chunk if n not in done] + todo
    return rows


def sweep(names: list[str], args) -> list[dict]:
    """Runs the cases over ``--jobs`` parallel worker streams, with a progress line on stderr."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock, t0, count = threading.Lock(), time.perf_counter(), [0]

    def progress():
        with lock:
            count[0] += 1
            n, el = count[0], time.perf_counter() - t0
            eta = el / n * (len(names) - n)
            print(
                f"\r{n}/{len(names)} cases, {el:.0f} s, ETA {eta:.0f} s ", end="", file=sys.stderr
            )

    jobs = max(1, args.jobs)
    with ThreadPoolExecutor(jobs) as ex:
        parts = list(ex.map(lambda i: _run_chunks(names[i::jobs], args, progress), range(jobs)))
    print(file=sys.stderr)
    order = {n: i for i, n in enumerate(names)}
    return sorted((r for part in parts for r in part), key=lambda r: order[r["name"]])


def markdown(rows: list[dict], cases, peer: bool) -> str:
    """Totals, then the operator families where edgert passes fewer cases than onnxruntime."""
    by = defaultdict(Counter)
    for r in rows:
        f = family(cases[r["name"]], cases)
        by[f]["cases"] += 1
        by[f]["edgert " + r["edgert"]] += 1
        if peer:
            by[f]["ort " + r["ort"]] += 1
    tot = Counter()
    for c in by.values():
        tot.update(c)
    cols = ["pass", "fail", "refused", "error"]
    head = "| | cases | " + " | ".join(f"edgert {c}" for c in cols)
    head += " | onnxruntime pass |" if peer else " |"
    lines = [head, "|" + "---|" * (2 + len(cols) + (1 if peer else 0))]

    def row(label, c):
        s = f"| {label} | {c['cases']} | " + " | ".join(str(c["edgert " + k]) for k in cols)
        return s + (f" | {c['ort pass']} |" if peer else " |")

    lines.append(row("**all**", tot))
    behind = sorted(
        (f for f, c in by.items() if c["edgert pass"] < c["cases"]),
        key=lambda f: (-(by[f]["ort pass"] - by[f]["edgert pass"]), f),
    )
    lines += [row(f"`{f}`", by[f]) for f in behind]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("-k", dest="pattern", help="only cases whose name contains this")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip onnxruntime")
    ap.add_argument("--chunk", type=int, default=200, help="cases per worker process")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes at once")
    ap.add_argument("--out", help="write every case's result as JSON")
    ap.add_argument("--markdown", help="write the table here too")
    ap.add_argument(
        "--pass-list",
        help="write the cases edgert passes here, one per line (tests/compiler/onnx_backend_pass.txt)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind {', '.join(bad)} (kinds: {', '.join(KINDS)})")
    if args.worker:
        worker(rest, args.kinds, args.peer)
        return 0
    cases = load_cases(args.kinds)
    names = sorted(n for n in cases if not args.pattern or args.pattern in n)
    if not names:
        print(f"no case matches {args.pattern!r}", file=sys.stderr)
        return 2
    t = time.perf_counter()
    rows = sweep(names, args)
    import onnx
    from bench_onnx import cpu_model

    meta = {
        "onnx": onnx.__version__,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "seconds": round(time.perf_counter() - t, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.peer:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    table = markdown(rows, cases, args.peer)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.pass_list:
        passed = [r["name"] for r in rows if r["edgert"] == "pass"]
        head = f"# ONNX backend test suite cases edgert passes (onnx {onnx.__version__}), from\n"
        cmd = " ".join(
            ["python tools/onnx_backend_suite.py", *(sys.argv[1:] if argv is None else argv)]
        )
        head += f"# {cmd} on {meta['date']}\n"
        Path(args.pass_list).write_text(head + "\n".join(passed) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
