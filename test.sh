#!/usr/bin/env bash
# Set-up, then the tests.
#   ./test.sh              every tier that needs no peer (unit, golden tokens, kernels, CLI errors)
#   ./test.sh parity       parity with llama.cpp (installs llama-cpp-python first, ~8 min once)
#   ./test.sh soak         10 000-token runs under a DRAM budget: RSS, open files, threads (minutes)
#   ./test.sh -k tokenizer extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "parity" ]; then
  shift
  tools/setup.sh bench
  exec .venv/bin/python -m pytest -q -m parity tests/parity "$@"
fi
if [ "${1:-}" = "soak" ]; then
  shift
  tools/setup.sh
  exec .venv/bin/python -m pytest -q -s -m soak tests/soak "$@"
fi
tools/setup.sh
exec .venv/bin/python -m pytest -q "$@"
