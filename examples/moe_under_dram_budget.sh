#!/usr/bin/env bash
# A mixture of experts larger than its DRAM budget: everything but the experts stays in DRAM,
# experts are read from flash into a cache as the router picks them (and read ahead for the
# next layer). A small random-weight Qwen2-MoE stands in for a real one here.
#
#   examples/moe_under_dram_budget.sh [OUT_DIR]       # run from a checkout (uses tools/)
set -euo pipefail
E=${EDGERT:-edgert}
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:-build/examples}" && cd "${1:-build/examples}" && pwd)
cd "$(dirname "$0")/.."

$PY tools/make_synthetic_gguf.py --arch qwen2moe --qtype F32 --quiet --out "$OUT/moe.gguf" \
    --layers 4 --dim 256 --ffn 512 --experts 8 --top-k 2 --vocab 2048
$E compile "$OUT/moe.gguf" --target host --bits 4 -o "$OUT/moe.edgert" --force

# 6 MB holds 10 of its 32 experts (a budget below the minimum is refused, naming it)
budget=${BUDGET:-6M}
$E inspect "$OUT/moe.edgert" --dram-budget "$budget" --ctx 256   # experts cached, predicted hit rate
$E run "$OUT/moe.edgert" -p "hello world" -n 32 --ctx 256 --dram-budget "$budget" \
    --expert-cache lfu --json > "$OUT/moe-run.json"
$E bench "$OUT/moe.edgert" -p 16 -n 16 -r 2 --dram-budget "$budget"  # measured vs predicted
