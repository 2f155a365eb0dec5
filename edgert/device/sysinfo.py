"""What a device is and how it is doing: CPU, cores, DRAM, storage, temperature, frequency and
governor, read from /proc and /sys where the device exposes them (enough to choose a target and
to explain a measurement)."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from edgert import __version__
from edgert.runtime.cpu import cpu_features, parse_cpuinfo


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def thermal() -> dict[str, Any]:
    """Temperatures (°C), CPU frequency and governor, where the device exposes them."""
    temps = []
    for z in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        t = _read_text(str(z))
        if t and t.lstrip("-").isdigit():
            temps.append(int(t) / 1000)
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    freq = _read_text(cpufreq + "scaling_cur_freq")
    return {
        "temperature_c": temps,
        "governor": _read_text(cpufreq + "scaling_governor"),
        "cpu_freq_khz": int(freq) if freq and freq.isdigit() else None,
    }


def device_info(root: Path) -> dict[str, Any]:
    """What the device is: enough to choose a target and to explain a measurement."""
    cpu_model, _ = parse_cpuinfo(_read_text("/proc/cpuinfo") or "")
    features = cpu_features()
    mem = {}
    for line in (_read_text("/proc/meminfo") or "").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable") and v.strip().endswith("kB"):
            mem[k] = int(v.split()[0]) * 1024
    root.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(root)
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_model": cpu_model or platform.processor() or "unknown",
        "cpu_features": features,
        "cores": os.cpu_count(),
        "dram_total_bytes": mem.get("MemTotal"),
        "dram_free_bytes": mem.get("MemAvailable"),
        "storage_total_bytes": disk.total,
        "storage_free_bytes": disk.free,
        **thermal(),
        "python": platform.python_version(),
        "edgert_version": __version__,
        "root": str(root),
    }
