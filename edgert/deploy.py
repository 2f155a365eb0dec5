"""``edgert deploy ART DEVICE``: copy an artifact to a device through its agent.

Files go to ``ROOT/staging/NAME`` in checksummed chunks; a deploy that is interrupted resumes
where the device's copy stops matching (``file.stat`` gives its size and checksum); only when
every file has arrived does ``file.commit`` verify the artifact's checksums on the device and
switch it into ``ROOT/artifacts/NAME`` atomically, so the previous version keeps running until
then.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

from edgert.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass
class DeployResult:
    device: str
    name: str
    files: int
    bytes_total: int
    bytes_sent: int
    resumed_bytes: int

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def artifact_name(path: str | Path) -> str:
    return Path(path).expanduser().resolve().name


def _crc_prefix(path: Path, n: int) -> str:
    crc, left = 0, n
    with open(path, "rb") as f:
        while left:
            b = f.read(min(left, CHUNK))
            if not b:
                break
            crc = zlib.crc32(b, crc)
            left -= len(b)
    return f"{crc & 0xFFFFFFFF:08x}"


def deploy(art_path: str | Path, device, *, name: str | None = None, chunk: int = CHUNK,
           progress: bool | None = None) -> DeployResult:  # fmt: skip
    """Send the artifact at ``art_path`` to ``device`` (an open-able :class:`Device`)."""
    from edgert.artifact import Artifact

    art = Artifact.open(art_path)  # refuse to ship a corrupt artifact
    name = name or artifact_name(art.path)
    files = sorted(p for p in art.path.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    sent = resumed = 0
    with Progress(total, f"deploy {name}", enabled=progress, unit="B") as bar:
        for f in files:
            rel = f"staging/{name}/{f.relative_to(art.path).as_posix()}"
            size = f.stat().st_size
            st, _ = device.call("file.stat", {"path": rel})
            offset = 0
            if st["exists"] and st["size"] <= size and st["crc32"] == _crc_prefix(f, st["size"]):
                offset = st["size"]  # resume after what already arrived intact
                resumed += offset
                bar.update(offset)
            with open(f, "rb") as fh:
                fh.seek(offset)
                while offset < size or (size == 0 and offset == 0 and not st["exists"]):
                    data = fh.read(chunk)
                    crc = f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"
                    device.call("file.put", {"path": rel, "offset": offset, "crc32": crc}, data)
                    offset += len(data)
                    sent += len(data)
                    bar.update(len(data))
                    if not data:
                        break
    device.call("file.commit", {"staging": f"staging/{name}", "name": name})
    return DeployResult(
        device=device.url,
        name=name,
        files=len(files),
        bytes_total=total,
        bytes_sent=sent,
        resumed_bytes=resumed,
    )
