"""What a device is and how it is doing: CPU, cores, DRAM, storage, temperature, frequency and
governor, read from /proc and /sys where the device exposes them (enough to choose a target and
to explain a measurement), and whether it is a Linux system or an Android phone (Termux): its
Python and numpy are then bionic builds, which decides what `edgert deploy` may install there."""

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


def platform_info(system: str = "/system") -> dict[str, Any]:
    """``{"platform": "android", "android_release": "14", "android_sdk": 34}`` on Android,
    ``{"platform": "linux"}`` elsewhere.

    Termux's Python is a Linux build (``platform.system()`` says "Linux" there), so Android is
    recognised by what only Android has: its system properties, ``/system/build.prop`` or a
    ``getprop`` command (on PATH or in /system/bin), or an Android build of Python
    (``sys.getandroidapilevel``). The version comes from ``getprop``, else from build.prop
    (Android 10+ keeps build.prop unreadable to apps; getprop still answers). ``system``:
    where Android's /system is (tests point it elsewhere).

    Self-contained (stdlib imports inside, no module globals): `edgert deploy` runs this
    function's own source with the device's bare ``python3`` before edgert is installed there
    (edgert.device.deploy.probe_device), so the deploy and the agent cannot decide otherwise."""
    import os
    import shutil
    import subprocess
    import sys

    build_prop = os.path.join(system, "build.prop")
    getprop = shutil.which("getprop")
    if getprop is None and os.access(os.path.join(system, "bin", "getprop"), os.X_OK):
        getprop = os.path.join(system, "bin", "getprop")
    if not (getprop or os.path.exists(build_prop) or hasattr(sys, "getandroidapilevel")):
        return {"platform": "linux"}
    props = {}
    try:
        with open(build_prop, errors="replace") as f:
            for line in f:
                k, eq, v = line.strip().partition("=")
                if eq and not k.startswith("#"):
                    props[k.strip()] = v.strip()
    except OSError:
        pass

    def prop(key):
        if getprop:
            try:
                r = subprocess.run(
                    [getprop, key], capture_output=True, text=True, timeout=5, check=False
                )
                if r.returncode == 0 and r.stdout.strip():
                    return r.stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        return props.get(key)

    sdk = prop("ro.build.version.sdk")
    if not sdk and hasattr(sys, "getandroidapilevel"):
        sdk = str(sys.getandroidapilevel())
    return {
        "platform": "android",
        "android_release": prop("ro.build.version.release"),
        "android_sdk": int(sdk) if sdk and sdk.isdigit() else None,
    }


_PLATFORM: dict[str, Any] | None = None


def device_platform() -> dict[str, Any]:
    """:func:`platform_info`, read once per process (it does not change under an agent, and
    getprop is a process start on every ``device.info``)."""
    global _PLATFORM
    if _PLATFORM is None:
        _PLATFORM = platform_info()
    return dict(_PLATFORM)


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
        **device_platform(),
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
