"""big.LITTLE thread placement on the emulated arm64 device (an arm64 Debian root under
qemu-user, tools/arm64_root.py): the runtime, pointed by EDGERT_SYSFS_CPU at a faked sysfs tree
written into the root (cpu0 a little core of capacity 400, cpu1 a big one of 1024: this host's
CPUs 0 and 1, which qemu-user's threads really run on), defaults to one thread and pins the
process to cpu1, and the aarch64 kernels' pool workers run there too; -t 2 widens the pin to
both cores. Without the tree (the emulated device has no /sys) nothing changes."""

import json
import os
import shutil

import pytest
from arm64_root import ensure_root, run_python

from edgert.runtime.build import build_shared

pytestmark = pytest.mark.device

DEVICE_SCRIPT = r"""
import json, os, platform, sys
os.sched_setaffinity(0, {0, 1})  # the two CPUs the tree describes, as the device starts
import numpy as np
from edgert import settings
from edgert.runtime import cpu
from edgert.runtime.kernels import address, load_library

def masks():
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
        except OSError:
            pass
    return sorted(out)

out = {"machine": platform.machine(), "tree": os.environ.get("EDGERT_SYSFS_CPU")}
out["big"] = cpu.big_cores()
out["default_threads"] = settings.default_threads()
settings.init_threads()  # what opening an artifact and the agent do first
out["pinned"] = sorted(os.sched_getaffinity(0))
out["EDGERT_THREADS"] = os.environ.get("EDGERT_THREADS")
lib = load_library("/tmp/big-little/libedgert_kernels.so")
buf = np.ones(8 << 20, np.uint8)
lib.edgert_read_bytes(address(buf), buf.nbytes, 2)  # starts a pool worker
out["tasks"] = len(os.listdir("/proc/self/task"))
out["masks"] = masks()
settings.set_threads(2)  # -t 2
lib.edgert_read_bytes(address(buf), buf.nbytes, 2)
out["masks_t2"] = masks()
settings.set_threads(1)
out["masks_t1"] = masks()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def device():
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1 (the faked tree describes them)")
    root = ensure_root()
    d = root / "tmp" / "big-little"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    build_shared(cc="aarch64-linux-gnu-gcc", cflags=["-march=armv8-a"],
                 out=d / "libedgert_kernels.so")  # fmt: skip
    tree = d / "cpu"
    tree.mkdir()
    (tree / "online").write_text("0-1\n")
    for c, cap in ((0, 400), (1, 1024)):
        (tree / f"cpu{c}").mkdir()
        (tree / f"cpu{c}" / "cpu_capacity").write_text(f"{cap}\n")
    return root


def run(root, tree: str | None) -> dict:
    script = DEVICE_SCRIPT
    if tree:  # run_python's environment is fixed: the script sets the variable itself
        script = f"import os\nos.environ['EDGERT_SYSFS_CPU'] = {tree!r}\n" + script
    return json.loads(run_python(root, script, timeout=600).strip().splitlines()[-1])


def test_big_cores_by_default_on_the_device(device):
    out = run(device, "/tmp/big-little/cpu")
    assert out["machine"] == "aarch64"
    assert out["big"] == [1] and out["default_threads"] == 1
    assert out["pinned"] == [1] and out["EDGERT_THREADS"] == "1"
    assert out["tasks"] >= 2  # the pool's worker, besides the main thread (and qemu's own)
    assert out["masks"] == [[1]]  # every thread, the worker included, on the big core
    assert out["masks_t2"] == [[0, 1]]  # -t 2: beyond the big cores, every core
    assert out["masks_t1"] == [[1]]


def test_no_tree_no_change_on_the_device(device):
    """The emulated device has no /sys: its cores cannot be told apart, nothing is pinned and
    the thread count stays unset."""
    out = run(device, None)
    assert out["machine"] == "aarch64" and out["tree"] is None
    assert out["big"] is None and out["default_threads"] == 2
    assert out["pinned"] == [0, 1] and out["EDGERT_THREADS"] is None
    assert out["masks"] == [[0, 1]]
    # set_threads sizes the pools, but pins nothing
    assert out["masks_t2"] == [[0, 1]] and out["masks_t1"] == [[0, 1]]
