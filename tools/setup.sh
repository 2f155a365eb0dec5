#!/usr/bin/env bash
# One-shot set-up on a fresh Debian machine: system packages (when missing), a virtual environment
# in .venv, and edgert installed into it in editable mode. Idempotent; fast when already done.
#   tools/setup.sh            # edgert + compiler + test dependencies
#   tools/setup.sh bench      # also llama-cpp-python (builds llama.cpp, ~8 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDGERT_VENV:-.venv}
CACHE=${EDGERT_CACHE:-$HOME/.cache/edgert}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1

APT_PKGS=(build-essential gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static libasan8 libubsan1 libtsan2
          binfmt-support mmdebstrap file cmake git openssh-client socat)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
PY=${PYTHON:-python3}
if ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.edgert-setup-$(cat pyproject.toml | sha256sum | cut -c1-16)-${1:-base}"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  extras="compiler,remote,dev"
  [ "${1:-}" = "bench" ] && extras="$extras,bench"
  echo "setup: installing edgert[$extras] into $VENV" >&2
  "$VENV/bin/pip" install -q -e ".[$extras]"
  touch "$stamp"
fi
