"""The arm64 Debian root of the emulated device (the code lives in edgert.emulation.arm64).

python tools/arm64_root.py            # build (or reuse) the root, print its path
python tools/arm64_root.py -- uname -m
"""

from __future__ import annotations

import sys

from edgert.emulation.arm64 import _chroot, ensure_root, install_edgert, run_python  # noqa: F401


def main() -> None:
    root = ensure_root()
    if "--" in sys.argv:
        cmd = sys.argv[sys.argv.index("--") + 1 :]
        print(_chroot(root, cmd).stdout, end="")
    else:
        print(root)


if __name__ == "__main__":
    main()
