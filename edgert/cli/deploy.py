from __future__ import annotations

HELP = "copy an artifact to a device (checksummed chunks, resumable, switched in atomically)"


def add_arguments(p) -> None:
    p.add_argument("artifact", help="NAME.edgert directory")
    p.add_argument(
        "device", help="device URL: ssh://user@host[:port][?key=PATH] or local[://AGENT_ROOT]"
    )
    p.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust an SSH host key seen for the first time (and record it)",
    )
    p.add_argument("--name", default=None, help="name on the device (the directory's name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import sys

    from edgert.cli.common import print_json
    from edgert.device.client import Device
    from edgert.device.deploy import deploy
    from edgert.format.artifact import Artifact

    art = Artifact.open(args.artifact)  # a corrupt artifact is refused before the device is touched
    progress = None if not args.json else False
    dev = Device(args.device, accept_new_host_key=args.accept_new_host_key)
    runtime = None
    if hasattr(dev.transport, "exec"):  # SSH: install or update edgert on the device first
        from edgert.device.deploy import check_platform, ensure_runtime, probe_device

        # what the device is (Linux, or Android with Termux's Python) decides what it may be
        # sent: an artifact it cannot run is refused before any wheel or file goes there
        probe = probe_device(dev.transport)
        check_platform(art, probe.get("platform", "linux"), where=f"device {dev.transport.name}")
        # the TVM runtime only where the artifact is a compiled ONNX model
        onnx = art.manifest.get("kind") == "onnx"
        runtime = ensure_runtime(dev.transport, onnx=onnx, progress=progress, probe=probe)
    with dev:
        r = deploy(args.artifact, dev, name=args.name, progress=progress)
    if args.json:
        print_json({**r.to_dict(), "runtime": runtime})
    else:
        resumed = f", {r.resumed_bytes} bytes resumed" if r.resumed_bytes else ""
        print(
            f"deployed {r.name} to {r.device}"
            + (f" ({r.platform})" if r.platform != "linux" else "")
            + f": {r.files} files, {r.bytes_total} bytes ({r.bytes_sent} sent{resumed})",
            file=sys.stderr,
        )
    return 0
