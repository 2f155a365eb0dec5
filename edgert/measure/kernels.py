"""`edgert bench-kernels`: LUT GEMV weight bandwidth against measured DRAM read bandwidth and
against float32 BLAS GEMV (numpy) on the same shapes. Weights are cycled over >= 512 MB of
distinct copies so caches do not flatter the figures (cold, as in decode of a large model). They
are measured in rounds that take turns (read probe, BLAS, LUT kernel, LUT through `gemv`), and
ratios are medians of the per-round ratios: each compares one machine state.

The kernel is timed at its C entry point with its arguments prepared beforehand, as the C forward
pass calls it (its weights are described once, at load); `api_ms` is the same GEMV through the
Python `gemv`, which validates, allocates and converts its arguments on every call."""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgert.errors import EdgertError
from edgert.format.lut import PackedWeight, random_packed
from edgert.progress import Progress
from edgert.runtime.kernels import address, config, gemv, isa, load_library, weight_args
from edgert.runtime.memory import aligned_buffer

SHAPES = {
    "smollm2-qkvo": (576, 576),
    "smollm2-up": (1536, 576),
    "smollm2-down": (576, 1536),
    "7b-qkvo": (4096, 4096),
    "7b-up": (11008, 4096),
    "7b-down": (4096, 11008),
    # a Qwen3-30B-A3B-shaped mixture's experts (768 of 2048): small matrices, where a call's
    # fixed cost shows beside its bytes
    "moe-up": (768, 2048),
    "moe-down": (2048, 768),
}
MIN_BYTES = 512 << 20
PROBE_BYTES = 256 << 20  # the per-round DRAM read: far larger than any cache


def _read_gbs(buf: np.ndarray, threads: int) -> float:
    """One read of ``buf`` by ``threads`` workers of the kernel library (wide loads), in GB/s."""
    t0 = time.perf_counter()
    load_library().edgert_read_bytes(address(buf), buf.nbytes, threads)
    return buf.nbytes / (time.perf_counter() - t0) / 1e9


def probe_buffer(nbytes: int = 1 << 30) -> np.ndarray:
    """A read probe's buffer: ``nbytes`` on huge pages, like the weights (see :func:`_copies`),
    written once so every page is mapped."""
    a = aligned_buffer(nbytes, huge=True)
    a[:] = 1
    return a


def dram_read_gbs(threads: int, *, buf: np.ndarray | None = None, reps: int = 5) -> float:
    """Read bandwidth: ``threads`` workers of the kernel library reading ``buf`` (by default a
    new 1 GiB :func:`probe_buffer`; pass one to measure again without allocating it again) once
    with wide loads (median of ``reps``; the buffer is far larger than any cache)."""
    a = probe_buffer() if buf is None else buf
    return statistics.median([_read_gbs(a, threads) for _ in range(reps + 1)][1:])


def dram_read_gbs_apart(threads: int) -> float | None:
    """:func:`dram_read_gbs` at ``threads`` on its 1 GiB probe, measured in a child process, so
    the probe is never part of the caller's memory (its peak RSS, an emulated board's limit);
    None where the child could not measure (no kernel library on this machine)."""
    code = (
        "import sys\nfrom edgert.measure.kernels import dram_read_gbs\n"
        "print(dram_read_gbs(int(sys.argv[1])))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=False
    )
    try:
        return float(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def _copies(arrays: list[np.ndarray], n: int) -> list[list[np.ndarray]]:
    """``n`` copies of ``arrays``, one after the other (each 64-byte aligned) in one buffer on
    huge pages, so the fp32 weights and the packed ones get the same memory. numpy advises huge
    pages for arrays of 4 MiB or more, for the 2 MiB pages that fit in them: 97% of a 64 MiB
    fp32 copy, half of the 4 MiB planes of a 2-bit 4096x4096 weight and none of its 0.25 MiB
    scales."""
    sizes = [-(-a.nbytes // 64) * 64 for a in arrays]
    buf = aligned_buffer(n * sum(sizes), huge=True)
    out, at = [], 0
    for _ in range(n):
        copy = []
        for a, size in zip(arrays, sizes):
            c = buf[at : at + a.nbytes].view(a.dtype).reshape(a.shape)
            c[...] = a
            copy.append(c)
            at += size
        out.append(copy)
    return out


def _per_call(fn, items) -> float:
    """Seconds per call over one pass through ``items``."""
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return (time.perf_counter() - t0) / len(items)


def _others_running() -> bool:
    """Whether a thread of this process other than the caller is on a CPU (Linux /proc)."""
    me = threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # the thread has exited
            continue
        if state == "R":
            return True
    return False


def _quiesce(timeout: float = 0.5) -> None:
    """Return once no other thread of this process runs, polling (so this core stays busy).
    OpenBLAS's workers spin for about 0.1 s after a multithreaded call before they sleep; a LUT
    round started meanwhile would share its cores with them. Without /proc, returns at once."""
    if not os.path.isdir("/proc/self/task"):
        return
    t_end = time.perf_counter() + timeout
    while _others_running() and time.perf_counter() < t_end:
        pass


def _kernel_calls(copies: list[PackedWeight], x: np.ndarray, threads: int):
    """One GEMV a copy at the kernel's C entry, its arguments checked and converted now; and the
    output buffer they write, to keep while they run."""
    fn = load_library().edgert_lut_gemm
    m, k = copies[0].shape
    y = np.empty(m, np.float32)
    head = (address(y), address(x), 1, m, k)
    return [functools.partial(fn, *head, *weight_args(c), threads) for c in copies], y


def _side_by_side(probe, blas, w32, kernel, api, copies, threads: int, seconds: float):
    """Rounds of (DRAM read GB/s, fp32 BLAS s/call, LUT kernel s/call, LUT `gemv` s/call) taken
    one after the other, so each round compares them in the same machine state (a VM's bandwidth
    can move by 40% from one second to the next). At least 5 rounds, and rounds until ``seconds``
    have passed."""
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(limits=threads, user_api="blas"):
        _per_call(blas, w32[:1])  # warm up both pools
        _per_call(api, copies[:1])
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(out) < 5:
            dram = _read_gbs(probe, threads)
            f = _per_call(blas, w32)
            _quiesce()
            out.append((dram, f, _per_call(lambda call: call(), kernel), _per_call(api, copies)))
    return out


@dataclass
class KernelRow:
    """One shape, bit width and thread count. ``ms`` (the kernel), ``api_ms`` (through `gemv`),
    ``gbs``, ``dram_gbs`` and ``fp32_*`` are medians over the rounds; ``pct_dram`` and
    ``speedup_vs_fp32`` (the kernel's) are medians of per-round ratios."""

    shape: str
    m: int
    k: int
    bits: int
    threads: int
    weight_bytes: int
    rounds: int
    ms: float
    api_ms: float
    gbs: float
    pct_dram: float
    dram_gbs: float
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
    rng = np.random.default_rng(0)
    probe = probe_buffer(PROBE_BYTES)
    dram: dict[int, list[float]] = {t: [] for t in threads}
    rows = []
    med = statistics.median
    with Progress(len(shapes) * len(bits) * len(threads), "bench-kernels") as bar:
        for name in shapes:
            m, k = SHAPES[name]
            w = rng.normal(size=(m, k)).astype(np.float32)
            x = rng.normal(size=k).astype(np.float32)
            w32 = [c for (c,) in _copies([w], max(2, -(-MIN_BYTES // w.nbytes)))]
            for b in bits:
                pw = random_packed(m, k, bits=b, group_size=group_size)
                n = max(2, -(-MIN_BYTES // pw.nbytes))
                copies = [
                    PackedWeight(pw.fmt, pw.bits, pw.group_size, pw.shape, *c)
                    for c in _copies([pw.planes, pw.scale, pw.zero], n)
                ]
                for t in threads:
                    calls, _y = _kernel_calls(copies, x, t)
                    rounds = _side_by_side(
                        probe,
                        lambda a, x=x: a @ x,
                        w32,
                        calls,
                        lambda c, x=x, t=t: gemv(c, x, threads=t),
                        copies,
                        t,
                        seconds,
                    )
                    dram[t] += [r[0] for r in rounds]
                    s, f = med(r[2] for r in rounds), med(r[1] for r in rounds)
                    rows.append(
                        KernelRow(
                            name,
                            m,
                            k,
                            b,
                            t,
                            pw.nbytes,
                            len(rounds),
                            s * 1e3,
                            med(r[3] for r in rounds) * 1e3,
                            pw.nbytes / s / 1e9,
                            med(100 * pw.nbytes / r[2] / 1e9 / r[0] for r in rounds),
                            med(r[0] for r in rounds),
                            f * 1e3,
                            w.nbytes / f / 1e9,
                            med(r[1] / r[2] for r in rounds),
                            w.nbytes / pw.nbytes,
                        )
                    )
                    bar.update(1)
                del copies
            del w32
    return {
        "isa": isa(),
        "kernels": config(),
        "group_size": group_size,
        "dram_read_gbs": {t: med(v) for t, v in dram.items()},
        "rows": [asdict(r) for r in rows],
    }


def table(res: dict) -> str:
    out = [
        f"kernels: {res['isa']}, group {res['group_size']}; DRAM read "
        + ", ".join(f"{t} thr {g:.1f} GB/s" for t, g in res["dram_read_gbs"].items()),
        (
            "| shape | m x k | bits | thr | ms | gemv ms | weight GB/s | DRAM GB/s | % DRAM |"
            " fp32 ms | fp32 GB/s | speedup | byte ratio |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['shape']} | {r['m']}x{r['k']} | {r['bits']} | {r['threads']} | "
            f"{r['ms']:.3f} | {r['api_ms']:.3f} | {r['gbs']:.2f} | {r['dram_gbs']:.1f} | "
            f"{r['pct_dram']:.0f}% | "
            f"{r['fp32_ms']:.3f} | "
            f"{r['fp32_gbs']:.2f} | {r['speedup_vs_fp32']:.1f}x | {r['byte_ratio']:.1f}x |"
        )
    return "\n".join(out)
