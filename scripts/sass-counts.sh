#!/usr/bin/env bash
# Static SASS instruction counts of the optimizer step's element code for
# sm_90, without a GPU: tools/sass/encode_probe.cu (re-encoding 8 values,
# both formulations, every rounding / snapping variant) and
# tools/sass/step_loop_probe.cu (the step kernel's span loop for the QFT
# step and for Lion with int8 states and fp32 weights). Needs nvcc and
# nvdisasm; the Debian CUDA toolkit image has no nvdisasm, which comes with
# `pip download nvidia-cuda-nvdisasm` (unzip the wheel; set NVDISASM to the
# binary). Static counts compare builds; they are not times.
#
# usage: scripts/sass-counts.sh [INCLUDE_DIR]   (default: this tree's include/)
set -euo pipefail
cd "$(dirname "$0")/.."
INC=${1:-$PWD/include}
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
NVDISASM=${NVDISASM:-$(command -v nvdisasm || echo /usr/local/cuda/bin/nvdisasm)}
[[ -x $NVDISASM ]] || { echo "nvdisasm not found: set NVDISASM (see the comment at the top)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
count() {  # count NAME SOURCE FLAGS... -> prints the count
  local name=$1 src=$2
  shift 2
  "$NVCC" -arch=sm_90 -cubin -O3 -std=c++17 -diag-suppress 177,550 -I"$INC" "$@" -o "$WORK/$name.cubin" "$src"
  "$NVDISASM" -c "$WORK/$name.cubin" >"$WORK/$name.sass"
}
echo "encode of 8 values (instructions, the kernel's loads and stores subtracted):"
count base tools/sass/encode_probe.cu -DBASELINE -DENCODE_STOCHASTIC=true -DENCODE_SNAP=true
base=$(python3 tools/sass/count_sass.py "$WORK/base.sass")
printf '  %-28s %18s %18s\n' variant "CPU-step functions" "element_encode"
for s in true false; do
  for k in true false; do
    count old tools/sass/encode_probe.cu -DENCODE_STOCHASTIC=$s -DENCODE_SNAP=$k
    count new tools/sass/encode_probe.cu -DELEMENT_ENCODE -DENCODE_STOCHASTIC=$s -DENCODE_SNAP=$k
    old=$(python3 tools/sass/count_sass.py "$WORK/old.sass")
    new=$(python3 tools/sass/count_sass.py "$WORK/new.sass")
    printf '  %-28s %18d %18d\n' "stochastic=$s snap=$k" $((old - base)) $((new - base))
  done
done
echo "step span loop body (static instructions per thread's 8 elements):"
count qft tools/sass/step_loop_probe.cu
echo "  Lion, int8 weights (stable scales, stochastic), int8 states: $(python3 tools/sass/count_sass.py "$WORK/qft.sass" --loop)"
count lion tools/sass/step_loop_probe.cu -DWSHAPE=cd::storage_shape::f32 -DKEEP=false
echo "  Lion, fp32 weights, int8 states: $(python3 tools/sass/count_sass.py "$WORK/lion.sass" --loop)"
count adamw tools/sass/step_loop_probe.cu -DRULE=lo::adamw -DS2SHAPE=cd::storage_shape::b8_256 \
  -DWSHAPE=cd::storage_shape::f32 -DKEEP=false
echo "  AdamW, fp32 weights, int8 states: $(python3 tools/sass/count_sass.py "$WORK/adamw.sass" --loop)"
