"""Latency of a compiled ONNX model on this machine, TFLite ``benchmark_model`` style: init
(opening the artifact), first inference, then avg ± std, median and min over timed runs on
random inputs of the compiled shapes, and peak RSS."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgert.errors import EdgertError
from edgert.measure.bench import markdown_table, peak_rss_bytes
from edgert.runtime.onnx import format_bytes, open_dnn


@dataclass
class DnnBenchResult:
    model: str
    target: str
    weights: str
    size_bytes: int
    threads: int
    runs: int
    warmup: int
    init_s: float
    first_ms: float
    latency_ms: float
    latency_ms_std: float
    latency_ms_median: float
    latency_ms_min: float
    peak_rss_bytes: int
    samples: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("model", "size", "weights", "threads", "test", "ms"),
            (
                self.model,
                format_bytes(self.size_bytes),
                self.weights,
                str(self.threads),
                f"infer x{self.runs}",
                f"{self.latency_ms:.3f} ± {self.latency_ms_std:.3f}",
            ),
        ]
        lines = markdown_table(rows)
        lines.append(
            f"init {self.init_s * 1e3:.1f} ms, first inference {self.first_ms:.3f} ms, "
            f"median {self.latency_ms_median:.3f} ms, min {self.latency_ms_min:.3f} ms, "
            f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB"
        )
        return "\n".join(lines)


def bench_dnn(
    path: str | Path, *, threads: int, runs: int = 50, warmup: int = 3, seed: int = 0
) -> DnnBenchResult:
    """Open ``path`` (timed as init), run it once (first inference), ``warmup`` more times, then
    ``runs`` timed inferences on random inputs of the compiled shapes."""
    if runs < 1 or warmup < 0:
        raise EdgertError("-r must be >= 1 and --warmup >= 0")
    t0 = time.perf_counter()
    eng = open_dnn(path)
    init_s = time.perf_counter() - t0
    feeds = eng.random_inputs(seed)
    t = time.perf_counter()
    eng.run(feeds)
    first_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        eng.run(feeds)
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        eng.run(feeds)
        lat.append((time.perf_counter() - t) * 1e3)
    return DnnBenchResult(
        model=Path(path).name,
        target=eng.art.target.get("name", "?"),
        weights=eng.art.manifest.get("quant", {}).get("weights", "f32"),
        size_bytes=eng.weight_bytes,
        threads=threads,
        runs=runs,
        warmup=warmup,
        init_s=init_s,
        first_ms=first_ms,
        latency_ms=statistics.mean(lat),
        latency_ms_std=statistics.stdev(lat) if len(lat) > 1 else 0.0,
        latency_ms_median=statistics.median(lat),
        latency_ms_min=min(lat),
        peak_rss_bytes=peak_rss_bytes(),
        samples={"latency_ms": lat},
    )
