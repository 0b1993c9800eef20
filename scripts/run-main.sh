#!/usr/bin/env bash
# The main-job command of README.md: installs missing Debian packages, builds
# the lowbit tool and runs its end-to-end demo (quantize a model-like set of
# tensors to NF4 with double-quantized scales, write a bitsandbytes-compatible
# safetensors file, inspect it, dequantize it, report errors and sizes).
# The LLaMA trainer replaces this once it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
BUILD=${BUILD:-build-main}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLOWBIT_BUILD_TESTS=OFF -DLOWBIT_BUILD_BENCH=OFF
cmake --build "$BUILD" -j "$JOBS" --target lowbit_tool
"$BUILD/tools/lowbit" demo "$@"
