#!/usr/bin/env bash
# scripts/gpu-session.sh
# Runs the GPU checks and figures from binaries built beforehand on the
# development machine (scripts/pack-gpu-binaries.sh -> build-carry/), so a
# short GPU session spends no minute compiling. The steps of PLAN run in
# order under one deadline (DEADLINE_S seconds from the start, default 540):
# each gets its own timeout, cut to what is left, and a step that cannot get
# 15 seconds is skipped and reported as such. Every log and JSON goes to a
# results folder that is packed, at the end, into $OUT/gpu-session.tgz
# (with $OUT/gpu-session-summary.txt beside it); stdout carries a summary.
# If the carried binaries cannot run here (another glibc, say), it says so
# and stops: rebuild on the GPU machine with scripts/gpu-check.sh instead.
#
# PLAN words (default: every test, then the trainer's and kernels' figures):
#   info                     machine, driver, GPU state (read-only queries)
#   test:NAME                a GPU test binary (gpu_test_* or test_llama_gpu)
#   tiny:MODE                the main job (tiny preset, tinyshakespeare) on the GPU
#   7b:MODE                  7B-shaped memory run (llama-gpu-figures.sh mem7b)
#   1b:MODE                  1B-shaped speed run (llama-gpu-figures.sh speed1b)
#   1bckpt:MODE              the same with activation checkpointing and the fused update (least memory)
#   1bckptsync:MODE          1bckpt with --sync-gradient-checks (the host waits for every tensor's
#                            gradient check, as before 2026-11-27): the A/B of the deferred checks
#   1bprof:MODE / 1bckptprof:MODE  1b / 1bckpt with --profile: where a step's time goes, per phase
#                            (CUDA events; one more host wait per step, so take tokens/s from 1b / 1bckpt)
#   peer1b / peer7b          the PyTorch + transformers bf16 peer
#   gemm:NxK                 bench_dequant_gemm_cuda on one weight shape
#   bench:optimizer / bench:quantize
#   probe:NAME               bench/probe_NAME, e.g. probe:paged_residency (free device memory around
#                            the eviction of managed pages)
#   san:TOOL:NAME            compute-sanitizer TOOL (memcheck, racecheck) on a GPU test binary
#   ncu:BENCH:KERNEL[:ARGS]  Nsight Compute on the first NCU_COUNT (2) launches of kernels matching
#                            the regex KERNEL in bench binary BENCH, ARGS ('+'-separated) passed to
#                            the benchmark, e.g. ncu:bench_dequant_gemm_cuda:mma:--shapes=11008x4096+--m=64;
#                            clocks are left as found (--clock-control none)
# Knobs: PLAN, DEADLINE_S, GEMM_M (the M list of gemm:, default all),
# BENCH_ARGS (extra flags for bench:*), LLAMA_EXTRA / LLAMA_TAG (llama-gpu-figures.sh), NCU_COUNT, NCU_EXTRA (more ncu flags, e.g. --section SourceCounters).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
BIN=$ROOT/build-carry
RES=${RESULTS_DIR:-/tmp/lowbit-gpu-session}
OUTDIR=${OUT:-$ROOT/build-session-out}
DEADLINE=${DEADLINE_S:-540}
PLAN=${PLAN:-"info test:gpu_test_quantize_gpu test:gpu_test_dequantize_rows_gpu test:gpu_test_optimizer_gpu \
test:gpu_test_dequant_gemm_gpu test:test_llama_gpu tiny:qft 7b:qft 1b:qft 1b:bf16-adamw8 peer1b gemm:4096x11008 \
bench:optimizer 7b:nf4 gemm:11008x4096 san:memcheck:gpu_test_dequant_gemm_gpu gemm:4096x4096 gemm:32000x4096 \
bench:quantize"}
START=$SECONDS
mkdir -p "$RES" "$OUTDIR"
SUMMARY=$RES/summary.txt
: >"$SUMMARY"

# The binaries carry the development machine's absolute source paths (the
# default corpus, test data): make them resolve to this checkout.
BAKED=$(sed -n 's/^# source: //p' "$BIN/MANIFEST" 2>/dev/null)
BAKED=${BAKED:-/work/main}
if [[ ! -e "$BAKED" ]]; then mkdir -p "$(dirname "$BAKED")" && ln -s "$ROOT" "$BAKED"; fi
export LD_LIBRARY_PATH="$BIN/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONUNBUFFERED=1

finish() {
  {
    echo "plan: $PLAN"
    echo "elapsed: $((SECONDS - START)) s of $DEADLINE"
  } >>"$SUMMARY"
  cp "$SUMMARY" "$OUTDIR/gpu-session-summary.txt"
  tar czf "$OUTDIR/gpu-session.tgz" -C "$RES" . 2>/dev/null
  echo
  echo "===== summary ====="
  cat "$SUMMARY"
}
trap finish EXIT

left() { echo $((DEADLINE - (SECONDS - START))); }

# step NAME TIMEOUT CMD...: runs CMD with its output in $RES/NAME.log; the
# timeout is cut to the time left (STEP_TIMEOUT is exported for CMD).
step() {
  local name=$1 want=$2; shift 2
  local t; t=$(left); t=$((t - 10))
  ((t > want)) && t=$want
  if ((t < 15)); then echo "SKIP $name (no time left)" | tee -a "$SUMMARY"; return; fi
  export STEP_TIMEOUT=$t
  local log=$RES/${name//[:\/]/_}.log t0=$SECONDS
  echo "--- $name (timeout $t s)"
  timeout "$t" "$@" >"$log" 2>&1
  local rc=$?
  local verdict="ok"
  ((rc == 124)) && verdict="TIMEOUT"
  ((rc != 0 && rc != 124)) && verdict="FAIL rc=$rc"
  printf '%-40s %-12s %4d s\n' "$name" "$verdict" $((SECONDS - t0)) | tee -a "$SUMMARY"
  # what went wrong, or the result lines, for the reply's tail
  if [[ $verdict != ok ]]; then
    grep -E 'ERROR|FAIL|error|CHECK|what\(\)|Error' "$log" | head -n 20
    tail -n 8 "$log"
  else
    grep -E '^\[doctest\] (test cases|assertions)|^(llama_train|memory|device):|tokens/s|peak' "$log" | tail -n 6
  fi
}

for word in $PLAN; do
  case $word in
    info)
      step info 30 bash -c 'date -u; uname -srm; (. /etc/os-release; echo "$PRETTY_NAME"); ldd --version | head -1;
        nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,power.limit --format=csv;
        nvcc --version | tail -1; nproc; free -g; cat '"$BIN"'/MANIFEST;
        for b in '"$BIN"'/examples/* '"$BIN"'/tests/* '"$BIN"'/bench/*; do ldd "$b" | grep -q "not found" && { echo "MISSING LIBS: $b"; ldd "$b" | grep "not found"; exit 3; }; done; echo all libraries found;
        '"$BIN"'/examples/llama_train --help >/dev/null && echo "llama_train runs"'
      if ! grep -q "llama_train runs" "$RES/info.log"; then
        echo "carried binaries cannot run here; see info.log" | tee -a "$SUMMARY"; exit 3
      fi ;;
    test:*)
      name=${word#test:}
      sub=tests; [[ $name == test_llama_gpu ]] && sub=examples
      limit=100; [[ $name == test_llama_gpu ]] && limit=150
      step "$word" $limit "$BIN/$sub/$name" --duration=true ;;
    tiny:*)
      step "$word" 120 env FIGURES=tiny TINY_MODES="${word#tiny:}" RUN_TIMEOUT=110 bash scripts/llama-gpu-figures.sh "$BIN" "$RES" ;;
    7b:*)
      step "$word" 200 bash -c 'RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=mem7b MODES7B='"${word#7b:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    1b:*)
      step "$word" 120 bash -c 'RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=speed1b MODES1B='"${word#1b:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    1bckpt:*)
      step "$word" 120 bash -c 'LLAMA_EXTRA="${LLAMA_EXTRA:-} --checkpointing --fused-update --clip 0" LLAMA_TAG="${LLAMA_TAG:+$LLAMA_TAG-}ckpt-fused" RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=speed1b MODES1B='"${word#1bckpt:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    1bprof:*)
      step "$word" 120 bash -c 'LLAMA_EXTRA="${LLAMA_EXTRA:-} --profile" LLAMA_TAG="${LLAMA_TAG:+$LLAMA_TAG-}prof" RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=speed1b MODES1B='"${word#1bprof:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    1bckptprof:*)
      step "$word" 120 bash -c 'LLAMA_EXTRA="${LLAMA_EXTRA:-} --checkpointing --fused-update --clip 0 --profile" LLAMA_TAG="${LLAMA_TAG:+$LLAMA_TAG-}ckpt-fused-prof" RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=speed1b MODES1B='"${word#1bckptprof:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    1bckptsync:*)
      step "$word" 120 bash -c 'LLAMA_EXTRA="${LLAMA_EXTRA:-} --checkpointing --fused-update --clip 0 --sync-gradient-checks" LLAMA_TAG="${LLAMA_TAG:+$LLAMA_TAG-}ckpt-fused-syncchecks" RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES=speed1b MODES1B='"${word#1bckptsync:}"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    peer1b|peer7b)
      step "$word" 150 bash -c 'RUN_TIMEOUT=$((STEP_TIMEOUT - 5)) FIGURES='"$word"' bash scripts/llama-gpu-figures.sh "$0" "$1"' "$BIN" "$RES" ;;
    gemm:*)
      shape=${word#gemm:}
      step "$word" 150 "$BIN/bench/bench_dequant_gemm_cuda" --shapes="$shape" ${GEMM_M:+--m=$GEMM_M} \
        --benchmark_out="$RES/bench_dequant_gemm_cuda-$shape.json" --benchmark_out_format=json ;;
    bench:*)
      name=bench_${word#bench:}_cuda
      # shellcheck disable=SC2086
      step "$word" 120 "$BIN/bench/$name" ${BENCH_ARGS:-} --benchmark_out="$RES/$name.json" --benchmark_out_format=json ;;
    probe:*)
      step "$word" 60 "$BIN/bench/probe_${word#probe:}" ;;
    san:*)
      rest=${word#san:}; tool=${rest%%:*}; name=${rest#*:}
      sub=tests; [[ $name == test_llama_gpu ]] && sub=examples
      step "$word" 150 compute-sanitizer --tool "$tool" --error-exitcode 99 "$BIN/$sub/$name" \
        --test-case-exclude='*2^31*,*[large]*' ;;
    ncu:*)
      rest=${word#ncu:}; bench=${rest%%:*}; rest=${rest#*:}; kernel=${rest%%:*}; args=""
      [[ $rest == *:* ]] && args=${rest#*:}
      # shellcheck disable=SC2086
      step "$word" 200 ncu --clock-control none -k "regex:$kernel" -c "${NCU_COUNT:-2}" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis ${NCU_EXTRA:-} \
        "$BIN/bench/$bench" --benchmark_min_time=0.01 ${args//+/ } ;;
    *) echo "unknown PLAN word: $word" | tee -a "$SUMMARY" ;;
  esac
done
