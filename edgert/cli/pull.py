from __future__ import annotations

HELP = "fetch a known model (or hf:ORG/NAME) into ~/.cache/edgert, verify it, print its path"


def add_arguments(p) -> None:
    p.add_argument("name", help="a known model (smollm2-135m) or hf:ORG/NAME[@REV]")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--json", action="store_true", help="print {name, path, sha256, size} as JSON")


def run(args) -> int:
    from edgert.cli.common import print_json
    from edgert.device.hub import pull

    path = pull(args.name, force=args.force)
    if args.json:
        size = (
            path.stat().st_size
            if path.is_file()
            else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        )
        print_json({"name": args.name, "path": str(path), "size": size})
    else:
        print(path)
    return 0
