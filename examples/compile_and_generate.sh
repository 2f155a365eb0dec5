#!/usr/bin/env bash
# Compile a real model for this machine and generate from it: SmolLM2-135M (pulled on first
# use), 4-bit LUT kernels, then the same artifact within an 80 MB DRAM budget (the layers that
# do not fit stream from flash each token), and what the artifact is.
#
#   examples/compile_and_generate.sh [OUT_DIR]        # needs `edgert` on PATH (or $EDGERT)
set -euo pipefail
E=${EDGERT:-edgert}
OUT=${1:-build/examples}
ART="$OUT/smollm2-135m-q4.edgert"
PROMPT=${PROMPT:-"The three primary colors are"}
mkdir -p "$OUT"

model=$($E pull smollm2-135m)                               # the GGUF's path
$E compile "$model" --target host --bits 4 -o "$ART" --force
$E generate "$ART" -p "$PROMPT" -n 24 --temp 0              # streams text, then speed
$E generate "$ART" -p "Name a color." --chat -n 16 --temp 0  # the model's chat template
$E run "$ART" -p "$PROMPT" -n 24 --dram-budget 80M --ctx 512 --json > "$OUT/budget.json"
$E inspect "$ART" --dram-budget 80M --ctx 512                # the plan and predicted speed
