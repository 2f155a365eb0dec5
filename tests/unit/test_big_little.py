"""big.LITTLE CPUs: which cores are big (edgert.runtime.cpu, read from a faked sysfs tree), the
clusters a target file describes, and the runtime's thread placement (edgert.settings): on the
big cores with as many threads by default, widened to every core for a larger -t, and no change
at all where the cores are alike."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from edgert import settings
from edgert.errors import EdgertError
from edgert.format.target import list_targets, load_target
from edgert.runtime import cpu
from edgert.runtime.cpu import big_cores, big_split, core_capacities, parse_cpu_list

#: a Snapdragon 8 Gen 2 as Linux numbers it: cpu0-2 Cortex-A510, cpu3-4 A715, cpu5-6 A710,
#: cpu7 X3; capacities (mainline sm8550.dtsi work per MHz times the clocks, the X3 1024) and
#: top clocks in kHz
SD8G2_CAPS = {0: 350, 1: 350, 2: 350, 3: 852, 4: 852, 5: 852, 6: 852, 7: 1024}
SD8G2_KHZ = {0: 2016000, 1: 2016000, 2: 2016000, 3: 2803200, 4: 2803200, 5: 2803200,
             6: 2803200, 7: 3187200}  # fmt: skip
ALL8 = set(range(8))


def fake_sysfs(root, caps=None, khz=None, online="0-7"):
    """A sysfs CPU directory: ``online`` (None: no list), cpuN/cpu_capacity and
    cpuN/cpufreq/cpuinfo_max_freq (values written as given: a str may be garbage)."""
    root.mkdir(parents=True, exist_ok=True)
    if online is not None:
        (root / "online").write_text(online + "\n")
    for c, v in (caps or {}).items():
        (root / f"cpu{c}").mkdir(exist_ok=True)
        (root / f"cpu{c}" / "cpu_capacity").write_text(f"{v}\n")
    for c, v in (khz or {}).items():
        (root / f"cpu{c}" / "cpufreq").mkdir(parents=True, exist_ok=True)
        (root / f"cpu{c}" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{v}\n")
    return root


def test_capacities_tell_the_big_cores(tmp_path):
    """cpu_capacity is read for the allowed CPUs; the X3, A715s and A710s are big, the A510s
    not."""
    t = fake_sysfs(tmp_path / "cpu", SD8G2_CAPS, SD8G2_KHZ)
    assert core_capacities(t, ALL8) == SD8G2_CAPS
    assert big_cores(t, ALL8) == [3, 4, 5, 6, 7]
    # only the CPUs this process may run on count: with one A510 and the X3, the X3 alone
    assert core_capacities(t, {0, 7}) == {0: 350, 7: 1024}
    assert big_cores(t, {0, 7}) == [7]
    assert big_cores(t, {0, 1, 2}) is None  # the little ones alone are alike
    # the default mask is this process's own (the host: CPUs 0 and 1, both A510s here)
    assert set(core_capacities(t)) == os.sched_getaffinity(0) & ALL8


def test_clocks_stand_in_for_capacities(tmp_path):
    """Without cpu_capacity (or with the 1024 everywhere of a device tree that gives none), the
    top clocks tell the same split."""
    t = fake_sysfs(tmp_path / "freq", khz=SD8G2_KHZ)
    assert core_capacities(t, ALL8) == SD8G2_KHZ
    assert big_cores(t, ALL8) == [3, 4, 5, 6, 7]
    t = fake_sysfs(tmp_path / "flat", dict.fromkeys(ALL8, 1024), SD8G2_KHZ)
    assert core_capacities(t, ALL8) == SD8G2_KHZ
    assert big_cores(t, ALL8) == [3, 4, 5, 6, 7]


def test_offline_cpus_do_not_count(tmp_path):
    t = fake_sysfs(tmp_path / "cpu", SD8G2_CAPS, online="0-5")  # the A710 cpu6 and X3 off
    assert set(core_capacities(t, ALL8)) == {0, 1, 2, 3, 4, 5}
    assert big_cores(t, ALL8) == [3, 4, 5]
    # no `online` list: each CPU's own flag, a missing one online
    t = fake_sysfs(tmp_path / "flags", SD8G2_CAPS, online=None)
    (t / "cpu7" / "online").write_text("0\n")
    (t / "cpu6" / "online").write_text("1\n")
    assert set(core_capacities(t, ALL8)) == ALL8 - {7}
    # an unreadable list: the same
    (t / "online").write_text("zero to seven\n")
    assert set(core_capacities(t, ALL8)) == ALL8 - {7}
    assert parse_cpu_list("0-3,6\n") == {0, 1, 2, 3, 6}
    with pytest.raises(ValueError):
        parse_cpu_list("3-1")


def test_alike_cores_are_not_split(tmp_path):
    """An rpi5 (four A76 at 2.4 GHz), x86 cores boosted a few percent apart, or a chip of big
    cores only: None, every core is worth a thread."""
    t = fake_sysfs(tmp_path / "rpi5", dict.fromkeys(range(4), 1024), dict.fromkeys(range(4), 2400000), online="0-3")  # fmt: skip
    assert big_cores(t, set(range(4))) is None
    assert big_split({0: 4500000, 1: 4700000, 2: 4500000, 3: 4700000}) is None
    assert big_split({0: 820, 1: 820, 2: 1000, 3: 1024}) is None  # steps 1.22, 1.02
    assert big_split({0: 7}) is None and big_split({}) is None


def test_three_clusters_split_below_the_middle_ones():
    """The widest step decides: a Pixel-6-like little/middle/big (160, 498, 1024: steps 3.1 and
    2.1) keeps the middle cores; a step under BIG_GAP does not split."""
    caps = {0: 160, 1: 160, 2: 160, 3: 160, 4: 498, 5: 498, 6: 1024, 7: 1024}
    assert big_split(caps) == {4, 5, 6, 7}
    assert big_split({0: 100, 1: 124}) is None and big_split({0: 100, 1: 125}) == {1}


def test_bad_or_missing_files(tmp_path):
    """A measure is used only whole: one unreadable capacity falls back to the clocks; nothing
    readable for every CPU, no tree at all, or no allowed CPU in it gives {} and None."""
    caps = {**SD8G2_CAPS, 5: "fast"}
    t = fake_sysfs(tmp_path / "garbage", caps, SD8G2_KHZ)
    assert core_capacities(t, ALL8) == SD8G2_KHZ
    t = fake_sysfs(tmp_path / "neither", caps, {**SD8G2_KHZ, 2: 0})
    assert core_capacities(t, ALL8) == {}
    assert big_cores(t, ALL8) is None
    t = fake_sysfs(tmp_path / "missing", {c: v for c, v in SD8G2_CAPS.items() if c != 4})
    assert core_capacities(t, ALL8) == {} and big_cores(t, ALL8) is None
    (t / "cpu4").mkdir()
    (t / "cpu4" / "cpu_capacity").mkdir()  # a directory where a file should be
    assert core_capacities(t, ALL8) == {}
    assert core_capacities(tmp_path / "nowhere", ALL8) == {}
    assert big_cores(tmp_path / "nowhere") is None
    assert core_capacities(fake_sysfs(tmp_path / "empty"), ALL8) == {}
    assert core_capacities(t, set()) == {}


def test_environment_points_at_the_tree(tmp_path, monkeypatch):
    t = fake_sysfs(tmp_path / "cpu", SD8G2_CAPS)
    monkeypatch.setenv("EDGERT_SYSFS_CPU", str(t))
    assert big_cores(allowed=ALL8) == [3, 4, 5, 6, 7]
    monkeypatch.delenv("EDGERT_SYSFS_CPU")
    assert cpu.sysfs_cpu() == Path("/sys/devices/system/cpu")


# -- targets --------------------------------------------------------------------------------
def test_targets_describe_their_clusters():
    ts = list_targets()
    phone = ts["android-arm64"]
    assert [c["kind"] for c in phone.clusters] == [
        "Cortex-X3", "Cortex-A715", "Cortex-A710", "Cortex-A510"
    ]  # fmt: skip
    assert sum(c["count"] for c in phone.clusters) == phone.cores == 8
    assert phone.big_cores == 5  # X3 + A715s + A710s, by the runtime's rule on their clocks
    for name, kind, mhz in (("rpi4", "Cortex-A72", 1800), ("rpi5", "Cortex-A76", 2400),
                            ("jetson-orin-nano", "Cortex-A78AE", 1500)):  # fmt: skip
        t = ts[name]
        assert t.clusters == [{"count": t.cores, "max_mhz": mhz, "kind": kind}]
        assert t.big_cores == t.cores
    assert ts["host"].clusters == [] and ts["host"].big_cores == ts["host"].cores


def test_target_clusters_are_checked(tmp_path, monkeypatch):
    text = Path(load_target("android-arm64").path).read_text()
    monkeypatch.setenv("EDGERT_TARGETS", str(tmp_path))
    good = '{ count = 3, max_mhz = 2000, kind = "Cortex-A510" }'
    assert good in text

    def load(old, new):
        (tmp_path / "phone.toml").write_text(
            text.replace('name = "android-arm64"', 'name = "phone"').replace(old, new)
        )
        return load_target("phone")

    assert load(good, good).big_cores == 5
    with pytest.raises(EdgertError, match=r"clusters count 1 \+ 2 \+ 2 \+ 2 = 7 cores, but \[cpu\] cores = 8"):  # fmt: skip
        load(good, good.replace("count = 3", "count = 2"))
    with pytest.raises(EdgertError, match=r"clusters\[3\]: count must be an integer >= 1"):
        load(good, good.replace("count = 3", "count = 0"))
    with pytest.raises(EdgertError, match=r"clusters\[3\]: count must be an integer >= 1"):
        load(good, good.replace("count = 3", "count = 3.0"))
    with pytest.raises(EdgertError, match=r"clusters\[3\]: max_mhz must be a positive number"):
        load(good, good.replace("2000", "-2000"))
    with pytest.raises(EdgertError, match=r"clusters\[3\]: kind must name the core"):
        load(good, good.replace('"Cortex-A510"', '""'))
    with pytest.raises(EdgertError, match=r"clusters\[3\] must have count, max_mhz and kind"):
        load(good, good.replace(', kind = "Cortex-A510"', ""))
    with pytest.raises(EdgertError, match=r"clusters\[3\] must have count, max_mhz and kind"):
        load(good, good.replace("max_mhz", "mhz"))
    with pytest.raises(EdgertError, match="clusters must be a list of tables"):
        load("clusters = [", "clusters = 8\nnot_clusters = [")


# -- placement ------------------------------------------------------------------------------
@pytest.fixture
def placement(tmp_path, monkeypatch):
    """A fresh process-wide placement (nothing read, nothing pinned), the thread variables
    unset, and this process's affinity put back afterwards (every thread: placement moves them
    all). Returns a function that writes a two-CPU tree (the host's CPUs 0 and 1) and points
    EDGERT_SYSFS_CPU at it."""
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1 (the fake tree describes them)")
    monkeypatch.setattr(cpu, "_TOPOLOGY", {})
    monkeypatch.setattr(settings, "_placed", False)
    for v in settings.THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    saved = os.sched_getaffinity(0)
    cpu.set_affinity({0, 1})  # what the tree describes, all of it

    def tree(cap0: int, cap1: int):
        t = fake_sysfs(tmp_path / f"cpu-{cap0}-{cap1}", {0: cap0, 1: cap1}, online="0-1")
        monkeypatch.setenv("EDGERT_SYSFS_CPU", str(t))
        return t

    yield tree
    cpu.set_affinity(saved)


def fresh() -> None:
    """As a new process would start: on both CPUs, nothing read or placed yet."""
    cpu.set_affinity({0, 1})
    cpu._TOPOLOGY.clear()
    settings._placed = False


def masks() -> set[frozenset[int]]:
    """The distinct affinity masks of this process's threads."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out.add(frozenset(os.sched_getaffinity(int(tid))))
        except OSError:  # exited meanwhile
            pass
    return out


def test_default_threads_and_pin_on_big_little(placement):
    """cpu0 little (400), cpu1 big (1024): the process moves to cpu1 with one thread by default,
    threads already running included and those started later inheriting it."""
    placement(400, 1024)
    go = threading.Event()
    before = threading.Thread(target=go.wait)  # a thread running before the pin
    before.start()
    try:
        assert settings.default_threads() == 1
        settings.init_threads()
        assert os.sched_getaffinity(0) == {1}
        assert os.environ["EDGERT_THREADS"] == "1" and os.environ["OMP_NUM_THREADS"] == "1"
        assert settings.run_threads() == 1
        seen = []
        later = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        later.start()
        later.join()
        assert seen == [{1}]
        assert masks() == {frozenset({1})}
        settings.init_threads()  # once: a second call changes nothing
        assert os.sched_getaffinity(0) == {1}
    finally:
        go.set()
        before.join()


def test_explicit_threads_override_and_widen(placement):
    """-t beyond the big cores widens the pin to every core the process had; within them it
    stays on the big ones; a request's -t (the agent) is undone after the request."""
    placement(400, 1024)
    settings.set_threads(2)  # `edgert run -t 2`
    assert os.sched_getaffinity(0) == {0, 1} and settings.run_threads() == 2
    settings.init_threads()  # already placed by -t: left as it is
    assert os.sched_getaffinity(0) == {0, 1}
    settings.set_threads(1)
    assert os.sched_getaffinity(0) == {1}
    # EDGERT_THREADS given before the runtime starts counts as asked
    fresh()
    os.environ["EDGERT_THREADS"] = "2"
    settings.init_threads()
    assert os.sched_getaffinity(0) == {0, 1} and os.environ["EDGERT_THREADS"] == "2"
    # the agent: placed for its default, then one request with -t 2
    fresh()
    del os.environ["EDGERT_THREADS"]
    settings.init_threads()
    assert os.sched_getaffinity(0) == {1}
    with settings.request_threads(2):
        assert os.sched_getaffinity(0) == {0, 1} and settings.run_threads() == 2
    assert os.sched_getaffinity(0) == {1} and settings.run_threads() == 1
    with settings.request_threads(None):
        assert os.sched_getaffinity(0) == {1}


def test_alike_cores_change_nothing(placement):
    """Two cores alike (or a tree that cannot be read): no pin, no thread count set, the
    default every core, as before."""
    for caps in ((1024, 1024), (1024, "x")):
        placement(*caps)
        fresh()
        settings.init_threads()
        assert os.sched_getaffinity(0) == {0, 1}
        assert "EDGERT_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ
        assert settings.default_threads() == 2
        settings.set_threads(1)
        assert os.sched_getaffinity(0) == {0, 1}
        for v in settings.THREAD_VARS:
            os.environ.pop(v, None)


def test_the_kernels_pool_runs_on_the_big_cores(placement):
    """The C thread pool's workers, started after the pin, inherit it; when -t widens the pin
    the workers already running move too."""
    from edgert.runtime.kernels import address, load_library

    placement(400, 1024)
    settings.init_threads()
    buf = np.ones(8 << 20, np.uint8)
    lib = load_library()
    lib.edgert_read_bytes(address(buf), buf.nbytes, 2)  # one worker at least
    assert len(os.listdir("/proc/self/task")) >= 2
    assert masks() == {frozenset({1})}
    settings.set_threads(2)
    lib.edgert_read_bytes(address(buf), buf.nbytes, 2)
    assert masks() == {frozenset({0, 1})}


def test_opening_an_artifact_places_the_threads(placement, tmp_path):
    """The runtime's entry point places the process before the artifact's library is loaded
    (the minimal artifact here holds no model: the pin is in place by the time that is
    found)."""
    from test_cpu_features import artifact

    from edgert.runtime.open import open_artifact_engine

    placement(400, 1024)
    with pytest.raises(EdgertError, match="holds no language model"):
        open_artifact_engine(artifact(tmp_path / "host.edgert", "host"))
    assert os.sched_getaffinity(0) == {1} and os.environ["EDGERT_THREADS"] == "1"


def test_the_agent_starts_on_the_big_cores(placement, tmp_path):
    """`edgert agent --stdio` places itself before it serves: by its greeting it runs on the
    big core."""
    import subprocess
    import sys

    tree = placement(400, 1024)
    env = {**os.environ, "EDGERT_SYSFS_CPU": str(tree)}
    p = subprocess.Popen(
        [sys.executable, "-m", "edgert", "agent", "--stdio", "--root", str(tmp_path / "agent")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert p.stdout.read(4)  # the HELLO frame's first bytes
        assert os.sched_getaffinity(p.pid) == {1}
    finally:
        p.stdin.close()
        p.wait(timeout=60)
        p.stdout.close()
