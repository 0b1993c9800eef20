#!/usr/bin/env bash
# scripts/pack-gpu-binaries.sh
# Builds the GPU test, benchmark and trainer binaries for the H100 (sm_90,
# Release) on this development machine (nvcc, no GPU) and packs them, with
# the shared libraries they need that a bare CUDA machine may lack
# (Google Benchmark, SentencePiece, ...; never libcuda / libcudart / cuBLAS,
# which the GPU machine's CUDA 13 provides), into build-carry/ (ignored by
# git). A GPU session then spends its minutes running, not compiling:
# carry build-carry with the device call and run scripts/gpu-session.sh
# there (docs/GPU-SESSION.md). Building here takes a while on 2 cores (the
# trainer's CUDA TU and the dequant-GEMM test are the long ones); the build
# folder (build-pre/) is kept, so a second run rebuilds only what changed.
# Usage: scripts/pack-gpu-binaries.sh   (knobs: JOBS, CUDA_ARCH=90)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-pre
DEST=build-carry
TARGETS=(gpu_test_quantize_gpu gpu_test_dequantize_rows_gpu gpu_test_optimizer_gpu gpu_test_dequant_gemm_gpu
         test_llama_gpu llama_train bench_dequant_gemm_cuda bench_optimizer_cuda bench_quantize_cuda
         probe_paged_residency gpu_test_c_api)

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
  -DLOWBIT_ENABLE_CUDA=ON -DLOWBIT_BUILD_TESTS=ON -DLOWBIT_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}" --target "${TARGETS[@]}"

rm -rf "$DEST"
mkdir -p "$DEST/tests" "$DEST/examples" "$DEST/bench" "$DEST/lib"
for t in "${TARGETS[@]}"; do
  src=$(find "$BUILD" -maxdepth 2 -type f -name "$t" -perm -u+x | head -n 1)
  [[ -n "$src" ]] || { echo "pack-gpu-binaries: $t was not built" >&2; exit 1; }
  sub=$(basename "$(dirname "$src")")
  cp "$src" "$DEST/$sub/$t"
  strip --strip-unneeded "$DEST/$sub/$t"   # host symbols only; the device code stays
  # the libraries it needs beyond glibc, libstdc++ and CUDA's own
  ldd "$src" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++*|libgcc_s*|libcuda.so*|libcudart*|libcublas*) ;;
      *) cp -L -n "$lib" "$DEST/lib/" ;;
    esac
  done
done
{
  echo "# packed by scripts/pack-gpu-binaries.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include examples tests bench || echo '+local changes')"
  echo "# source: $PWD"
  echo "# host: $(. /etc/os-release && echo "$PRETTY_NAME"), $(/usr/local/cuda/bin/nvcc --version | tail -n 1), CUDA arch ${CUDA_ARCH:-90}"
  (cd "$DEST" && find . -type f | sort | xargs ls -l | awk '{print $5, $9}')
} >"$DEST/MANIFEST"
cat "$DEST/MANIFEST"
echo "pack-gpu-binaries: $(du -sh "$DEST" | cut -f1) in $DEST/; carry it with the device call: carry=[\"$DEST\"]"
