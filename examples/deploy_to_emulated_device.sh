#!/usr/bin/env bash
# Deploy to a device and run there, without a board: an emulated Raspberry Pi 5 (an arm64 Debian
# root under qemu-user with its own sshd, built on first use in about 5 minutes; needs root).
# The artifact is compiled for the Pi, copied in checksummed chunks, and run by the agent there.
#
#   examples/deploy_to_emulated_device.sh [OUT_DIR]
set -euo pipefail
E=${EDGERT:-edgert}
OUT=${1:-build/examples}
PROMPT=${PROMPT:-"The three primary colors are"}
mkdir -p "$OUT"

url=$($E emulator up --target rpi5 | head -n 1)               # ssh://root@127.0.0.1:PORT?key=...
trap '$E emulator down >/dev/null' EXIT
model=${MODEL:-$($E pull smollm2-135m)}
$E compile "$model" --target rpi5 --bits 4 -o "$OUT/model-rpi5.edgert" --force
$E deploy "$OUT/model-rpi5.edgert" "$url"                     # installs the runtime on first use
$E run "$OUT/model-rpi5.edgert" --device "$url" -p "$PROMPT" -n 8 --json > "$OUT/device-run.json"
$E profile "$OUT/model-rpi5.edgert" --device "$url" -p 8 -n 4 -r 1 --html "$OUT/profile.html"
