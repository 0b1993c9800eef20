#!/usr/bin/env bash
# Accuracy comparison of the trainer's modes (docs/RESULTS.md): trains the
# tiny default model on tinyshakespeare in every CPU mode with the same
# steps, batch and seed, writes each run's JSONL log and console output to
# docs/results/, a summary table (docs/results/summary.md) and, when gnuplot
# is installed, the validation-loss curves (docs/results/loss-curves.png).
# STEPS (default 600) and MODES override the defaults. Uses the main job's
# build (scripts/run-main.sh builds it). SKIP_TRAIN=1 only remakes the table
# and the plot from existing logs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-main}
STEPS=${STEPS:-600}
MODES=${MODES:-"fp32-adamw fp32-lion bf16-adamw8 bf16-lion8 qft qft-reencode qft-rn nf4 nf4-f32scales nf4-rn"}
OUT=docs/results
mkdir -p "$OUT"
[ -x "$BUILD/examples/llama_train" ] || { echo "build llama_train first (bash scripts/run-main.sh --steps 1)"; exit 1; }
for m in $MODES; do
  [ "${SKIP_TRAIN:-0}" = 1 ] && break  # only redo the table and the plot
  echo "== $m"
  "$BUILD/examples/llama_train" --mode "$m" --steps "$STEPS" --log "$OUT/$m.jsonl" --sample-tokens 300 \
    >"$OUT/$m.txt" 2>&1
  tail -n 1 "$OUT/$m.txt"
done
python3 scripts/summarize-llama-results.py "$OUT" $MODES >"$OUT/summary.md"
cat "$OUT/summary.md"
if command -v gnuplot >/dev/null; then
  plot="set terminal pngcairo size 900,560; set output '$OUT/loss-curves.png';"
  plot+="set xlabel 'step'; set ylabel 'validation loss (nats/byte)'; set yrange [1.4:3.2]; set key top right;"
  plot+="set title 'llama_train tiny (0.8M params) on tinyshakespeare, $STEPS steps, seed 1337' noenhanced;"
  sep="plot "
  for m in $MODES; do
    grep '"val_loss"' "$OUT/$m.jsonl" | sed 's/.*"step":\([0-9]*\),"val_loss":\([0-9.eE+-]*\).*/\1 \2/' >"$OUT/$m.val.dat"
    plot+="$sep'$OUT/$m.val.dat' using 1:2 with linespoints title '$m' noenhanced"
    sep=", "
  done
  gnuplot -e "$plot" || gnuplot -e "${plot/pngcairo/png}"
  rm -f "$OUT"/*.val.dat
fi
