#!/usr/bin/env bash
# Builds lowbit's libFuzzer target for the safetensors reader (clang, ASan +
# UBSan) in its own build directory, writes a seed corpus, and fuzzes for
# ${FUZZ_SECONDS:-60} seconds with inputs up to 4096 bytes. Exits non-zero
# when the fuzzer finds a crash (the input is saved under
# <build>/fuzz-artifacts/). Environment: FUZZ_SECONDS, FUZZ_BUILD_DIR
# (default build-fuzz), FUZZ_JOBS (parallel build jobs, default 2), CC/CXX
# (default clang/clang++, falling back to clang-14/clang++-14).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}

pick() { for c in "$@"; do if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi; done; }
export CC=${CC:-$(pick clang clang-14)}
export CXX=${CXX:-$(pick clang++ clang++-14)}
if [[ -z "$CXX" ]]; then
  echo "run-fuzzer: clang++ not found" >&2
  exit 2
fi
if ! grep -q "tests/fuzz" "$root/CMakeLists.txt"; then
  echo "run-fuzzer: $root/CMakeLists.txt does not add tests/fuzz; add:" >&2
  echo "  if(LOWBIT_BUILD_FUZZERS)" >&2
  echo "    add_subdirectory(tests/fuzz)" >&2
  echo "  endif()" >&2
  exit 2
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLOWBIT_BUILD_FUZZERS=ON -DLOWBIT_ENABLE_CUDA=OFF -DLOWBIT_BUILD_BENCH=OFF \
  -DLOWBIT_BUILD_TOOLS=OFF -DLOWBIT_BUILD_TESTS=OFF
cmake --build "$build" -j"$jobs" --target fuzz_safetensors fuzz_make_seeds

corpus=$build/fuzz-corpus
artifacts=$build/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
"$build/tests/fuzz/fuzz_make_seeds" "$corpus"

echo "run-fuzzer: fuzzing for ${seconds}s (corpus $corpus)"
status=0
"$build/tests/fuzz/fuzz_safetensors" "$corpus" \
  -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -dict="$root/tests/fuzz/safetensors.dict" -artifact_prefix="$artifacts/" \
  -print_final_stats=1 || status=$?
if [[ $status -ne 0 ]]; then
  echo "run-fuzzer: FAILED (exit $status); reproducer(s) in $artifacts:" >&2
  ls -l "$artifacts" >&2 || true
  exit "$status"
fi
echo "run-fuzzer: no crash in ${seconds}s"
