"""``edgert profile``: where an artifact's time and memory go on a device.

:func:`profile_artifact` runs on the device (called by the agent's ``run.profile``, or locally):
the llama-bench figures (pp/tg avg ± std, load time, time to first token) or, for a compiled ONNX
model, the latency figures; per-layer and per-operation time from the runtime's timing hooks;
resident memory sampled over the whole run; flash bytes per token; temperature and CPU frequency
before and after where the device exposes them. :func:`html_report` turns one or several
devices' profiles into one self-contained HTML file (inline SVG plots, no network assets).
"""

from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import Any

RSS_INTERVAL_S = 0.05


class RSSSampler:
    """Samples this process's resident set size every ``interval`` seconds on a thread."""

    def __init__(self, interval: float = RSS_INTERVAL_S):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, self.rss()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, self.rss()))


def profile_artifact(
    path: str | Path, *, threads: int, n_prompt: int = 64, n_gen: int = 32, reps: int = 3
) -> dict[str, Any]:
    """Profile the artifact at ``path`` on this machine (see the module docstring)."""
    from edgert.device.sysinfo import thermal
    from edgert.runtime.onnx import is_dnn_artifact

    before = thermal()
    with RSSSampler() as rss:
        if is_dnn_artifact(path):
            from edgert.measure.onnx import bench_dnn

            r = bench_dnn(path, threads=threads, runs=max(reps, 1) * 10)
            out: dict[str, Any] = {"kind": "onnx", "bench": r.to_dict(), "layers": []}
        else:
            out = _profile_llm(path, threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=reps)
    after = thermal()
    peak = max(b for _, b in rss.samples)
    out.update(
        {
            "artifact": Path(path).name,
            "threads": threads,
            "rss_samples": [[round(t, 4), b] for t, b in rss.samples],
            "peak_rss_bytes": peak,
            "thermal_before": before,
            "thermal_after": after,
        }
    )
    return out


def _profile_llm(path, *, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict[str, Any]:
    import numpy as np

    from edgert.measure.bench import bench_model
    from edgert.runtime.engine import OpTimes

    r, eng = bench_model(path, threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=reps)
    # one more decode run with the timing hooks on: per-layer, per-operation time per token
    ops = OpTimes()
    rng = np.random.default_rng(1)
    eng.reset()
    eng.forward([int(rng.integers(0, eng.cfg.vocab_size))], last_only=True)
    eng.profiler = ops
    for tok in rng.integers(0, eng.cfg.vocab_size, n_gen):
        eng.forward([int(tok)], last_only=True)
    eng.profiler = None
    layers = {}
    for (layer, op), s in ops.seconds.items():
        key = "head" if layer is None else str(layer)
        layers.setdefault(key, {})[op] = s * 1e3 / max(n_gen, 1)
    return {
        "kind": "llm",
        "bench": r.to_dict(),
        "layers": [{"layer": k, "ms_per_token": v} for k, v in layers.items()],
        "flash_bytes_per_token": r.flash_bytes_per_token,
        "cache_hit_rate": None,  # every weight resident: no expert / neuron cache in this run
    }


# -- HTML --------------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def headline(p: dict[str, Any]) -> dict[str, str]:
    """The figures the report prints, formatted exactly as shown (tests compare them)."""
    b = p["bench"]
    if p["kind"] == "onnx":
        out = {
            "latency_ms": _fmt(b["latency_ms"], 3),
            "latency_ms_std": _fmt(b["latency_ms_std"], 3),
            "first_ms": _fmt(b["first_ms"], 3),
            "init_s": _fmt(b["init_s"], 3),
        }
    else:
        out = {
            "pp_tok_s": _fmt(b["pp_tok_s"]),
            "pp_tok_s_std": _fmt(b["pp_tok_s_std"]),
            "tg_tok_s": _fmt(b["tg_tok_s"]),
            "tg_tok_s_std": _fmt(b["tg_tok_s_std"]),
            "load_s": _fmt(b["load_s"], 3),
            "ttft_ms": _fmt(b["ttft_s"] * 1e3, 1),
            "flash_bytes_per_token": _fmt(p.get("flash_bytes_per_token") or 0.0, 0),
        }
    out["peak_rss_mib"] = _fmt(p["peak_rss_bytes"] / 2**20, 1)
    out["threads"] = str(p["threads"])
    return out


def _svg_line(points: list[tuple[float, float]], *, w=560, h=160, label="") -> str:
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs) or 1.0, 0.0, max(ys) or 1.0
    sx = (w - 50) / ((x1 - x0) or 1.0)
    sy = (h - 30) / ((y1 - y0) or 1.0)
    path = " ".join(f"{40 + (x - x0) * sx:.1f},{h - 20 - (y - y0) * sy:.1f}" for x, y in points)
    return (
        f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(label)}">'
        f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{path}"/>'
        f'<text x="40" y="12" font-size="11">{html.escape(label)} (max {y1:.1f})</text>'
        f'<line x1="40" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" stroke="#999"/></svg>'
    )


def _svg_bars(rows: list[tuple[str, dict[str, float]]], *, w=560, bar=12) -> str:
    if not rows:
        return ""
    ops = sorted({op for _, v in rows for op in v})
    colors = ["#2a6fdb", "#e08a1e", "#3aa655", "#b33dc6"]
    top = max(sum(v.values()) for _, v in rows) or 1.0
    h = len(rows) * (bar + 3) + 24
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="time per layer">']
    for i, (name, v) in enumerate(rows):
        y, x = 18 + i * (bar + 3), 60.0
        parts.append(f'<text x="0" y="{y + bar - 2}" font-size="10">{html.escape(name)}</text>')
        for j, op in enumerate(ops):
            width = (w - 70) * v.get(op, 0.0) / top
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{bar}" '
                f'fill="{colors[j % len(colors)]}"><title>{html.escape(op)} '
                f"{v.get(op, 0.0):.3f} ms</title></rect>"
            )
            x += width
    legend = " ".join(
        f'<tspan fill="{colors[j % len(colors)]}">&#9632; {html.escape(op)}</tspan>'
        for j, op in enumerate(ops)
    )
    parts.append(f'<text x="60" y="10" font-size="10">{legend} (ms per token)</text></svg>')
    return "".join(parts)


def html_report(profiles: dict[str, dict[str, Any]]) -> str:
    """One self-contained page for the profiles of one or several devices."""
    sections = []
    for dev, p in profiles.items():
        figs = headline(p)
        rows = "".join(
            f'<tr><th>{html.escape(k)}</th><td id="{html.escape(dev)}:{k}" '
            f'data-key="{k}">{html.escape(v)}</td></tr>'
            for k, v in figs.items()
        )
        rss = [(t, b / 2**20) for t, b in p.get("rss_samples", [])]
        layers = [
            (f"L{x['layer']}" if x["layer"] != "head" else "head", x["ms_per_token"])
            for x in p.get("layers", [])
        ]
        th = p.get("thermal_after") or {}
        extra = ""
        if th.get("temperature_c") or th.get("cpu_freq_khz"):
            extra = (
                f"<p>temperature {th.get('temperature_c')} °C, CPU {th.get('cpu_freq_khz')} kHz, "
                f"governor {html.escape(str(th.get('governor')))}</p>"
            )
        info = p.get("device_info") or {}
        sections.append(
            f'<section data-device="{html.escape(dev)}"><h2>{html.escape(dev)}</h2>'
            f"<p>{html.escape(p['artifact'])} ({p['kind']}) on "
            f"{html.escape(str(info.get('cpu_model', '?')))}, {info.get('machine', '?')}, "
            f"{info.get('cores', '?')} cores</p>"
            f"<table>{rows}</table>{extra}"
            f"<h3>Resident memory over the run (MiB)</h3>{_svg_line(rss, label='RSS MiB')}"
            + (f"<h3>Time per layer</h3>{_svg_bars(layers)}" if layers else "")
            + "</section>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>edgert profile</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
        "<h1>edgert profile</h1>" + "".join(sections) + "</body></html>"
    )
