"""The ``edgert`` command line. It only parses: each command lives in its own module here
(``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``) and calls a keyword-only
library function that tests call directly too."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edgert import __version__
from edgert.errors import EdgertError

# command name -> module under edgert.cli (kept in the order `edgert --help` lists them)
COMMANDS = {
    "pull": "pull",
    "compile": "compile",
    "inspect": "inspect",
    "generate": "generate",
    "perplexity": "perplexity",
    "run": "run",
    "deploy": "deploy",
    "profile": "profile",
    "bench": "bench",
    "targets": "targets",
    "bench-kernels": "bench_kernels",
    "agent": "agent",
    "emulator": "emulator",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgert",
        description="Compile, deploy, run and profile LLMs on ARM edge devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgert {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(f"edgert.cli.{modname}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="edgert: %(levelname)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EdgertError as e:
        print(f"edgert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgert {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
