"""The emulated device's root-run shell command: paths under $EDGERT_CACHE reach it literally,
whatever they hold (spaces, ``;``, ``$( )``), and run nothing of their own."""

import subprocess

from edgert.emulation import arm64


def test_sshd_command_quotes_cache_paths(tmp_path, monkeypatch):
    weird = tmp_path / "cache dir; touch PWNED; $(touch PWNED2) `touch PWNED3`"
    root = weird / "arm64" / "root-x"
    root.mkdir(parents=True)
    procs = weird / "cgroup procs; touch PWNED4"
    # a stand-in for chroot that records the arguments it was given, one per line
    fake = weird / "fake chroot;"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    monkeypatch.setattr(arm64, "CHROOT", str(fake))
    argv = arm64.sshd_argv(root, str(procs))
    assert argv[:2] == ["sh", "-c"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(root), "/usr/sbin/sshd", "-D", "-e", "-f",
                                     "/etc/ssh/sshd_config.edgert"]  # fmt: skip
    assert procs.read_text().strip().isdigit()  # the shell's pid, written to the group's file
    assert not [p for p in tmp_path.rglob("PWNED*")]
    # without a memory group: sshd alone
    r = subprocess.run(arm64.sshd_argv(root, None), capture_output=True, text=True, check=False)
    assert r.stdout.splitlines()[0] == str(root)
