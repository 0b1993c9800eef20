#!/usr/bin/env bash
# scripts/llama-gpu-figures.sh BUILD_DIR RESULTS_DIR
# The LLaMA trainer's GPU figures (issue 5), from a build with CUDA
# (BUILD_DIR/examples/llama_train; gpu-check.sh's "llama" step calls this).
# Groups (FIGURES, default "tiny mem7b speed1b peer1b"), each run under a
# timeout (RUN_TIMEOUT s, 240) and logged to RESULTS_DIR/llama-*.log / *.jsonl:
#   tiny    the README's main job on the GPU: the tiny default on
#           tinyshakespeare, 600 steps, per mode (TINY_MODES, default
#           "fp32-adamw qft"; validation loss to compare with
#           docs/RESULTS.md's CPU runs)
#   mem7b   LLaMA-2-7B shape, random init, batch 1 x seq 512, activation
#           checkpointing, fused backward-update (no full gradient buffer),
#           4 steps: peak device memory, bytes per parameter, tokens/s per
#           mode (MODES7B, default "qft nf4 bf16-adamw8 paged-adamw8
#           offload-adamw8")
#   speed1b LLaMA-3.2-1B shape, batch 4 x seq 512, 8 steps (the first 2 not
#           timed): tokens/s, MFU and peak device memory per mode (MODES1B,
#           default "qft nf4 bf16-adamw8 fp32-adamw")
#   peer1b  the PyTorch + transformers bf16 peer (bench/llama_torch_peer.py)
#           on the speed1b shape, same machine
#   peer7b  the PyTorch peer on the 7B shape (batch 1 x seq 512, checkpointing)
# LLAMA_EXTRA adds flags to every llama_train run (e.g. "--grad-dtype bf16")
# and LLAMA_TAG names such runs (llama-7b-qft-TAG.log).
# Ends with a table of every run's summary record. Exit status: 0 when
# every run finished.
set -uo pipefail
BUILD=${1:?usage: llama-gpu-figures.sh BUILD_DIR RESULTS_DIR}
RESULTS=${2:?usage: llama-gpu-figures.sh BUILD_DIR RESULTS_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRAIN=$BUILD/examples/llama_train
FIGURES=" ${FIGURES:-tiny mem7b speed1b peer1b} "
TINY_MODES=${TINY_MODES:-fp32-adamw qft}
MODES7B=${MODES7B:-qft nf4 bf16-adamw8 paged-adamw8 offload-adamw8}
MODES1B=${MODES1B:-qft nf4 bf16-adamw8 fp32-adamw}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
mkdir -p "$RESULTS"
FAILED=0
[[ -x "$TRAIN" ]] || { echo "llama-gpu-figures: $TRAIN not built"; exit 1; }

# run NAME ARGS...: one llama_train run with its log and JSONL.
run() {
  local name=$1${LLAMA_TAG:+-$LLAMA_TAG}; shift
  # shellcheck disable=SC2086
  set -- "$@" ${LLAMA_EXTRA:-}
  echo "--- llama_train $name: $*"
  local t0=$SECONDS
  timeout "$RUN_TIMEOUT" "$TRAIN" --device cuda --log "$RESULTS/llama-$name.jsonl" "$@" \
    >"$RESULTS/llama-$name.log" 2>&1
  local rc=$?
  grep -E '^(memory|  |device:|llama_train:|where a step)' "$RESULTS/llama-$name.log" | tail -n 28
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: $name exit $rc ($((SECONDS - t0)) s)"; tail -n 5 "$RESULTS/llama-$name.log"; FAILED=1
  else
    echo "ok: $name ($((SECONDS - t0)) s)"
  fi
}

if [[ "$FIGURES" == *" tiny "* ]]; then
  for mode in $TINY_MODES; do
    run "tiny-$mode" --mode "$mode" --sample-tokens 100
  done
fi

if [[ "$FIGURES" == *" mem7b "* ]]; then
  for mode in $MODES7B; do
    run "7b-$mode" --mode "$mode" --preset llama2-7b --batch 1 --seq 512 --checkpointing --fused-update --clip 0 \
      --steps 4 --warmup 1 --timing-warmup 1 --eval-every 0 --sample-tokens 0 --log-every 1
  done
fi

if [[ "$FIGURES" == *" speed1b "* ]]; then
  for mode in $MODES1B; do
    run "1b-$mode" --mode "$mode" --preset llama3.2-1b --batch 4 --seq 512 --steps 8 --warmup 1 --timing-warmup 2 \
      --eval-every 0 --sample-tokens 0 --log-every 1
  done
fi

if [[ "$FIGURES" == *" peer1b "* ]]; then
  echo "--- PyTorch peer, llama3.2-1b, batch 4 x seq 512"
  timeout "$RUN_TIMEOUT" python3 "$ROOT/bench/llama_torch_peer.py" --preset llama3.2-1b --batch 4 --seq 512 \
    --json "$RESULTS/torch-peer-1b.json" >"$RESULTS/torch-peer-1b.log" 2>&1 || { echo "FAIL: torch peer 1b"; FAILED=1; }
  tail -n 3 "$RESULTS/torch-peer-1b.log"
fi

if [[ "$FIGURES" == *" peer7b "* ]]; then
  echo "--- PyTorch peer, llama2-7b, batch 1 x seq 512, checkpointing"
  timeout "$RUN_TIMEOUT" python3 "$ROOT/bench/llama_torch_peer.py" --preset llama2-7b --batch 1 --seq 512 \
    --checkpointing --json "$RESULTS/torch-peer-7b.json" >"$RESULTS/torch-peer-7b.log" 2>&1 ||
    { echo "FAIL: torch peer 7b"; FAILED=1; }
  tail -n 3 "$RESULTS/torch-peer-7b.log"
fi

echo
echo "| run | mode | tokens/s | MFU | peak device MiB | model states B/param | final loss | val loss |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
python3 - "$RESULTS" <<'PY' || true
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "llama-*.jsonl"))):
    summary = None
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("summary"):
            summary = r
    name = os.path.basename(path)[len("llama-"):-len(".jsonl")]
    if not summary:
        print(f"| {name} | (no summary: failed) | | | | | | |")
        continue
    f = lambda k, fmt: "-" if summary.get(k) is None else format(summary[k], fmt)
    mfu = "-" if summary.get("mfu") is None else f"{100 * summary['mfu']:.1f}%"
    print(f"| {name} | {summary['mode']} | {f('tokens_per_s', '.0f')} | {mfu} | {f('peak_device_mib', '.0f')} | "
          f"{f('model_state_bytes_per_param', '.3f')} | {f('final_loss', '.4f')} | {f('val_loss', '.4f')} |")
    phases = summary.get("phase_ms_per_step")
    if phases:  # --profile runs: the phases that took time, largest first
        total = sum(phases.values()) or 1.0
        parts = [f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]) if v > 0]
        print(f"| {name} phases | ms per step: " + ", ".join(parts) + " | | | | | | |")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "torch-peer-*.json"))):
    r = json.load(open(path))
    print(f"| {os.path.basename(path)} | torch bf16 AdamW | {r.get('tokens_per_s', 0):.0f} | "
          f"{100 * (r.get('mfu') or 0):.1f}% | {1024 * (r.get('peak_memory_allocated_gib') or 0):.0f} (allocated; {1024 * (r.get('peak_memory_reserved_gib') or 0):.0f} reserved) | | | |")
PY
exit "$FAILED"
