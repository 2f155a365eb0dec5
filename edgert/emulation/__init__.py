"""A device on this machine: cgroup limits that emulate its DRAM and flash, and the emulated
arm64 root with its own sshd."""
