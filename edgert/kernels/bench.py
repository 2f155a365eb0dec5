"""`edgert bench-kernels`: LUT GEMV weight bandwidth against measured DRAM read bandwidth and
against float32 BLAS GEMV (numpy) on the same shapes. Weights are cycled over >= 512 MB of
distinct copies so caches do not flatter the figures (cold, as in decode of a large model)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgert.errors import EdgertError
from edgert.kernels import PackedWeight, gemv, isa, quantize_uniform
from edgert.progress import Progress

SHAPES = {
    "smollm2-qkvo": (576, 576),
    "smollm2-up": (1536, 576),
    "smollm2-down": (576, 1536),
    "7b-qkvo": (4096, 4096),
    "7b-up": (11008, 4096),
    "7b-down": (4096, 11008),
}
MIN_BYTES = 512 << 20


def dram_read_gbs(threads: int, *, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Read bandwidth: ``threads`` workers of the kernel library reading a 1 GiB buffer once with
    wide loads (median of ``reps``; the buffer is far larger than any cache)."""
    from edgert.kernels import load_library

    lib = load_library()
    a = np.ones(nbytes, np.uint8)
    out = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        lib.edgert_read_bytes(a.ctypes.data, a.nbytes, threads)
        out.append(a.nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(out[1:])


def _cycle(fn, items, seconds: float) -> float:
    """Median seconds per call over rounds through every item."""
    fn(items[0])
    per_round = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(per_round) < 3:
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        per_round.append((time.perf_counter() - t0) / len(items))
    return statistics.median(per_round)


@dataclass
class KernelRow:
    shape: str
    m: int
    k: int
    bits: int
    threads: int
    weight_bytes: int
    ms: float
    gbs: float
    pct_dram: float
    fp32_ms: float
    fp32_gbs: float
    speedup_vs_fp32: float
    byte_ratio: float


def bench_kernels(
    *,
    bits: list[int],
    shapes: list[str],
    threads: list[int],
    seconds: float = 1.0,
    group_size: int = 64,
) -> dict:
    for s in shapes:
        if s not in SHAPES:
            raise EdgertError(f"unknown shape {s!r}", f"choose from {', '.join(SHAPES)}")
    for b in bits:
        if b not in (1, 2, 3, 4):
            raise EdgertError(f"--bits {b}: the kernels take 1-4 bits")
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    dram = {t: dram_read_gbs(t) for t in threads}
    rows = []
    with Progress(len(shapes) * (len(bits) + 1) * len(threads), "bench-kernels") as bar:
        for name in shapes:
            m, k = SHAPES[name]
            w = rng.normal(size=(m, k)).astype(np.float32)
            x = rng.normal(size=k).astype(np.float32)
            n32 = max(2, -(-MIN_BYTES // w.nbytes))
            w32 = [w.copy() for _ in range(n32)]
            fp32 = {}
            for t in threads:
                with threadpool_limits(limits=t, user_api="blas"):
                    fp32[t] = _cycle(lambda a, x=x: a @ x, w32, seconds)
                bar.update(1)
            del w32
            for b in bits:
                pw = quantize_uniform(w, bits=b, group_size=group_size)
                n = max(2, -(-MIN_BYTES // pw.nbytes))
                copies = [
                    PackedWeight(
                        pw.fmt,
                        pw.bits,
                        pw.group_size,
                        pw.shape,
                        pw.planes.copy(),
                        pw.scale.copy(),
                        pw.zero.copy(),
                    )
                    for _ in range(n)
                ]
                for t in threads:
                    s = _cycle(lambda c, x=x, t=t: gemv(c, x, threads=t), copies, seconds)
                    gbs = pw.nbytes / s / 1e9
                    rows.append(
                        KernelRow(
                            name,
                            m,
                            k,
                            b,
                            t,
                            pw.nbytes,
                            s * 1e3,
                            gbs,
                            100 * gbs / dram[t],
                            fp32[t] * 1e3,
                            w.nbytes / fp32[t] / 1e9,
                            fp32[t] / s,
                            w.nbytes / pw.nbytes,
                        )
                    )
                    bar.update(1)
                del copies
    return {
        "isa": isa(),
        "group_size": group_size,
        "dram_read_gbs": dram,
        "rows": [asdict(r) for r in rows],
    }


def table(res: dict) -> str:
    out = [
        f"kernels: {res['isa']}, group {res['group_size']}; DRAM read "
        + ", ".join(f"{t} thr {g:.1f} GB/s" for t, g in res["dram_read_gbs"].items()),
        (
            "| shape | m x k | bits | thr | ms | weight GB/s | % DRAM | fp32 ms | fp32 GB/s |"
            " speedup | byte ratio |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['shape']} | {r['m']}x{r['k']} | {r['bits']} | {r['threads']} | "
            f"{r['ms']:.3f} | {r['gbs']:.2f} | {r['pct_dram']:.0f}% | {r['fp32_ms']:.3f} | "
            f"{r['fp32_gbs']:.2f} | {r['speedup_vs_fp32']:.1f}x | {r['byte_ratio']:.1f}x |"
        )
    return "\n".join(out)
