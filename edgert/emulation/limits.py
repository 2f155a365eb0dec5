"""A device's DRAM and flash emulated on this machine, for benchmarks: the benchmarked process runs
in a cgroup v1 memory group limited to the device's budget (page cache included, so memory-mapped
weights count) and a blkio group throttling reads from the disk that holds the model to the
device's flash bandwidth, after the page cache is dropped. Needs root and the cgroup v1 ``memory``
and ``blkio`` controllers; :func:`unavailable` says why not where they are missing.

The CPU is this machine's: an emulated run predicts a device's flash- and memory-bound behaviour,
not its compute speed (see :mod:`edgert.plan.cost`)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgert.errors import EdgertError

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")
#: the margin a benchmarked process gets besides its model's budget (callers that measure the
#: process's own baseline pass that instead): the interpreter, numpy, the runtime's libraries
#: (31 MiB for a language model, BENCHMARKS.md "Memory"; TVM's runtime for ONNX), and page cache
PROCESS_OVERHEAD = 256 << 20


class EmulationError(EdgertError):
    pass


def unavailable() -> str | None:
    """Why device emulation cannot run here, or None."""
    if os.geteuid() != 0:
        return "device emulation needs root (it creates cgroups and drops the page cache)"
    for root, what in ((MEMORY_ROOT, "memory"), (BLKIO_ROOT, "blkio")):
        if not (root / "cgroup.procs").exists():
            return f"the cgroup v1 {what} controller is not mounted at {root}"
    if not (BLKIO_ROOT / "blkio.throttle.read_bps_device").exists():
        return "the kernel's blkio controller has no read throttling (blkio.throttle.*)"
    return None


def require() -> None:
    why = unavailable()
    if why:
        raise EmulationError(
            why, "run as root on a Linux host with cgroup v1 memory and blkio mounted"
        )


def block_device(path) -> str:
    """``major:minor`` of the whole disk holding ``path`` (throttles apply to disks, not
    partitions)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysdir = Path("/sys/dev/block") / dev
    if not sysdir.exists():
        raise EmulationError(
            f"{path} is not on a block device ({dev}: tmpfs, overlay or network storage?)",
            "keep the model on a local disk to throttle its reads",
        )
    if (sysdir / "partition").exists():
        dev = (sysdir.resolve().parent / "dev").read_text().strip()
    return dev


@dataclass
class Usage:
    """What the group saw: peak memory (page cache included), times the limit was hit, bytes
    read from the throttled disk."""

    memory_peak_bytes: int
    memory_limit_hits: int
    disk_read_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


class Cgroups:
    """A memory group (and, with ``read_bps``, a blkio group) of one name. Processes join with
    :meth:`join` (e.g. as a ``preexec_fn``); :meth:`remove` deletes the groups once they are
    empty."""

    def __init__(
        self, name: str, *, memory_bytes: int, read_bps: int | None = None, device: str = ""
    ):
        self.memory = MEMORY_ROOT / name
        self.blkio = BLKIO_ROOT / name if read_bps else None
        self.memory_bytes, self.read_bps, self.device = memory_bytes, read_bps, device

    def create(self) -> Cgroups:
        try:
            self.memory.mkdir(exist_ok=True)
            limit = self.memory / "memory.limit_in_bytes"
            memsw = self.memory / "memory.memsw.limit_in_bytes"
            # swap accounting on: the limit covers swap too (no escape). The kernel keeps
            # memory <= memory+swap at every write, so a group left by an earlier run with a
            # lower limit takes the memory+swap limit first, a higher one second
            order = [limit, memsw] if memsw.exists() else [limit]
            if memsw.exists() and int(memsw.read_text()) < self.memory_bytes:
                order.reverse()
            for f in order:
                f.write_text(str(self.memory_bytes))
            if self.blkio is not None:
                self.blkio.mkdir(exist_ok=True)
                (self.blkio / "blkio.throttle.read_bps_device").write_text(
                    f"{self.device} {self.read_bps}"
                )
        except OSError as e:
            self.remove()
            raise EmulationError(f"cannot set up the cgroup {self.memory.name}: {e}") from e
        return self

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the calling process) into the groups."""
        for g in (self.memory, self.blkio):
            if g is not None:
                (g / "cgroup.procs").write_text(str(pid or os.getpid()))

    @property
    def procs(self) -> str:
        return str(self.memory / "cgroup.procs")

    def usage(self) -> Usage:
        def num(p: Path) -> int:
            try:
                return int(p.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return 0

        read = 0
        if self.blkio is not None:
            try:
                for line in (
                    (self.blkio / "blkio.throttle.io_service_bytes").read_text().splitlines()
                ):
                    f = line.split()
                    if len(f) == 3 and f[0] == self.device and f[1] == "Read":
                        read += int(f[2])
            except OSError:
                pass
        return Usage(
            num(self.memory / "memory.max_usage_in_bytes"),
            num(self.memory / "memory.failcnt"),
            read,
        )

    def remove(self) -> None:
        for g in (self.blkio, self.memory):
            for _ in range(50):  # the kernel frees an emptied group asynchronously
                if g is None or not g.exists():
                    break
                try:
                    g.rmdir()
                except OSError:
                    time.sleep(0.1)

    def __enter__(self) -> Cgroups:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


def drop_caches() -> None:
    """Write dirty pages back and drop the page cache, so the first reads come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise EmulationError(f"cannot drop the page cache: {e}") from e


@dataclass
class Emulation:
    """A device's memory limit and flash throttle, and what a run under them used."""

    target: str
    memory_limit_bytes: int
    budget_bytes: int
    process_overhead_bytes: int
    flash_read_bps: int
    device: str
    usage: Usage | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["usage"] = self.usage.to_dict() if self.usage else None
        return d


def emulation(
    target, *, budget: int | None, model_path, overhead: int = PROCESS_OVERHEAD
) -> Emulation:
    """The limits that emulate ``target`` (an :class:`edgert.format.target.Target`) for a model at
    ``model_path``: memory = ``budget`` (default: the device's DRAM) + ``overhead`` (what the
    process holds besides the model), flash reads throttled to the device's bandwidth."""
    require()
    budget = int(budget or target.dram_bytes)
    return Emulation(
        target=target.name,
        memory_limit_bytes=budget + overhead,
        budget_bytes=budget,
        process_overhead_bytes=overhead,
        flash_read_bps=int(target.flash_read_mbs * 1e6),
        device=block_device(model_path),
    )


def run_emulated(argv: list[str], em: Emulation, *, name: str | None = None, **kw):
    """Run ``argv`` under ``em``'s limits after dropping the page cache; returns the completed
    process (``capture_output`` etc. as for :func:`subprocess.run`) with ``em.usage`` filled.
    A run the memory limit killed raises :class:`EmulationError`."""
    group = Cgroups(
        name or f"edgert-bench-{os.getpid()}",
        memory_bytes=em.memory_limit_bytes,
        read_bps=em.flash_read_bps,
        device=em.device,
    )
    with group:
        drop_caches()
        p = subprocess.run(argv, check=False, preexec_fn=group.join, **kw)
        em.usage = group.usage()
    if p.returncode in (-9, 137):
        raise EmulationError(
            f"the run was killed at the memory limit of {em.memory_limit_bytes / 1e6:.1f} MB "
            f"(budget {em.budget_bytes / 1e6:.1f} MB + {em.process_overhead_bytes >> 20} MiB "
            "for the process)",
            "raise --dram-budget",
        )
    return p


def baseline_rss(code: str) -> int:
    """Resident bytes of a fresh interpreter after running ``code`` (its imports): what a
    benchmarked process of that kind holds before its model loads."""
    import sys

    probe = (
        f"{code}\nfor l in open('/proc/self/status'):\n"
        "    if l.startswith('VmRSS:'): print(int(l.split()[1]) * 1024)"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(p.stdout.strip().splitlines()[-1])
