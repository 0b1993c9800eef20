#!/usr/bin/env bash
# Peak-learning-rate sweep of the trainer's accuracy runs at full length
# (docs/RESULTS.md, "Learning rates at 600 steps"). For each RUNS entry
# MODE:LR and each seed of SEEDS it trains the tiny default model for STEPS
# steps, one run at a time on LOWBIT_NUM_THREADS threads (default 1, so the
# other core stays free), and writes docs/results/lr-sweep/MODE-lrLR/
# MODE-seedN.{jsonl,txt}. Runs whose log already holds a final summary are
# skipped, so the sweep can be stopped and restarted. The default learning
# rates' runs are the seed logs in docs/results/seeds/.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-main}
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-"1 2 3 4 5"}
RUNS=${RUNS:?"set RUNS, e.g. RUNS=\"qft:7e-4 fp32-adamw:3e-3\""}
export LOWBIT_NUM_THREADS=${LOWBIT_NUM_THREADS:-1}
[ -x "$BUILD/examples/llama_train" ] || { echo "build llama_train first (bash scripts/run-main.sh --steps 1)"; exit 1; }
for seed in $SEEDS; do
  for run in $RUNS; do
    mode=${run%%:*} lr=${run#*:}
    dir=docs/results/lr-sweep/$mode-lr$lr
    mkdir -p "$dir"
    log=$dir/$mode-seed$seed.jsonl
    if [ -f "$log" ] && grep -q '"summary"' "$log"; then continue; fi
    echo "== $(date -u +%H:%M:%S) $mode lr $lr seed $seed"
    "$BUILD/examples/llama_train" --mode "$mode" --lr "$lr" --seed "$seed" --steps "$STEPS" \
      --sample-tokens 0 --log "$log" >"$dir/$mode-seed$seed.txt" 2>&1
    tail -n 1 "$dir/$mode-seed$seed.txt"
  done
done
