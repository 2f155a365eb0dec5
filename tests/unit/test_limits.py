"""The emulated device's cgroup limits (edgert.emulation.limits)."""

import os

from conftest import need_root_and_cgroup_v1

from edgert.emulation.limits import MEMORY_ROOT, Cgroups


def test_a_group_left_by_an_earlier_run_takes_a_higher_and_a_lower_limit():
    """The kernel keeps memory <= memory+swap at every write: an emulator started for an 8 GB
    board and then for a 12 GB phone reuses its group with a higher limit (EINVAL when the
    memory limit went first), then a 4 GB board a lower one."""
    need_root_and_cgroup_v1("memory")
    name = f"edgert-test-limits-{os.getpid()}"
    d = MEMORY_ROOT / name
    try:
        for limit in (8 << 30, 12 << 30, 4 << 30):
            Cgroups(name, memory_bytes=limit).create()
            assert int((d / "memory.limit_in_bytes").read_text()) == limit
            memsw = d / "memory.memsw.limit_in_bytes"
            assert not memsw.exists() or int(memsw.read_text()) == limit
    finally:
        if d.exists():
            d.rmdir()
