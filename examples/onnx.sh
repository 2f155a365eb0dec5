#!/usr/bin/env bash
# An ONNX network through the same compiler and runtime: a small convolutional net compiled for
# this machine (float32) and for a Raspberry Pi 5 (int8 weights), run on an input array, timed.
#
#   examples/onnx.sh [OUT_DIR]                        # run from a checkout (uses tools/)
set -euo pipefail
E=${EDGERT:-edgert}
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:-build/examples}" && cd "${1:-build/examples}" && pwd)
cd "$(dirname "$0")/.."

$PY tools/make_onnx_models.py "$OUT" --names convnet                # -> $OUT/convnet.onnx
$E compile "$OUT/convnet.onnx" --target host --input-shape image:1x3x32x32 \
    -o "$OUT/convnet.edgert" --force
$PY -c "import numpy as np; np.save('$OUT/x.npy', np.random.rand(1, 3, 32, 32).astype('float32'))"
$E run "$OUT/convnet.edgert" --input "$OUT/x.npy" -o "$OUT/y.npy"
$E bench "$OUT/convnet.edgert" -r 20 -t 1
$E compile "$OUT/convnet.onnx" --target rpi5 --bits 8 --input-shape image:1x3x32x32 \
    -o "$OUT/convnet-rpi5.edgert" --force                           # aarch64, int8 weights
