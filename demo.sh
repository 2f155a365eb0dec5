#!/usr/bin/env bash
# The main job on the embedded default model: set-up, pull SmolLM2-135M, generate, print tokens/s.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh
E=.venv/bin/edgert
$E pull smollm2-135m
$E generate smollm2-135m -p "${PROMPT:-The three primary colors are}" -n "${N:-64}" --temp 0
