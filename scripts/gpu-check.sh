#!/usr/bin/env bash
# scripts/gpu-check.sh
# The one script to run on a GPU machine (an H100, CUDA 13 toolkit): prints
# the machine (date -u, nvidia-smi -L, nvcc --version, compilers), configures
# build-gpu/ for sm_90 in Release, builds everything, runs every CTest test
# (a GPU test that skips while nvidia-smi sees a GPU is a failure), runs
# compute-sanitizer memcheck and racecheck on each GPU test binary (test
# cases named "*2^31*" or "*[large]*" are left out there), runs every GPU
# benchmark (build-gpu/bench/bench_*_cuda) with JSON output into $OUT (or
# build-gpu/results/), and ends with a step summary, a GB/s / % of copy
# table, and for bench_dequant_gemm_cuda a TFLOP/s / % of cuBLAS table. It installs nothing and needs no network: tools come from PATH (or
# /usr/local/cuda/bin, or the pip "cmake"/"ninja" packages of python3), and
# doctest, nlohmann-json, dlpack and Google Benchmark come from the system or
# from build-deps/ (made here by scripts/pack-gpu-deps.sh and carried along).
# Exit status: 0 only when configure, build, every test, both sanitizers on
# every GPU test binary and every GPU benchmark succeeded.
#
# Usage: scripts/gpu-check.sh
# Knobs (environment): STEPS (default "test sanitize bench llama"; "llama" runs
# scripts/llama-gpu-figures.sh, the trainer's GPU figures, with its own knobs
# FIGURES / MODES7B / MODES1B; configure and
# build always run, incrementally, so a second call can do the rest of a
# 10-minute-limited session, e.g. STEPS=bench), JOBS (16), BUILD_DIR
# (build-gpu), SKIP_SANITIZER=1,
# SANITIZER_TIMEOUT (s per binary and tool, 300), BENCH_ARGS (extra flags for
# every GPU benchmark, e.g. "--n=67108864 --benchmark_min_time=0.2"),
# BENCH_TIMEOUT (s per benchmark binary, 420), BENCHES (names of the
# benchmark binaries to run, default all, e.g. "bench_dequant_gemm_cuda"),
# TARGETS (build only these CMake targets, e.g. "llama_train test_llama_gpu";
# default all), CTEST_ARGS (extra ctest flags, e.g. "-R llama" with TARGETS).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
BUILD=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-16}
RESULTS=${OUT:-$ROOT/$BUILD/results}
SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-300}
STEPS=" ${STEPS:-test sanitize bench llama} "
BENCH_TIMEOUT=${BENCH_TIMEOUT:-420}
mkdir -p "$RESULTS" "$BUILD"

declare -a SUMMARY=() JSONS=()
FAILED=0
GPUS=0
note() { SUMMARY+=("$1"); }
failed() { SUMMARY+=("FAIL: $1"); FAILED=1; }
section() { printf '\n===== %s =====\n' "$1"; }

# Prints the path of tool $1: from PATH, else the first executable candidate.
find_tool() {
  local name=$1; shift
  local c
  if c=$(command -v "$name" 2>/dev/null); then echo "$c"; return 0; fi
  for c in "$@"; do
    if [[ -x "$c" ]]; then echo "$c"; return 0; fi
  done
  return 1
}

# Prepends the folder of each given tool path to PATH (ctest next to cmake,
# nvcc for CMake's CUDA detection, ...).
add_to_path() {
  local t
  for t in "$@"; do [[ -n "$t" ]] && PATH="$(dirname "$t"):$PATH"; done
  export PATH
}

# Every step in order; returns early when a later step cannot run.
steps() {
  section "machine"
  echo "date -u: $(date -u)"
  echo "uname: $(uname -srm)"
  echo "repo: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git') $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed/untracked paths)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L || true
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    # read-only queries; this script never changes the card's settings
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv 2>/dev/null || true
  else
    echo "nvidia-smi: not found"
  fi
  echo "GPUs seen by nvidia-smi: $GPUS"

  local py nvcc cmake ninja sanitizer
  py=$(command -v python3 || true)
  # pip's cmake / ninja wheels put their binaries next to python3
  local pybin=""
  [[ -n "$py" ]] && pybin=$(dirname "$(readlink -f "$py")")
  nvcc=$(find_tool nvcc /usr/local/cuda/bin/nvcc /usr/local/cuda-13/bin/nvcc) || nvcc=""
  cmake=$(find_tool cmake /usr/local/bin/cmake "$pybin/cmake" /opt/torch/.venv/bin/cmake) || cmake=""
  ninja=$(find_tool ninja /usr/local/bin/ninja "$pybin/ninja" /opt/torch/.venv/bin/ninja) || ninja=""
  sanitizer=$(find_tool compute-sanitizer /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer) || sanitizer=""
  if [[ -z "$cmake" && -n "$py" ]]; then
    # the pip package's module knows where its binary is
    local d
    d=$("$py" -c 'import cmake, os; print(cmake.CMAKE_BIN_DIR)' 2>/dev/null) && [[ -x "$d/cmake" ]] && {
      export PATH="$d:$PATH"; cmake="$d/cmake"; }
  fi
  if [[ -z "$cmake" ]]; then
    echo "cmake: not found on PATH, in /usr/local/bin or next to python3; trying 'pip install cmake ninja' (works only with network)"
    if [[ -n "$py" ]] && timeout 120 "$py" -m pip install --quiet cmake ninja; then
      cmake=$(command -v cmake || true)
      [[ -z "$ninja" ]] && ninja=$(command -v ninja || true)
    fi
  fi
  add_to_path "$nvcc" "$cmake" "$ninja" "$sanitizer"
  echo "python3: ${py:-not found} $([[ -n "$py" ]] && "$py" --version 2>&1)"
  echo "nvcc: ${nvcc:-NOT FOUND}"; [[ -n "$nvcc" ]] && "$nvcc" --version | tail -2
  echo "cmake: ${cmake:-NOT FOUND} $([[ -n "$cmake" ]] && "$cmake" --version | head -1)"
  echo "ninja: ${ninja:-not found (using make)} $([[ -n "$ninja" ]] && "$ninja" --version)"
  echo "c++: $(c++ --version 2>/dev/null | head -1 || echo 'not found')"
  echo "compute-sanitizer: ${sanitizer:-not found}"
  if [[ -z "$nvcc" ]]; then failed "nvcc not found (looked on PATH and in /usr/local/cuda/bin)"; return; fi
  if [[ -z "$cmake" ]]; then failed "cmake not found and could not be installed (no network?)"; return; fi

  section "dependencies"
  local -a cmake_args=()
  local deps=$ROOT/build-deps/usr
  if [[ -d "$deps" ]]; then
    echo "using build-deps/ (from scripts/pack-gpu-deps.sh):"
    sed 's/^/  /' "$ROOT/build-deps/MANIFEST" 2>/dev/null || true
    # the environment variable reaches nested CMake runs too (the
    # consumer_find_package test configures a project of its own)
    export CMAKE_PREFIX_PATH="$deps${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    export LD_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local pkg dir
    for pkg in doctest:lib/cmake/doctest nlohmann_json:share/cmake/nlohmann_json \
               dlpack:lib/x86_64-linux-gnu/cmake/dlpack benchmark:lib/x86_64-linux-gnu/cmake/benchmark; do
      dir=$deps/${pkg#*:}
      [[ -d "$dir" ]] && cmake_args+=("-D${pkg%%:*}_DIR=$dir")
    done
  else
    echo "no build-deps/: doctest, nlohmann_json, dlpack and benchmark must be installed system-wide."
    echo "If configure fails below, run scripts/pack-gpu-deps.sh on the development machine and carry build-deps/."
  fi

  section "configure ($BUILD)"
  local gen=()
  [[ -n "$ninja" ]] && gen=(-G Ninja)
  if [[ -f "$BUILD/CMakeCache.txt" ]] && [[ -n "$ninja" ]] && ! grep -q 'CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt"; then
    gen=()  # keep the generator the existing build dir was made with
  fi
  if ! "$cmake" -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_CUDA_COMPILER="$nvcc" -DLOWBIT_ENABLE_CUDA=ON -DLOWBIT_BUILD_TESTS=ON -DLOWBIT_BUILD_BENCH=ON \
      "${cmake_args[@]}"; then
    failed "configure (missing doctest / nlohmann_json / dlpack / benchmark? see above)"
    return
  fi
  if ! grep -q '^CMAKE_CUDA_COMPILER:' "$BUILD/CMakeCache.txt"; then
    failed "configure did not enable CUDA (nvcc=$nvcc): GPU tests and benchmarks would not be built"
    return
  fi
  note "configure: ok"

  section "build (-j$JOBS)"
  local t0=$SECONDS
  local -a targets=()
  [[ -n "${TARGETS:-}" ]] && targets=(--target $TARGETS)
  if ! "$cmake" --build "$BUILD" -j "$JOBS" "${targets[@]}"; then failed "build"; return; fi
  note "build: ok ($((SECONDS - t0)) s)"

  local f
  local -a gpu_tests=()
  for f in "$BUILD"/tests/gpu_test_* "$BUILD"/examples/test_llama_gpu; do [[ -x "$f" && -f "$f" ]] && gpu_tests+=("$f"); done
  if [[ ${#gpu_tests[@]} -eq 0 && ( "$STEPS" == *" test "* || "$STEPS" == *" sanitize "* ) ]]; then
    failed "no GPU test binaries ($BUILD/tests/gpu_test_*) were built"
  fi

  if [[ "$STEPS" == *" test "* ]]; then
    run_ctest
  else
    note "ctest: not run (STEPS=$STEPS)"
  fi
  if [[ "$STEPS" == *" sanitize "* ]]; then
    run_sanitizers "$sanitizer" "${gpu_tests[@]}"
  else
    note "compute-sanitizer: not run (STEPS=$STEPS)"
  fi
  if [[ "$STEPS" == *" bench "* ]]; then
    run_benchmarks
  else
    note "GPU benchmarks: not run (STEPS=$STEPS)"
  fi
  if [[ "$STEPS" == *" llama "* ]]; then
    section "LLaMA trainer on the GPU (scripts/llama-gpu-figures.sh, FIGURES=${FIGURES:-default})"
    local t0=$SECONDS
    if bash "$ROOT/scripts/llama-gpu-figures.sh" "$BUILD" "$RESULTS"; then
      note "llama figures: ok ($((SECONDS - t0)) s)"
    else
      failed "llama figures: a run failed (see $RESULTS/llama-*.log)"
    fi
  else
    note "llama figures: not run (STEPS=$STEPS)"
  fi
}

run_ctest() {
  section "ctest"
  local ctest_bin cmake
  cmake=$(command -v cmake)
  ctest_bin=$(dirname "$cmake")/ctest
  [[ -x "$ctest_bin" ]] || ctest_bin=ctest
  local ctest_log=$RESULTS/ctest.log
  # shellcheck disable=SC2086
  (cd "$BUILD" && "$ctest_bin" --output-on-failure -j 4 ${CTEST_ARGS:-} 2>&1) | tee "$ctest_log"
  local ctest_rc=${PIPESTATUS[0]}
  local skipped
  skipped=$(grep -cE '\*\*\*Skipped' "$ctest_log" || true)
  local total
  total=$(grep -oE 'tests passed, [0-9]+ tests failed out of [0-9]+' "$ctest_log" | grep -oE '[0-9]+$' || echo '?')
  if [[ $ctest_rc -ne 0 ]]; then
    failed "ctest: failures (exit $ctest_rc; $ctest_log)"
  elif [[ $skipped -gt 0 ]]; then
    # on the GPU machine a skip is a failure; without a GPU, no GPU test ran
    failed "ctest: $skipped test(s) skipped (nvidia-smi sees $GPUS GPU(s))"
  else
    note "ctest: ok, $total tests, none skipped"
  fi
}

# run_sanitizers SANITIZER_PATH GPU_TEST...
run_sanitizers() {
  section "compute-sanitizer"
  local sanitizer=$1; shift
  local -a gpu_tests=("$@")
  local f t0
  if [[ -n "${SKIP_SANITIZER:-}" ]]; then
    note "compute-sanitizer: skipped (SKIP_SANITIZER set)"
  elif [[ -z "$sanitizer" ]]; then
    failed "compute-sanitizer not found"
  elif [[ ${#gpu_tests[@]} -gt 0 ]]; then
    local san_log=$RESULTS/sanitizer.log tool rc
    : >"$san_log"
    for f in "${gpu_tests[@]}"; do
      for tool in memcheck racecheck; do
        echo "--- $tool $(basename "$f")" | tee -a "$san_log"
        t0=$SECONDS
        # the >2^31-element case and the [large] (LLaMA-sized) cases are left
        # out under the sanitizers (they would run for far longer than the
        # timeout there); ctest above runs them
        timeout "$SANITIZER_TIMEOUT" "$sanitizer" --tool "$tool" --error-exitcode 99 "$f" \
          --test-case-exclude='*2^31*,*[large]*' >>"$san_log" 2>&1
        rc=$?
        tail -n 3 "$san_log"
        if [[ $rc -eq 0 ]]; then
          note "compute-sanitizer $tool $(basename "$f"): ok ($((SECONDS - t0)) s)"
        elif [[ $rc -eq 124 ]]; then
          failed "compute-sanitizer $tool $(basename "$f"): timed out after ${SANITIZER_TIMEOUT} s"
        else
          failed "compute-sanitizer $tool $(basename "$f"): exit $rc (see $san_log)"
        fi
      done
    done
  fi
}

run_benchmarks() {
  section "GPU benchmarks"
  local f t0
  local -a benches=()
  for f in "$BUILD"/bench/bench_*cuda; do
    [[ -x "$f" && -f "$f" ]] || continue
    if [[ -n "${BENCHES:-}" && " $BENCHES " != *" $(basename "$f") "* ]]; then continue; fi
    benches+=("$f")
  done
  [[ ${#benches[@]} -eq 0 ]] && failed "no GPU benchmark binaries ($BUILD/bench/bench_*cuda) were built"
  local b name json rc
  for b in "${benches[@]}"; do
    name=$(basename "$b")
    json=$RESULTS/$name.json
    t0=$SECONDS
    # shellcheck disable=SC2086
    timeout "$BENCH_TIMEOUT" "$b" --benchmark_out="$json" --benchmark_out_format=json ${BENCH_ARGS:-}
    rc=$?
    if [[ $rc -eq 0 ]]; then
      note "$name: ok ($((SECONDS - t0)) s) -> $json"
      JSONS+=("$json")
    elif [[ $rc -eq 77 ]]; then
      failed "$name: exited 77 (no CUDA device; nvidia-smi sees $GPUS GPU(s)): nothing measured"
    elif [[ $rc -eq 124 ]]; then
      failed "$name: timed out after ${BENCH_TIMEOUT} s (partial JSON may be in $json)"
    else
      failed "$name: exit $rc"
      [[ -s "$json" ]] && JSONS+=("$json")
    fi
  done
}

# gemm_table JSON...: for bench_dequant_gemm_cuda results, one row per
# benchmark with the counters summarize-bench.py does not show (TFLOP/s, % of
# cuBLAS bf16, speed against the dequant_cublas fallback, chosen regime).
gemm_table() {
  local j
  for j in "$@"; do
    [[ "$(basename "$j")" == bench_dequant_gemm_cuda* ]] || continue
    echo
    echo "### $j (GEMM counters)"
    python3 - "$j" <<'PY' || true
import json, sys
data = json.load(open(sys.argv[1]))
print("| benchmark | time | GB/s | % of copy | TFLOP/s | % of cuBLAS bf16 | vs fallback | plan |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for r in data.get("benchmarks", []):
    if r.get("run_type", "iteration") != "iteration":
        continue
    name = (r.get("run_name") or r.get("name", "?")).replace("/manual_time", "")
    if r.get("error_occurred"):
        print(f"| {name} | FAILED: {r.get('error_message', '')} | | | | | | |")
        continue
    f = lambda k, d=1: "-" if k not in r else f"{r[k]:.{d}f}"
    print(f"| {name} | {r.get('real_time', 0):.3g} {r.get('time_unit', '')} | {f('GBps')} | {f('pct_of_copy')} | "
          f"{f('TFLOPs', 2)} | {f('pct_of_cublas')} | {f('vs_fallback', 2)} | {r.get('label', '')} |")
PY
  done
}

main() {
  steps
  section "summary"
  printf '%s\n' "${SUMMARY[@]}"
  echo "results: $RESULTS"
  if [[ ${#JSONS[@]} -gt 0 ]]; then
    echo
    if command -v python3 >/dev/null; then
      python3 "$ROOT/scripts/summarize-bench.py" "${JSONS[@]}" || FAILED=1
      gemm_table "${JSONS[@]}"
    else
      echo "python3 not found: no table (the JSON is in $RESULTS)"
    fi
  fi
  if [[ $FAILED -ne 0 ]]; then echo "gpu-check: FAILED"; else echo "gpu-check: all steps passed"; fi
  return "$FAILED"
}

main 2>&1 | tee "$RESULTS/gpu-check.log"
rc=${PIPESTATUS[0]}
exit "$rc"
