"""``edgert profile``: where an artifact's time and memory go on a device.

:func:`profile_artifact` runs on the device (called by the agent's ``run.profile``, or locally):
the llama-bench figures (pp/tg avg ± std, load time, time to first token) or, for a compiled ONNX
model, the latency figures; per-layer and per-operation time from the runtime's timing hooks;
resident memory, temperature and CPU frequency sampled over the whole run (where the device
exposes them); flash bytes per token; the hit rate of the weight cache in decode (a mixture's
experts under a DRAM budget, a sparse FFN's neurons under --sparsity). :func:`html_report` turns
one or several devices' profiles into one self-contained HTML file (inline SVG plots, no network
assets; every string a device sent is escaped).
"""

from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError

RSS_INTERVAL_S = 0.05
#: sysfs thermal zones and cpufreq take longer to read than /proc/self/statm, and move slower
THERMAL_INTERVAL_S = 0.5


class PeriodicSampler:
    """Calls :meth:`read` every ``interval`` seconds on a thread while entered (and once more
    on leaving): ``samples`` = [(seconds since entering, value)]."""

    def __init__(self, interval: float):
        self.interval = interval
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> Any:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, self.read()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, self.read()))


class RSSSampler(PeriodicSampler):
    """Samples this process's resident set size every ``interval`` seconds on a thread."""

    def __init__(self, interval: float = RSS_INTERVAL_S):
        super().__init__(interval)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def read(self) -> int:
        return self.rss()


class ThermalSampler(PeriodicSampler):
    """Samples temperatures and CPU frequency (``read``: edgert.device.sysinfo.thermal) every
    ``interval`` seconds on a thread: a device that throttles does so during a run, which
    readings before and after it miss."""

    def __init__(self, interval: float = THERMAL_INTERVAL_S, read=None):
        super().__init__(interval)
        if read is None:
            from edgert.device.sysinfo import thermal as read
        self._read = read

    def read(self) -> dict[str, Any]:
        return self._read()

    def summary(self) -> dict[str, Any]:
        """The hottest reading and the CPU frequency's range over the samples (None where
        the device exposes none)."""
        temps = [max(v["temperature_c"]) for _, v in self.samples if v.get("temperature_c")]
        freqs = [v["cpu_freq_khz"] for _, v in self.samples if v.get("cpu_freq_khz")]
        return {
            "samples": len(self.samples),
            "max_temperature_c": max(temps) if temps else None,
            "min_cpu_freq_khz": min(freqs) if freqs else None,
            "max_cpu_freq_khz": max(freqs) if freqs else None,
        }


def profile_artifact(
    path: str | Path,
    *,
    threads: int,
    n_prompt: int = 64,
    n_gen: int = 32,
    reps: int = 3,
    dram_budget: int | None = None,
    experts: dict | None = None,
    ffn: dict | None = None,
    kv_cache: str | None = None,
) -> dict[str, Any]:
    """Profile the artifact at ``path`` on this machine (see the module docstring);
    ``dram_budget``, ``experts``, ``ffn`` and ``kv_cache`` as
    edgert.runtime.open.open_artifact_engine takes them (language models), echoed as
    ``options``."""
    from edgert.runtime.onnx import is_dnn_artifact

    started = time.time()  # the device's clock: profiles of several devices show their overlap
    with RSSSampler() as rss, ThermalSampler() as heat:
        if is_dnn_artifact(path):
            from edgert.measure.onnx import bench_dnn

            r = bench_dnn(path, threads=threads, runs=max(reps, 1) * 10)
            out: dict[str, Any] = {"kind": "onnx", "bench": r.to_dict(), "layers": []}
        else:
            out = _profile_llm(path, threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=reps,
                               dram_budget=dram_budget, experts=experts, ffn=ffn,
                               kv_cache=kv_cache)  # fmt: skip
    peak = max(b for _, b in rss.samples)
    out.update(
        {
            "artifact": Path(path).name,
            "threads": threads,
            "wall_clock": [started, time.time()],  # when the run began and ended (epoch seconds)
            "options": {
                "dram_budget": dram_budget,
                "experts": experts,
                "ffn": ffn,
                "kv_cache": kv_cache,
            },
            "rss_samples": [[round(t, 4), b] for t, b in rss.samples],
            "peak_rss_bytes": peak,
            "thermal_before": heat.samples[0][1],
            "thermal_after": heat.samples[-1][1],
            "thermal_samples": [
                [round(t, 3), v.get("temperature_c"), v.get("cpu_freq_khz")]
                for t, v in heat.samples
            ],
            "thermal": heat.summary(),
        }
    )
    return out


def _profile_llm(
    path, *, threads: int, n_prompt: int, n_gen: int, reps: int, dram_budget=None,
    experts=None, ffn=None, kv_cache=None,
) -> dict[str, Any]:  # fmt: skip
    import copy

    import numpy as np

    from edgert.measure.bench import bench_model
    from edgert.runtime.engine import OpTimes

    r, eng = bench_model(path, threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=reps,
                         dram_budget=dram_budget, experts=experts, ffn=ffn,
                         kv_cache=kv_cache)  # fmt: skip
    # one more decode run with the timing hooks on: per-layer, per-operation time per token,
    # and the weight cache's hits over it
    ops = OpTimes()
    rng = np.random.default_rng(1)
    eng.reset()
    eng.forward([int(rng.integers(0, eng.cfg.vocab_size))], last_only=True)
    stats = getattr(eng, "stream_stats", None)
    before = copy.deepcopy(stats)
    eng.profiler = ops
    toks = rng.integers(0, eng.cfg.vocab_size, n_gen).tolist()
    t0 = time.perf_counter()
    for tok in toks:
        eng.forward([tok], last_only=True)
    step = (time.perf_counter() - t0) / max(n_gen, 1)
    eng.profiler = None
    layers = {}
    for (layer, op), s in ops.seconds.items():
        key = "head" if layer is None else str(layer)
        layers.setdefault(key, {})[op] = s * 1e3 / max(n_gen, 1)
    inside = sum(ops.seconds.values()) / max(n_gen, 1)  # the C layers and head
    cache, note = weight_cache(eng, before, n_gen)
    return {
        "kind": "llm",
        "bench": r.to_dict(),
        "layers": [{"layer": k, "ms_per_token": v} for k, v in layers.items()],
        # a decode step: its layers and head in C, and the rest (Python, ctypes, embedding
        # lookup, rotary tables, the timing hooks themselves)
        "step_ms_per_token": step * 1e3,
        "outside_forward_ms_per_token": max(step - inside, 0.0) * 1e3,
        "outside_forward_share": max(step - inside, 0.0) / step if step > 0 else None,
        "flash_bytes_per_token": r.flash_bytes_per_token,
        "cache": cache,
        "cache_hit_rate": (cache or {}).get("hit_rate"),
        **({"cache_note": note} if note else {}),
    }


def weight_cache(eng, before, tokens: int) -> tuple[dict | None, str | None]:
    """The engine's weight cache over the decode since ``before`` (a copy of its stream stats
    then): ``{kind, hit_rate, hits, lookups, tokens}``, or None and why there is none."""
    from dataclasses import fields, replace

    kind = (
        "experts"
        if getattr(eng, "expert_cache", None) is not None
        else ("neurons" if getattr(eng, "neurons", None) is not None else None)
    )
    if kind is None:
        if getattr(eng, "streamer", None) is not None:
            n = len(eng.dram_plan.streamed)
            return None, (
                f"no weight cache in this run: {n} layer{'s' * (n != 1)} stream whole from "
                "flash each step"
            )
        return None, (
            "no weight cache in this run: every weight is resident (a mixture of experts caches "
            "its experts under --dram-budget, an artifact compiled with --sparse-ffn its "
            "neurons under --sparsity)"
        )
    after = eng.stream_stats
    # counters over the decode only, the rate by the stats' own definition of a hit
    d = replace(after, **{f.name: getattr(after, f.name) - getattr(before, f.name)
                          for f in fields(after)
                          if type(getattr(after, f.name)) in (int, float)})  # fmt: skip
    hits, lookups = (d.hits, d.lookups) if kind == "experts" else (d.decode_hits, d.decode_active)
    cache = {
        "kind": kind,
        "hit_rate": hits / lookups if lookups else None,
        "hits": hits,
        "lookups": lookups,
        "tokens": tokens,
    }
    return cache, None if lookups else f"the {kind} cache was not asked for anything in decode"


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
            # "none" where the run had no weight cache (cache_note says why)
            "cache_hit_rate": "none"
            if p.get("cache_hit_rate") is None
            else f"{100 * p['cache_hit_rate']:.1f}%",
            # share of a decode step outside the C layers and head ("none": an older device's
            # profile, which does not measure it)
            "outside_forward": "none"
            if p.get("outside_forward_share") is None
            else f"{100 * p['outside_forward_share']:.1f}%",
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


def _e(x: Any) -> str:
    """A value a device sent, as HTML text (any type: a device may send anything)."""
    return html.escape(str(x))


def _thermal_html(p: dict[str, Any]) -> str:
    """Temperature and CPU frequency over the run, where the device exposes them."""
    samples = p.get("thermal_samples") or []
    temps = [(float(t), max(map(float, c))) for t, c, _ in samples if c]
    freqs = [(float(t), float(f) / 1e3) for t, _, f in samples if f]
    if not temps and not freqs:
        return ""
    s = p.get("thermal") or {}
    gov = (p.get("thermal_after") or {}).get("governor")
    line = []
    if temps:
        line.append(f"temperature up to {_e(s.get('max_temperature_c'))} °C")
    if freqs:
        line.append(f"CPU {_e(s.get('min_cpu_freq_khz'))}–{_e(s.get('max_cpu_freq_khz'))} kHz")
    line.append(f"governor {_e(gov)}")
    return (
        f"<h3>Temperature and CPU frequency over the run</h3><p>{', '.join(line)} "
        f"({_e(s.get('samples'))} samples)</p>"
        + (_svg_line(temps, label="hottest zone °C") if temps else "")
        + (_svg_line(freqs, label="CPU MHz") if freqs else "")
    )


def _section(dev: str, p: dict[str, Any]) -> str:
    """One device's part of the report."""
    figs = headline(p)
    rows = "".join(
        f'<tr><th>{_e(k)}</th><td id="{_e(dev)}:{_e(k)}" data-key="{_e(k)}">{_e(v)}</td></tr>'
        for k, v in figs.items()
    )
    rss = [(float(t), float(b) / 2**20) for t, b in p.get("rss_samples", [])]
    layers = [
        (f"L{x['layer']}" if x["layer"] != "head" else "head", x["ms_per_token"])
        for x in p.get("layers", [])
    ]
    info = p.get("device_info") or {}
    note = f"<p>{_e(p['cache_note'])}</p>" if p.get("cache_note") else ""
    return (
        f'<section data-device="{_e(dev)}"><h2>{_e(dev)}</h2>'
        f"<p>{_e(p['artifact'])} ({_e(p['kind'])}) on "
        f"{_e(info.get('cpu_model', '?'))}, {_e(info.get('machine', '?'))}, "
        f"{_e(info.get('cores', '?'))} cores</p>"
        f"<table>{rows}</table>{note}{_thermal_html(p)}"
        f"<h3>Resident memory over the run (MiB)</h3>{_svg_line(rss, label='RSS MiB')}"
        + (f"<h3>Time per layer</h3>{_svg_bars(layers)}" if layers else "")
        + "</section>"
    )


def html_report(profiles: dict[str, dict[str, Any]]) -> str:
    """One self-contained page for the profiles of one or several devices. A profile comes
    from the device: each string in it is escaped, numbers are converted as numbers, and one
    that is not shaped as this edgert's profiles are is refused, naming the device."""
    sections = []
    for dev, p in profiles.items():
        try:
            sections.append(_section(dev, p))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise EdgertError(
                f"device {dev} sent a profile this edgert cannot read ({type(e).__name__}: "
                f"{str(e)[:80]})",
                "update edgert on the device (`edgert deploy` does over SSH)",
            ) from e
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>edgert profile</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
        "<h1>edgert profile</h1>" + "".join(sections) + "</body></html>"
    )
