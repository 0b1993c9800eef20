#!/usr/bin/env bash
# The test command of README.md (and of CI): installs missing Debian packages,
# configures and builds everything (CUDA kernels, GPU tests and benchmarks
# too when nvcc is present), runs the whole CTest suite (GPU tests report
# SKIPPED on a machine without a GPU), then runs the safetensors fuzzer for a
# bounded time (FUZZ_SECONDS, default 60; 0 disables).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
BUILD=${BUILD:-build-test}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS"
if [ "${FUZZ_SECONDS:-60}" != 0 ] && [ -f scripts/run-fuzzer.sh ]; then
  bash scripts/run-fuzzer.sh
fi
