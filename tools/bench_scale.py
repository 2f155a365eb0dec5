"""At real sizes, from one command: each case's model generated in a quantized GGUF type
(tools/make_synthetic_gguf.py, the real models' shapes with random weights), compiled for this
machine, predicted by the cost model on the boards themselves (`edgert inspect --board`), and
run side by side with llama.cpp on the emulated board through tools/bench_vs_llamacpp.py: one
cgroup v1 memory limit of the board's DRAM for either engine's process (page cache included),
reads throttled to the board's flash (root). Prints one Markdown table and writes every figure
to ``results.json`` beside the models.

Resumable: each stage's output lives under ``~/.cache/edgert/scale`` (``--dir``), named by what
made it — the model's arguments, the compile's options, the run's options — and a stage whose
output is there is skipped. An interrupted stage leaves nothing that a later run would take for
done: the GGUF is written to a ``.part`` file renamed when complete, the artifact is written
atomically by `edgert compile`, a case's runs land in their JSON file when all are done.

    sudo .venv/bin/python tools/bench_scale.py --list
    sudo .venv/bin/python tools/bench_scale.py --case qwen3-30b-a3b-clustered -t 2 -r 3
    sudo .venv/bin/python tools/bench_scale.py --smoke      # every case at a toy shape, minutes

Not for CI (tens of GB of disk and hours at full size). ``--smoke`` runs the same stages on toy
shapes with the memory limit set between the two engines' needs, so the whole pipeline is
checked in minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
#: the text the compiler calibrates on and measures quality with (RTN needs no statistics)
CALIB = ROOT / "tests" / "data" / "gpl-3.0.txt"
#: the boards `inspect --board` predicts each artifact on
BOARDS = ("rpi5", "jetson-orin-nano", "rpi4")


@dataclass(frozen=True)
class Model:
    """A synthetic model: make_synthetic_gguf's arguments."""

    arch: str
    preset: str
    qtype: str
    router: str = "random"  # mixtures only
    shape: tuple = ()  # (field, value) overrides of the preset's shape (--smoke)

    @property
    def name(self) -> str:
        from make_synthetic_gguf import MOE_ARCHS

        parts = [self.preset] + ([self.router] if self.arch in MOE_ARCHS else []) + [self.qtype]
        if self.shape:
            parts.append("s" + _digest(self.shape))
        return "-".join(parts)


@dataclass(frozen=True)
class Case:
    """A model compiled with ``compile`` options and run on ``board``'s emulation (memory: the
    board's DRAM unless ``memory`` is given) with ``edgert`` options for `edgert bench`."""

    model: Model
    compile: tuple[str, ...]
    board: str
    memory: str | None = None
    edgert: tuple[str, ...] = ()
    why: str = ""
    #: bench_vs_llamacpp options for llama.cpp: without its CPU repacking, which copies the
    #: weights into anonymous memory at load (a model larger than the board then cannot load;
    #: without it llama.cpp streams from its memory-mapped file, as on a board)
    peer: tuple[str, ...] = ("--peer-no-repack",)


#: 2.5 bits per weight stored: 2-bit codes, a float16 scale and zero per 64 weights
TWO_HALF = ("--bits", "2", "--group-size", "64", "--quant-method", "rtn")
QWEN3_30B = Model("qwen3moe", "qwen3-30b-a3b", "Q2_K", "clustered")
LLAMA3_8B = Model("llama3", "llama3-8b", "Q4_0")
CASES = {
    "qwen3-30b-a3b-clustered": Case(
        QWEN3_30B, TWO_HALF, "rpi5",
        why="Qwen3-30B-A3B shape, router with token clusters; llama.cpp on the Q2_K file (9.6 GiB)",
    ),
    "qwen3-30b-a3b-random": Case(
        Model("qwen3moe", "qwen3-30b-a3b", "Q2_K", "random"), TWO_HALF, "rpi5",
        why="the same with uniformly random routers (no structure for the cache to use)",
    ),
    "llama3-8b": Case(
        LLAMA3_8B, ("--bits", "keep"), "rpi4",
        why="Llama-3-8B shape, layers streamed; the Q4_0 file (4.3 GiB) imported as it is "
            "(--bits keep: both engines run the same 4-bit weights)",
    ),
    "llama3-8b-sparse": Case(
        LLAMA3_8B, ("--bits", "4", "--quant-method", "rtn", "--sparse-ffn"), "rpi4",
        edgert=("--sparsity", "0.5"),
        why="the same with FFN neurons read as they activate (--sparse-ffn, --sparsity 0.5)",
    ),
}  # fmt: skip
#: --smoke: each case's architecture at a toy shape (a few MB) and the memory limit that makes
#: it stream: above either engine's process alone, below process + model
SMOKE_SHAPES = {
    "qwen3moe": (("layers", 4), ("dim", 256), ("experts", 16), ("expert_ffn", 256),
                 ("vocab", 2048), ("heads", 4), ("kv_heads", 2), ("head_dim", 64)),
    "llama3": (("layers", 4), ("dim", 512), ("ffn", 2048), ("vocab", 2048), ("heads", 8),
               ("kv_heads", 2)),
}  # fmt: skip


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def smoke_case(c: Case) -> Case:
    from dataclasses import replace

    return replace(c, model=replace(c.model, shape=SMOKE_SHAPES[c.model.arch]))


def smoke_memory(art: Path, a) -> int:
    """A memory limit that makes a toy artifact stream: edgert's process, then half-way between
    the plan's minimum and all of the model."""
    from bench_vs_llamacpp import EDGERT_SLACK, edgert_baseline

    from edgert.format.artifact import Artifact
    from edgert.plan.dram import plan_dram
    from edgert.plan.moe import plan_moe
    from edgert.plan.sizes import BUDGET_BATCH

    art_ = Artifact.open(art, verify_resident=False)
    cfg = art_.config()
    make = plan_moe if cfg.is_moe else plan_dram
    # sized as a run under a budget is: its scratch for BUDGET_BATCH tokens per call
    p = make(art_, cfg, max_ctx=a.n_prompt + a.n_gen + 16, budget=None, n_batch=BUDGET_BATCH)
    return edgert_baseline(art) + EDGERT_SLACK + (p.minimum + p.planned) // 2


def generate(m: Model, d: Path) -> Path:
    """The model's GGUF, written once (to a ``.part`` file, renamed when complete)."""
    from make_synthetic_gguf import make_synthetic_gguf

    out = d / f"{m.name}.gguf"
    if out.exists():
        return out
    print(f"[generate] {out.name}", file=sys.stderr)
    part = out.with_suffix(".part")
    t0 = time.perf_counter()
    make_synthetic_gguf(
        out=part, arch=m.arch, preset=m.preset, qtype=m.qtype, router=m.router,
        progress=sys.stderr.isatty(), **dict(m.shape),
    )  # fmt: skip
    _write_json(out.with_suffix(".gen.json"), {"seconds": time.perf_counter() - t0})
    part.replace(out)
    return out


def _edgert() -> str:
    exe = Path(sys.executable).parent / "edgert"
    return str(exe) if exe.exists() else "edgert"


def compile_case(c: Case, gguf: Path, d: Path) -> Path:
    """The case's artifact for this machine (``--target host``: the emulation runs here),
    compiled once; its wall time and peak RSS kept beside it."""
    out = d / f"{c.model.name}-{_digest(c.compile)}.edgert"
    if (out / "manifest.json").exists():
        return out
    cmd = [_edgert(), "compile", str(gguf), "--target", "host", "--calib", str(CALIB),
           *c.compile, "-o", str(out), "--force"]  # fmt: skip
    print(f"[compile] {' '.join(cmd)}", file=sys.stderr)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"compile failed (exit {p.returncode}): {' '.join(cmd)}")
    _write_json(
        out.parent / f"{out.name}.compile.json",
        {"command": cmd, "seconds": time.perf_counter() - t0,
         "peak_rss_bytes": usage.ru_maxrss * 1024},
    )  # fmt: skip
    return out


def predict_boards(art: Path, boards=BOARDS) -> dict:
    """`edgert inspect ART --board ...` (the cost model on the boards themselves)."""
    cmd = [_edgert(), "inspect", str(art), "--json"] + [f"--board={b}" for b in boards]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"inspect failed: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout)


def run_case(name: str, c: Case, gguf: Path, art: Path, d: Path, a) -> dict:
    """The side-by-side runs (bench_vs_llamacpp under the board's emulation), once per
    (case, options): a finished case's JSON is reused, unless ``--rerun``."""
    from edgert.format.target import load_target

    board = load_target(c.board)
    memory = c.memory or str(a.smoke and smoke_memory(art, a) or board.dram_bytes)
    # a smoke run's limit comes from a measured baseline (it moves by a few KiB between runs):
    # its key names the rule, not the figure
    key = "smoke" if a.smoke and not c.memory else memory
    opts = {"threads": a.threads, "n_prompt": a.n_prompt, "n_gen": a.n_gen,
            "reps": a.repetitions, "memory": key, "edgert": c.edgert,
            "peer": c.peer}  # fmt: skip
    out = d / "runs" / f"{name}-{art.name}-{_digest(opts)}.json"
    if out.exists() and not a.rerun:
        return json.loads(out.read_text())
    # the edgert child predicts with the throttled flash (the emulated board's figures)
    flash = f"--flash-figures {board.name},{board.flash_read_mbs},{board.flash_latency_us}"
    part = out.with_suffix(".part")
    cmd = [sys.executable, str(ROOT / "tools" / "bench_vs_llamacpp.py"), "--gguf", str(gguf),
           "--edgert", str(art), "--emulate", c.board, "--memory", memory,
           "-t", str(a.threads), "-p", str(a.n_prompt), "-n", str(a.n_gen),
           "-r", str(a.repetitions), "--json-out", str(part), *c.peer,
           f"--edgert-args={' '.join(c.edgert)} {flash}"]  # fmt: skip
    print(f"[run] {name}: {' '.join(cmd)}", file=sys.stderr)
    p = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
    print(p.stdout, file=sys.stderr)
    if p.returncode:
        raise SystemExit(f"{name}: bench_vs_llamacpp failed (exit {p.returncode})")
    rows = json.loads(part.read_text())
    part.replace(out)
    return rows


def summarize(name: str, c: Case, gguf: Path, art: Path, rows: list, inspect: dict) -> dict:
    """The figures of one case for the table: speed of both engines, the cache's hit rate and
    flash bytes per token, memory peaks, and the cost model's predictions."""
    import statistics

    r = rows[0]
    ours = [x for x in r["samples"]["edgert"] if "killed" not in x]

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    tg = [x.get("stream_tg") or {} for x in ours]
    pred = [x.get("prediction") or {} for x in ours]
    board = [x.get("prediction_board") or {} for x in ours]
    return {
        "case": name,
        "why": c.why,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "artifact": art.name,
        "artifact_bytes": sum(inspect["bytes"].values()),
        "bits_per_weight": inspect.get("bits_per_weight") or inspect.get("avg_bits"),
        "board": c.board,
        "memory_limit_bytes": r["emulation"]["memory_limit_bytes"],
        "edgert_budget_bytes": r["emulation"]["budget_bytes"],
        "threads": r["threads"],
        "llama_tg": r["llama_tg"],
        "edgert_tg": r["edgert_tg"],
        "tg_ratio": r["tg_ratio"],
        "llama_pp": r["llama_pp"],
        "edgert_pp": r["edgert_pp"],
        "hit_rate": med([t.get("hit_rate") for t in tg]),
        "prefetch_accuracy": med([(x.get("stream") or {}).get("prefetch_accuracy") for x in ours]),
        # the timed decode steps alone (the whole run's figure counts the prompts' reads too)
        "edgert_flash_mb_per_token": _mb(med([t.get("flash_bytes_per_token") for t in tg])),
        "stall_ms_per_token": med(
            [1e3 * t["stall_seconds"] / t["tokens"] for t in tg if t.get("tokens")]
        ),
        "llama_disk_read_bytes": r.get("llama_disk_read"),
        "edgert_disk_read_bytes": r.get("edgert_disk_read"),
        "llama_cgroup_peak": r.get("llama_cgroup_peak"),
        "edgert_cgroup_peak": r.get("edgert_cgroup_peak"),
        "predicted_tg": med([p.get("tok_s") for p in pred]),
        "predicted_board_tg": med([b.get("tok_s") for b in board]),
        "boards": {
            b["board"]: (b.get("cost_model") or {}).get("tok_s") for b in inspect.get("boards", [])
        },
        "killed": {
            side: [x["killed"] for x in xs if "killed" in x] for side, xs in r["samples"].items()
        },
        "routing": routing_spread(art),
    }


def routing_spread(art: Path) -> dict | None:
    """How the compiled routing trace spreads over the experts (edgert.format.routing.spread);
    None for a dense model. Whether a router has structure is seen here, not in its name: random
    router rows on a random model's hidden states can pick fewer experts than clustered ones."""
    from edgert.format import names
    from edgert.format.artifact import Artifact
    from edgert.format.routing import spread

    a = Artifact.open(art, verify_resident=False)
    trace = a.record(names.ROUTING_TRACE)
    return None if trace is None else spread(a.config(), trace["route"])


def _mb(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _f(v, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _spread(r: dict | None) -> str:
    if not r:
        return "—"
    return (f"{r['distinct_experts_median']:.0f} over {r['tokens']} tokens, "
            f"{r['next_token_overlap']:.0%} kept by the next")  # fmt: skip


def table(rows: list[dict]) -> list[str]:
    from edgert.measure.bench import markdown_table

    head = ("case", "board (memory)", "bits/w", "llama.cpp tg", "edgert tg", "ratio",
            "hit rate", "experts used per layer (routing trace)", "flash MB/token",
            "peak MB llama.cpp / edgert", "predicted (emulated)",
            "predicted on the boards")  # fmt: skip
    out = [head]
    for s in rows:
        out.append((
            s["case"], f"{s['board']} ({s['memory_limit_bytes'] / 2**30:.1f} GiB)",
            _f(s["bits_per_weight"]), _f(s["llama_tg"]), _f(s["edgert_tg"]),
            _f(s["tg_ratio"], "{:.2f}x"), _f(s["hit_rate"], "{:.0%}"),
            _spread(s.get("routing")),
            _f(s["edgert_flash_mb_per_token"], "{:.0f}"),
            f"{_f(_mb(s['llama_cgroup_peak']), '{:.0f}')} / "
            + _f(_mb(s["edgert_cgroup_peak"]), "{:.0f}"),
            _f(s["predicted_tg"]),
            ", ".join(f"{b} {_f(v)}" for b, v in s["boards"].items()),
        ))  # fmt: skip
    return markdown_table(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", action="append", choices=list(CASES), help="(default: all)")
    ap.add_argument("--list", action="store_true", help="the cases, and what is cached of each")
    ap.add_argument("--smoke", action="store_true", help="every stage on toy shapes")
    ap.add_argument("--dir", default=None, help="cache (default ~/.cache/edgert/scale)")
    ap.add_argument("--stage", choices=("generate", "compile", "predict", "run"), default="run",
                    help="stop after this stage (default: run)")  # fmt: skip
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=16)
    ap.add_argument("-n", "--n-gen", type=int, default=16)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--json-out", default=None, help="(default: DIR/results.json)")
    ap.add_argument(
        "--rerun", action="store_true",
        help="run the side-by-side runs again where a finished one is cached (after a change to "
        "either engine; the models and compiles are reused)",
    )  # fmt: skip
    a = ap.parse_args(argv)
    from edgert.settings import cache_dir

    d = Path(a.dir) if a.dir else cache_dir() / ("scale-smoke" if a.smoke else "scale")
    d.mkdir(parents=True, exist_ok=True)
    (d / "runs").mkdir(exist_ok=True)
    names = a.case or list(CASES)
    cases = {n: smoke_case(CASES[n]) if a.smoke else CASES[n] for n in names}
    if a.list:
        for n, c in cases.items():
            g = d / f"{c.model.name}.gguf"
            art = d / f"{c.model.name}-{_digest(c.compile)}.edgert"
            print(f"{n}: {c.why}\n  model {g} ({'cached' if g.exists() else 'not made'})\n"
                  f"  artifact {art} ({'cached' if art.exists() else 'not made'})")  # fmt: skip
        return 0
    summary = []
    for n, c in cases.items():
        gguf = generate(c.model, d)
        if a.stage == "generate":
            continue
        art = compile_case(c, gguf, d)
        if a.stage == "compile":
            continue
        inspect = predict_boards(art)
        if a.stage == "predict":
            print(json.dumps({n: inspect["boards"]}, indent=1))
            continue
        rows = run_case(n, c, gguf, art, d, a)
        summary.append(summarize(n, c, gguf, art, rows, inspect))
    if summary:
        print("\n".join(table(summary)))
        _write_json(Path(a.json_out) if a.json_out else d / "results.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
