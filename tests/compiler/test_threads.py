"""The thread count of a forward pass follows EDGERT_THREADS as it is when the pass runs, so a
long-lived process (a device's agent serving `run --device -t N`) can change it between
requests: the kernels' pool fixes its own default once, at its first job."""

import subprocess
import sys

from conftest import ROOT, compile_synthetic
from edgert.compiler.quant.scheme import QuantScheme

CHILD = """
import os, sys
os.environ["EDGERT_THREADS"] = "1"
from edgert.runtime.open import open_artifact_engine
from edgert.settings import set_threads

def tasks():
    return len(os.listdir("/proc/self/task"))

eng = open_artifact_engine(sys.argv[1], max_ctx=32)
eng.forward(list(range(1, 17)))  # one thread: the pool starts no worker
one = tasks()
set_threads(2)
eng.reset()
eng.forward(list(range(1, 17)))
print(one, tasks())
"""


def test_threads_change_between_forward_passes(tmp_path):
    s = compile_synthetic(tmp_path, "llama", QuantScheme("uniform", 4, 32), layers=2,
                          quant_method="rtn", calib=str(ROOT / "tests/data/gpl-3.0.txt"))  # fmt: skip
    r = subprocess.run([sys.executable, "-c", CHILD, str(s.out)], capture_output=True, text=True,
                       check=False, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = map(int, r.stdout.split())
    assert two == one + 1  # the second pass ran on two threads: one worker joined the pool
