// lowbit/cuda/gemm/dispatch.hpp
// The automatic choice among the three dequant-GEMM regimes: the regime
// names, the direction of a call, the thresholds (gemm_policy) and the rule
// (select_gemm_regime). Plain C++ with no CUDA dependency, so the rule is
// unit-tested on machines without a GPU (tests/gemm/test_gemm_dispatch.cpp)
// and a caller can ask which regime a call will take without including the
// kernels. The thresholds come from bench_dequant_gemm_cuda on an H100
// (2026-11-26, docs/PERFORMANCE.md "Dequant-GEMM (CUDA, H100)"): each one is
// where the fastest measured NF4 regime changes; re-measure for another GPU.
#pragma once

#include <cstdint>

#include "../../core/dtype.hpp"

namespace lowbit {
namespace cuda {

// Which kernel family computes a dequant-GEMM. Tests and benchmarks force
// one; callers normally leave `automatic`.
enum class gemm_regime : uint8_t {
  automatic,
  gemv,            // CUDA cores, fp32 FMAs, memory bound: small M
  mma,             // tensor cores (mma.sync m16n8k16), W tiles decoded into shared memory
  dequant_cublas,  // dequantize W tile-wise into a workspace, then cuBLAS
};

inline const char* gemm_regime_name(gemm_regime r) {
  switch (r) {
    case gemm_regime::automatic: return "automatic";
    case gemm_regime::gemv: return "gemv";
    case gemm_regime::mma: return "mma";
    case gemm_regime::dequant_cublas: return "dequant_cublas";
  }
  return "?";
}

// How the forward gemv (gemm/gemv.cuh) divides W among warps.
//   rows_per_warp: each warp owns 2 rows of W and walks their whole length;
//     the CTAs of a 4096-row W fill about half a wave of an H100 (measured,
//     sessions 1 and 2: 48 to 51 % of copy bandwidth at M = 1).
//   split_k: 1 to 8 warps share 2 rows, each taking every w-th 16-byte vector
//     of them, and the CTA sums the warps' parts in shared memory in a fixed
//     order (deterministic); 2 to 8 times the warps, so more loads in flight.
//     Not yet measured on a GPU (written 2026-11-27 without one), hence not
//     the default; bench_dequant_gemm_cuda times both.
enum class gemv_forward_layout : uint8_t { rows_per_warp, split_k };

inline const char* gemv_forward_layout_name(gemv_forward_layout l) {
  return l == gemv_forward_layout::split_k ? "split_k" : "rows_per_warp";
}

// forward: Y = X W^T; backward_input: dX = dY W (the same packed W).
enum class gemm_direction : uint8_t { forward, backward_input };

// Thresholds of the automatic dispatch; M is the number of activation rows
// (rows of X or dY), W is n x k.
struct gemm_policy {
  int64_t gemv_max_m = 4;           // forward (and float32) M <= this: gemv
  int64_t gemv_max_m_backward = 2;  // backward dX with bf16 / fp16, M <= this: gemv
  int64_t cublas_min_m = 256;       // M >= this (or float32 activations): dequant_cublas; between: mma
  // A small W (at most this many weights) is decoded and multiplied by
  // cuBLAS in less time than the mma kernel takes from these M on: the
  // fallback's cost is nearly flat in M there (decode W, one cuBLAS call),
  // while mma's grid has too few tiles of a small W to fill the GPU.
  int64_t small_weight_max_elements = int64_t(24) << 20;
  int64_t small_weight_cublas_min_m = 16;           // forward
  int64_t small_weight_cublas_min_m_backward = 64;  // backward dX
  // The forward gemv's work division (either is exact to the fp32 bound;
  // their sums differ only in order).
  gemv_forward_layout gemv_forward = gemv_forward_layout::rows_per_warp;
};

// The regime the automatic dispatch picks:
//
//   forward, M <= 4; backward, M <= 2          -> gemv
//   float32 activations with M <= 4            -> gemv (either direction)
//   float32 activations, or M >= 256           -> dequant_cublas
//   n k <= 24 Mi and M >= 16 (backward: 64)    -> dequant_cublas
//   otherwise (bf16 / fp16)                    -> mma
//
// Measured on the four LLaMA-7B shapes (session 2): the forward gemv beat
// mma at M = 1 and 4 on all of them; the backward gemv beat mma at M = 1 but
// lost at M = 4; from M = 256 the fallback beat mma or lost by at most 8 %.
// On 4096x4096 (16 Mi weights) the fallback took 38 us at every M up to 64
// while mma took 39 to 45 us from M = 16 forward (45 against 39 us at
// M = 64 backward); on 4096x11008 and larger (45 Mi weights and up) mma won
// at M = 16 and 64 in both directions, so the size limit sits between. M
// between measured points follows the nearer measured side.
inline gemm_regime select_gemm_regime(gemm_direction dir, int64_t M, int64_t n, int64_t k, dtype activations,
                                      const gemm_policy& policy = {}) {
  const bool backward = dir == gemm_direction::backward_input;
  // float32 has no mma path, so its gemv range does not shrink backward
  const int64_t gemv_max = backward && activations != dtype::f32 ? policy.gemv_max_m_backward : policy.gemv_max_m;
  if (M <= gemv_max) return gemm_regime::gemv;
  if (activations == dtype::f32 || M >= policy.cublas_min_m) return gemm_regime::dequant_cublas;
  const bool small_weight = n >= 0 && k >= 0 && n <= policy.small_weight_max_elements &&
                            (k == 0 || n <= policy.small_weight_max_elements / k);
  const int64_t small_min = backward ? policy.small_weight_cublas_min_m_backward : policy.small_weight_cublas_min_m;
  if (small_weight && M >= small_min) return gemm_regime::dequant_cublas;
  return gemm_regime::mma;
}

}  // namespace cuda
}  // namespace lowbit
