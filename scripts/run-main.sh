#!/usr/bin/env bash
# The main-job command of README.md: installs missing Debian packages, builds
# the LLaMA trainer (examples/llama) for this machine's CPU and trains the
# tiny default model on tinyshakespeare in the baseline mode (a few minutes
# on 2 cores). Extra arguments go to llama_train (e.g. --mode qft; see
# --help and --list-modes). The step log and the final checkpoint are
# written next to the build: $BUILD/llama_train.jsonl and
# $BUILD/llama_tiny.safetensors. Where a GPU answers nvidia-smi and nvcc is
# installed, the trainer is built with its CUDA path (for this GPU's
# architecture, or CUDA_ARCH) and trains on the GPU; elsewhere it is built
# for the CPU alone (no CUDA libraries loaded) and trains on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
. scripts/env.sh
BUILD=${BUILD:-build-main}
CUDA_FLAGS=(-DLOWBIT_ENABLE_CUDA=OFF)
if command -v nvcc >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  CUDA_FLAGS=(-DLOWBIT_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-native}")
  echo "run-main: GPU found, building llama_train with its CUDA path"
fi
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "${CUDA_FLAGS[@]}" -DLOWBIT_BUILD_TESTS=OFF \
  -DLOWBIT_BUILD_BENCH=OFF -DLOWBIT_BUILD_TOOLS=OFF -DCMAKE_CXX_FLAGS="-march=native" >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target llama_train
"$BUILD/examples/llama_train" --log "$BUILD/llama_train.jsonl" --save "$BUILD/llama_tiny.safetensors" "$@"
