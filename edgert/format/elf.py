"""What an artifact's shared library asks of the loader that will open it, read from its ELF
headers: the libraries it needs, the symbols it imports and the versions they carry, its
relocations, segments and hash tables. Enough to tell whether Android's loader (bionic) will take
a library before there is a phone to try it on (:func:`android_problems`, after every android
build: compiler/lower/android.py), and which C library a library was linked against (deploy
refuses it on a device with the other: edgert.device.deploy)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgert.errors import EdgertError

EM_AARCH64 = 183
ET_DYN = 3
PT_LOAD, PT_DYNAMIC, PT_TLS = 1, 2, 7
SHT_DYNSYM, SHT_RELA, SHT_GNU_VERSYM = 11, 4, 0x6FFFFFFF
DT_NEEDED, DT_HASH, DT_TEXTREL, DT_FLAGS, DT_SONAME = 1, 4, 22, 30, 14
DT_GNU_HASH, DT_VERNEED, DT_VERDEF = 0x6FFFFEF5, 0x6FFFFFFE, 0x6FFFFFFC
DF_TEXTREL = 0x4
#: aarch64 relocations that need thread-local storage (the ELF for the Arm 64-bit
#: Architecture, "Dynamic relocations"): TLS_DTPMOD64, TLS_DTPREL64, TLS_TPREL64, TLSDESC
TLS_RELOCS = {1028, 1029, 1030, 1031}
#: Android 15 devices run with 16 KiB pages: every loadable segment aligned to at least that
ANDROID_PAGE = 16384
#: the libraries a library for a phone may need: bionic's C library, its math and dl libraries
ANDROID_NEEDED = ("libc.so", "libm.so", "libdl.so")


@dataclass
class ElfInfo:
    machine: int
    kind: int
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    #: undefined symbols the library imports (name -> version it asks for, or None)
    imports: dict[str, str | None] = field(default_factory=dict)
    #: symbol versions it requires (DT_VERNEED): library -> version names
    verneed: dict[str, list[str]] = field(default_factory=dict)
    textrel: bool = False
    has_hash: bool = False
    has_gnu_hash: bool = False
    tls_segment: bool = False
    tls_relocs: int = 0
    #: p_align of each loadable segment
    load_aligns: list[int] = field(default_factory=list)


def read_elf(path: str | Path) -> ElfInfo:
    """The dynamic-linking facts of the 64-bit little-endian shared object at ``path``."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise EdgertError(f"{path} is not a 64-bit little-endian ELF file")
    (kind, machine, _v, _entry, phoff, shoff, _flags, _eh, phentsize, phnum, shentsize, shnum,
     _shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)  # fmt: skip
    info = ElfInfo(machine=machine, kind=kind)
    for i in range(phnum):
        p_type, _pf, _off, _va, _pa, _fsz, _msz, align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_LOAD:
            info.load_aligns.append(align)
        elif p_type == PT_TLS:
            info.tls_segment = True
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]

    def body(s) -> bytes:
        return data[s[4] : s[4] + s[5]]

    def string(table: int, off: int) -> str:
        b = body(sections[table])
        return b[off : b.index(b"\0", off)].decode()

    dynsym = next((s for s in sections if s[1] == SHT_DYNSYM), None)
    versym = next((s for s in sections if s[1] == SHT_GNU_VERSYM), None)
    dynamic = next((s for s in sections if s[1] == 6), None)  # SHT_DYNAMIC
    versions: dict[int, str] = {}
    if dynamic is not None:
        strtab = dynamic[6]  # sh_link: the dynamic string table
        entries = [struct.unpack_from("<qQ", body(dynamic), o) for o in range(0, dynamic[5], 16)]
        vaddr = {s[3]: s for s in sections if s[3]}  # section by address (DT_* give addresses)
        for tag, val in entries:
            if tag == DT_NEEDED:
                info.needed.append(string(strtab, val))
            elif tag == DT_SONAME:
                info.soname = string(strtab, val)
            elif tag == DT_TEXTREL or (tag == DT_FLAGS and val & DF_TEXTREL):
                info.textrel = True
            elif tag == DT_HASH:
                info.has_hash = True
            elif tag == DT_GNU_HASH:
                info.has_gnu_hash = True
            elif tag == DT_VERNEED and val in vaddr:
                versions = _verneed(data, vaddr[val], lambda o: string(strtab, o), info)
    if dynsym is not None:
        syms = body(dynsym)
        vs = body(versym) if versym is not None else b""
        for i in range(1, len(syms) // 24):
            name_off, _st_info, _other, shndx, _value, _size = struct.unpack_from(
                "<IBBHQQ", syms, i * 24
            )
            if shndx != 0 or not name_off:
                continue
            ver = struct.unpack_from("<H", vs, 2 * i)[0] & 0x7FFF if vs else 0
            info.imports[string(dynsym[6], name_off)] = versions.get(ver)
    for s in sections:
        if s[1] == SHT_RELA:
            for o in range(0, s[5], 24):
                if struct.unpack_from("<QQq", body(s), o)[1] & 0xFFFFFFFF in TLS_RELOCS:
                    info.tls_relocs += 1
    return info


def _verneed(data: bytes, sec, string, info: ElfInfo) -> dict[int, str]:
    """DT_VERNEED's entries: the versions of symbols the library requires, by index."""
    out: dict[int, str] = {}
    off = sec[4]
    while True:
        _v, cnt, file_off, aux, nxt = struct.unpack_from("<HHIII", data, off)
        lib = string(file_off)
        a = off + aux
        for _ in range(cnt):
            _hash, _flags, other, name, anext = struct.unpack_from("<IHHII", data, a)
            out[other] = string(name)
            info.verneed.setdefault(lib, []).append(string(name))
            if not anext:
                break
            a += anext
        if not nxt:
            return out
        off += nxt


def android_problems(info: ElfInfo, provided: dict[str, set[str]] | None = None) -> list[str]:
    """Why Android's loader would refuse the library ``info`` describes (or could not run it),
    one line each; [] when nothing is found. ``provided``: library -> the symbols bionic's
    version of it exports, which every import must be among."""
    out = []
    if info.machine != EM_AARCH64 or info.kind != ET_DYN:
        out.append(f"not an arm64 shared object (e_machine {info.machine}, e_type {info.kind})")
    other = [n for n in info.needed if n not in ANDROID_NEEDED]
    if other:
        out.append(f"needs {', '.join(other)}: bionic has only {', '.join(ANDROID_NEEDED)}")
    for lib, vers in sorted(info.verneed.items()):
        out.append(f"asks {lib} for symbol versions {', '.join(sorted(set(vers)))}")
    if info.textrel:
        out.append("has text relocations (not position-independent)")
    if not (info.has_hash and info.has_gnu_hash):
        missing = [n for n, ok in (("DT_HASH", info.has_hash), ("DT_GNU_HASH", info.has_gnu_hash))
                   if not ok]  # fmt: skip
        out.append(f"lacks {' and '.join(missing)} (older Android loaders read DT_HASH only)")
    if info.tls_segment or info.tls_relocs:
        out.append(
            f"uses thread-local storage ({info.tls_relocs} TLS relocations"
            f"{', a PT_TLS segment' if info.tls_segment else ''}): no ELF TLS before Android 10"
        )
    small = sorted({a for a in info.load_aligns if a < ANDROID_PAGE})
    if small:
        out.append(
            f"loadable segments aligned to {', '.join(map(str, small))} bytes: 16 KiB-page "
            f"devices need {ANDROID_PAGE}"
        )
    if provided is not None:
        have = set().union(*provided.values()) if provided else set()
        unknown = sorted(n for n in info.imports if n not in have)
        if unknown:
            out.append(f"imports {', '.join(unknown)}, which bionic does not export")
    return out
