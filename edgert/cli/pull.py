from __future__ import annotations

HELP = "fetch a known model (or hf:ORG/NAME) into ~/.cache/edgert, verify it, print its path"


def add_arguments(p) -> None:
    p.add_argument("name", help="a known model (smollm2-135m) or hf:ORG/NAME[@REV]")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument(
        "--json",
        action="store_true",
        help="print {name, path, sha256, size} as JSON (a directory: the sha256 of its "
        "sha256sum listing, each file's hash and relative path sorted by path, and files: "
        "[{path, sha256, size}])",
    )


def run(args) -> int:
    from edgert.cli.common import print_json
    from edgert.device.hub import pull

    path = pull(args.name, force=args.force)
    if args.json:
        print_json({"name": args.name, "path": str(path), **digest(path, args.name)})
    else:
        print(path)
    return 0


def digest(path, name: str) -> dict:
    """sha256 and size of what ``pull`` left at ``path``: a file's own; a directory's over the
    listing ``sha256sum`` prints for its files (``HASH  RELPATH`` lines sorted by path), so
    ``cd DIR && find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum``
    gives it again, with each file's."""
    import hashlib

    from edgert.device.hub import KNOWN_MODELS
    from edgert.format.artifact import sha256_file

    km = KNOWN_MODELS.get(name)
    if path.is_file():
        # a known model's file was just checked against its pinned sha256: no second read
        sha = km.sha256 if km is not None else sha256_file(path)
        return {"sha256": sha, "size": path.stat().st_size}
    files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    listing = [
        {"path": rel, "sha256": sha256_file(f), "size": f.stat().st_size} for rel, f in files
    ]
    text = "".join(f"{e['sha256']}  {e['path']}\n" for e in listing)
    return {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "size": sum(e["size"] for e in listing),
        "files": listing,
    }
