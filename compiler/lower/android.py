"""A library Android's loader takes, built without the NDK: the kernels compiled by the glibc
cross toolchain with nothing of glibc's headers that reaches the binary (no _FORTIFY_SOURCE
wrappers, no stack protector reading glibc's guard, no outline atomics calling libgcc's glibc
probe, no thread-local storage: kernels_neon/platform.c), then linked without glibc against
stub shared objects named as bionic's, generated from the symbols the objects import. The
stubs are only there for the link: on the phone libc.so, libm.so and libdl.so are bionic's.

Every import must be one bionic exports (BIONIC, below, Android 7.0 / API 24 and later); the
linked library is then read back and held to what the loader needs (edgert.format.elf)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgert.errors import EdgertError
from edgert.format.elf import ANDROID_PAGE, android_problems, read_elf

#: compiler flags that keep glibc's header magic out of the objects
CFLAGS = [
    "-fno-stack-protector",  # glibc's guard is a symbol (__stack_chk_guard), bionic's in TLS
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=0",  # no __memcpy_chk and kin
    "-mno-outline-atomics",  # libgcc's __aarch64_* helpers probe the CPU through glibc
    "-fno-plt",
]
#: the linker's: no glibc, both hash tables, 16 KiB pages, nothing left undefined, no text
#: relocations, non-executable stack, relocations resolved at load
LDFLAGS = [
    "-shared",
    "-nostdlib",
    "-Wl,--hash-style=both",
    f"-Wl,-z,max-page-size={ANDROID_PAGE}",
    f"-Wl,-z,common-page-size={ANDROID_PAGE}",
    "-Wl,-z,text",
    "-Wl,-z,noexecstack",
    "-Wl,-z,relro",
    "-Wl,-z,now",
    "-Wl,--no-undefined",
    "-Wl,--build-id=sha1",
]

#: what bionic's libraries export that a library of ours may import (bionic's
#: libc/libc.map.txt and libm/libm.map.txt, symbols present from API 24): what the kernels use
#: and the C functions code like them reaches for; an import outside it stops the build. Not
#: sysconf: its _SC_ numbers are glibc's in these objects and mean other things to bionic
BIONIC: dict[str, set[str]] = {
    "libc.so": {
        "abort", "atexit", "atoi", "atol", "calloc", "clock_gettime", "close", "exit", "fclose",
        "fflush", "fopen", "fprintf", "fputs", "fread", "free", "fwrite", "getauxval", "getenv",
        "getpid", "gettid", "malloc", "memchr", "memcmp", "memcpy", "memmove", "memset", "mmap",
        "munmap", "nanosleep", "open", "posix_memalign", "printf", "pthread_attr_destroy",
        "pthread_attr_init", "pthread_attr_setstacksize", "pthread_cond_broadcast",
        "pthread_cond_destroy", "pthread_cond_init", "pthread_cond_signal",
        "pthread_cond_timedwait", "pthread_cond_wait", "pthread_create", "pthread_detach",
        "pthread_getspecific", "pthread_join", "pthread_key_create", "pthread_key_delete",
        "pthread_mutex_destroy", "pthread_mutex_init", "pthread_mutex_lock",
        "pthread_mutex_trylock", "pthread_mutex_unlock", "pthread_once", "pthread_self",
        "pthread_setspecific", "qsort", "read", "realloc", "sched_getaffinity", "sched_getcpu",
        "sched_setaffinity", "sched_yield", "snprintf", "strcmp", "strlen", "strncmp", "strtod",
        "strtol", "strtoul", "syscall", "usleep", "vsnprintf", "write"
    },
    "libm.so": {
        "acosf", "asinf", "atan2f", "atanf", "ceil", "ceilf", "cos", "cosf", "erff", "exp", "exp2f",
        "expf", "expm1f", "fabs", "fabsf", "floor", "floorf", "fmaf", "fmax", "fmaxf", "fmin",
        "fminf", "fmod", "fmodf", "log", "log10f", "log1pf", "log2f", "logf", "lrint", "lrintf",
        "lround", "lroundf", "pow", "powf", "rint", "rintf", "round", "roundf", "sin", "sinf",
        "sqrt", "sqrtf", "tan", "tanf", "tanh", "tanhf"
    },
    "libdl.so": {
        "dladdr", "dlclose", "dlerror", "dlopen", "dlsym"
    },
}  # fmt: skip


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise EdgertError(f"{what} failed: {(r.stderr or r.stdout).strip()[-800:]}")


def imports_by_library(symbols) -> dict[str, list[str]]:
    """The bionic library each imported symbol comes from; an import none of them exports
    raises, naming it (a glibc-only function, or one newer than API 24)."""
    out: dict[str, list[str]] = {}
    unknown = []
    for name in sorted(symbols):
        lib = next((lib for lib, names in BIONIC.items() if name in names), None)
        if lib is None:
            unknown.append(name)
        else:
            out.setdefault(lib, []).append(name)
    if unknown:
        raise EdgertError(
            f"the android library would import {', '.join(unknown)}, which bionic does not "
            "export (a glibc-only symbol, or one the list in compiler/lower/android.py lacks)",
            "use a function every C library has (kernels_neon/platform.c says which)",
        )
    return out


def write_stubs(cc: str, symbols: dict[str, list[str]], out_dir: Path) -> list[str]:
    """Stub shared objects (libc.so, libm.so, libdl.so: each's soname is its bionic name) that
    define ``symbols``; the -l options that link against them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = [f"-L{out_dir}"]
    for lib in ("libc.so", "libm.so", "libdl.so"):
        names = symbols.get(lib, [])
        if not names and lib != "libc.so":
            continue
        src = out_dir / f"{lib}.c"
        src.write_text("".join(f"void {n}(void) {{}}\n" for n in names) or "\n")
        _run(
            [cc, "-shared", "-nostdlib", "-fPIC", "-fno-builtin", f"-Wl,-soname,{lib}",
             "-o", str(out_dir / lib), str(src)],
            f"building the stub {lib}",
        )  # fmt: skip
        opts.append(f"-l{lib[3:-3]}")
    return opts


def link(cc: str, objs: list[Path], out_so: Path, tmp: Path) -> None:
    """Link ``objs`` into ``out_so`` for Android and check the result (raises with every
    problem found)."""
    probe = tmp / "probe.so"
    # a first link tells which symbols the objects (and libgcc's helpers) import
    _run([cc, "-shared", "-nostdlib", "-o", str(probe), *map(str, objs), "-lgcc"],
         "linking the android library")  # fmt: skip
    symbols = imports_by_library(read_elf(probe).imports)
    libs = write_stubs(cc, symbols, tmp / "stubs")
    soname = f"-Wl,-soname,{Path(out_so).name}"
    _run([cc, *LDFLAGS, soname, "-o", str(out_so), *map(str, objs), *libs, "-lgcc"],
         "linking the android library")  # fmt: skip
    problems = android_problems(read_elf(out_so), BIONIC)
    if problems:
        raise EdgertError(
            f"{out_so} would not load on Android: " + "; ".join(problems),
            "a toolchain flag or a C library call in kernels_neon/ brought it in",
        )
