from __future__ import annotations

HELP = "copy an artifact to a device (checksummed chunks, resumable, switched in atomically)"


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory")
    p.add_argument("device", help="device URL: local[://AGENT_ROOT]")
    p.add_argument("--name", default=None, help="name on the device (the directory's name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import sys

    from edgert.cli.common import print_json
    from edgert.deploy import deploy
    from edgert.device import Device

    with Device(args.device) as dev:
        r = deploy(args.artifact, dev, name=args.name, progress=None if not args.json else False)
    if args.json:
        print_json(r.to_dict())
    else:
        resumed = f", {r.resumed_bytes} bytes resumed" if r.resumed_bytes else ""
        print(
            f"deployed {r.name} to {r.device}: {r.files} files, {r.bytes_total} bytes"
            f" ({r.bytes_sent} sent{resumed})",
            file=sys.stderr,
        )
    return 0
