#!/usr/bin/env bash
# Device memory of llama_train's CUDA path without a GPU: an allocation dry
# run. llama_train_emulated (llama_train built against the CPU CUDA emulator,
# tests/emulation/) runs with LOWBIT_EMULATOR_SKIP_COMPUTE=1: every
# allocation, copy and memset happens, kernels and cuBLAS GEMMs are skipped,
# and the fake CUDA runtime prints the exact peak of device memory in use
# (live device and managed allocations plus memory-pool reserve) at exit. The
# test llama_train_dry_run checks that this peak equals that of the same run
# computed in full. Not included, as on a GPU they would be: the CUDA context,
# cuBLAS's own workspace and loaded kernels, and cudaMalloc's rounding of each
# allocation (docs/GPU-SESSION.md, "Device memory without a GPU").
#
# usage: scripts/dry-run-memory.sh [BUILD_DIR] [-- extra llama_train flags]
#   BUILD_DIR (default build-test) must be configured with the tests and the
#   CUDA toolkit's headers (the CI configuration); the target is built if
#   needed. Without extra flags it runs the 1B shape (batch 4 x 512) in the
#   modes and settings of the GPU plan; with them, one run with exactly those
#   flags (add --preset, --batch, --seq, --mode ...).
# Host memory: the trainer keeps float32 host weights (4 bytes per
# parameter: 5 GB for the 1B shape; the 7B shape needs 27 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-test
if [[ $# -gt 0 && $1 != -- ]]; then BUILD=$1; shift; fi
[[ ${1:-} == -- ]] && shift
cmake --build "$BUILD" --target llama_train_emulated -j2 >/dev/null
TRAIN=$PWD/$BUILD/examples/llama_train_emulated
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# An H100 SXM: 81559 MiB, 132 multiprocessors (the dispatch's split counts).
export LOWBIT_EMULATOR_SKIP_COMPUTE=1 LOWBIT_EMULATOR_DEVICE_MIB=81559 LOWBIT_EMULATOR_SM_COUNT=132

run() {
  echo "=== llama_train --device cuda $*"
  (cd "$WORK" && "$TRAIN" --device cuda --steps 2 --warmup 1 --eval-every 0 --sample-tokens 0 --log-every 1 "$@") \
    >"$WORK/out.txt" 2>&1 || { cat "$WORK/out.txt"; echo "FAIL: $*"; exit 1; }
  grep -E '^(device:|memory|  (weights|optimizer|gradients|activations|total) )|fake CUDA runtime' "$WORK/out.txt" |
    sed -e 's/ *|.*//'
}

if [[ $# -gt 0 ]]; then
  run "$@"
  exit 0
fi
ONE_B=(--preset llama3.2-1b --batch 4 --seq 512 --grad-dtype bf16)
FUSED=(--checkpointing --fused-update --clip 0)
run --mode qft "${ONE_B[@]}"
run --mode qft "${ONE_B[@]}" "${FUSED[@]}"
run --mode qft "${ONE_B[@]}" "${FUSED[@]}" --logits-chunk-mib 32
run --mode nf4 "${ONE_B[@]}" "${FUSED[@]}"
run --mode bf16-adamw8 "${ONE_B[@]}" "${FUSED[@]}"
