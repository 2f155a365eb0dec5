from __future__ import annotations

HELP = "the device side of every transport: serve requests on stdin/stdout (or a serial port)"


def add_arguments(p) -> None:
    p.add_argument("--stdio", action="store_true", help="serve on stdin/stdout (SSH, local)")
    p.add_argument("--serial", default=None, metavar="PORT", help="serve on a serial line")
    p.add_argument("--root", default=None, help="where artifacts live (~/.edgert)")


def run(args) -> int:
    from pathlib import Path

    from edgert.device.agent import serve_serial, serve_stdio
    from edgert.errors import EdgertError
    from edgert.measure import actions

    root = Path(args.root).expanduser() if args.root else None
    extra = (actions.ACTIONS, actions.CAPABILITIES)  # run.bench, run.profile
    if args.serial:
        serve_serial(args.serial, root, extra)
    elif args.stdio:
        serve_stdio(root, extra)
    else:
        raise EdgertError("choose how to serve", "pass --stdio or --serial PORT")
    return 0
