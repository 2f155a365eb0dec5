from __future__ import annotations

HELP = (
    "a local emulated arm64 device (qemu-user, its own sshd): up [--target rpi5] [--android] "
    "| down | status"
)


def add_arguments(p) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--target",
        default=None,
        help="arm64 target whose DRAM limit applies (rpi5; with --android, android-arm64)",
    )
    p.add_argument("--port", type=int, default=None, help="loopback port for its sshd")
    p.add_argument(
        "--serial",
        action="store_true",
        help="also serve the agent on a pseudo-terminal (a serial:// device URL; needs socat)",
    )
    p.add_argument(
        "--android",
        action="store_true",
        help="present it as an Android phone with Termux: /system/build.prop, getprop, bionic's "
        "library names in /system/lib64, no manylinux wheels for pip (the cached root is left "
        "as it is: an overlay holds the changes)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import sys

    from edgert.cli.common import print_json
    from edgert.emulation import arm64 as emulator

    if args.action == "up":
        st = emulator.up(target=args.target, port=args.port, android=args.android)
        from edgert.device.transport_ssh import trust_host_key

        trust_host_key(st["host_key"])
        if args.serial:
            st = emulator.serial_up()
    elif args.action == "down":
        st = emulator.down()
    else:
        st = emulator.status()
    if args.json:
        print_json(st)
    elif st.get("running"):
        print(st["url"])
        if st.get("serial_url"):
            print(st["serial_url"])
        lim = st.get("dram_limit_bytes")
        flavour = ", as an Android phone" if st.get("flavour") == "android" else ""
        print(
            f"emulated {st['target']} (arm64 under qemu-user{flavour}) on 127.0.0.1:{st['port']}"
            + (f", DRAM limited to {lim / 2**30:.1f} GiB" if lim else ""),
            file=sys.stderr,
        )
    else:
        print("emulator: not running" + (" (stopped)" if st.get("stopped") else ""))
    return 0
