#!/usr/bin/env bash
# The main job on the embedded default model: set-up, pull SmolLM2-135M, compile it for this
# machine (4-bit LUT kernels), generate from the artifact (text streamed as it comes), the same
# within an 80 MB DRAM budget (layers streamed from flash), then its description and speed.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh
E=.venv/bin/edgert
ART=${ART:-build/smollm2-135m-host-q4.edgert}
$E pull smollm2-135m
mkdir -p build
$E compile smollm2-135m --target host --bits 4 -o "$ART" --force
$E generate "$ART" -p "${PROMPT:-The three primary colors are}" -n "${N:-64}" --temp 0
$E run "$ART" -p "${PROMPT:-The three primary colors are}" -n 32 --dram-budget 80M --ctx 512
$E inspect "$ART"
$E bench "$ART" -p 64 -n 32 -r 3
