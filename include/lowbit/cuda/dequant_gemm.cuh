// lowbit/cuda/dequant_gemm.cuh
// CUDA matrix products with a blockwise-quantized weight W (a quantized_view
// of a row-major N x K matrix in any lowbit format, float32 or nested
// scales, in device or managed memory), the twin of cpu/dequant_gemm.hpp:
//
//   dequant_gemm_forward         Y[M, N]  = X[M, K] W^T (+ bias[N])
//   dequant_gemm_backward_input  dX[M, K] = dY[M, N] W     (same packed W)
//   gemm_weight_grad             dW[N, K] = dY^T X (+ dW)  (plain cuBLAS GEMM)
//
// Activations and outputs are float32, bfloat16 or float16 (they may
// differ), contiguous; products are summed in fp32 and rounded once into the
// output dtype (the bias is added in fp32 before that rounding). W is never
// re-quantized, transposed or dequantized as a whole (the dequant_cublas
// regime decodes panels of at most gemm_options::max_tile_bytes).
//
// Three regimes (cuda/gemm/*.cuh), one entry point:
//
//   gemv            gemm/gemv.cuh: CUDA cores, memory bound; W streamed once
//                   with 16-byte (forward) / 8-byte (backward) loads and
//                   decoded in registers; fp32 code values, block scales
//                   applied once per vector of codes. The forward divides
//                   W among warps by gemm_policy::gemv_forward (a warp per
//                   row pair, or warps splitting K).
//   mma             gemm/mma_gemm.cuh: tensor cores, mma.sync m16n8k16 with
//                   W tiles decoded from the packed codes into shared memory;
//                   weights rounded to the activation dtype (bf16 / fp16).
//   dequant_cublas  gemm/dequant_cublas.cuh: W panels dequantized into a
//                   workspace, then cublasGemmEx (fp32 accumulation); weights
//                   in the activation dtype (float32 included).
//
// Automatic dispatch (select_gemm_regime in gemm/dispatch.hpp, where the
// thresholds and the measurements behind them are written down):
//
//   forward, M <= 4; backward, M <= 2          -> gemv
//   float32 activations with M <= 4            -> gemv (either direction)
//   float32 activations, or M >= 256           -> dequant_cublas
//   n k <= 24 Mi and M >= 16 (backward: 64)    -> dequant_cublas
//   otherwise (bf16 / fp16)                    -> mma
//
// Why: below ~4 rows every weight feeds too few FMAs for tensor cores to
// matter and the product is a pass over W at memory bandwidth; from a few
// rows up, the decode is amortized over the rows of a 64-row tile and
// tensor cores do the math while W is read once in packed form; for large M
// the GEMM is compute bound, decoding W once (O(NK)) costs little next to
// the O(MNK) math, and cuBLAS's sm_90 kernels (wgmma, TMA) are faster than
// this library's mma.sync kernel; a small W gives the mma grid too few
// tiles to fill the GPU, and decoding it costs little. Float32 activations
// have no 16-bit tensor core path, so beyond GEMV they go to fp32 cuBLAS.
//
// Which weights each regime multiplies by: mma and dequant_cublas use
// cuda::dequantize's values rounded to the activation dtype (bit for bit);
// gemv uses the float32 code values and applies each block's scale to a
// partial sum (forward) or to the dY value (backward), one rounding per
// product away from multiplying by cuda::dequantize's float32 weights. So
// results of different regimes differ by the rounding of W to bf16 / fp16
// (at most 2^-8 / 2^-11 relative per weight) plus summation order; each
// regime alone meets the fp32-accumulation bound against its own weights
// (see tests/gpu/test_dequant_gemm_gpu.cu for the stated tolerances).
//
// Shapes: any M, N, K >= 0, including K not a multiple of the block size and
// odd K with 4-bit formats (rows of W then start mid-byte; such shapes, and
// misaligned pointers, take per-element decode paths that are slower but
// exact). Results are deterministic: split reductions are summed in a fixed
// order. All calls are asynchronous on `stream`; scratch memory comes from
// gemm_options::workspace or cudaMallocAsync on the stream.
//
// Errors (lowbit::error): invalid_argument for wrong shapes, dtypes, host
// memory, a too small caller workspace; unsupported for a forced mma regime
// with float32 activations or on a GPU below sm_80, and for cuBLAS shapes
// with a dimension >= 2^31. Linking: the dequant_cublas regime and
// gemm_weight_grad call cuBLAS (link CUDA::cublas); programs that only
// include this header do not reference it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/quantized_view.hpp"
#include "check.cuh"
#include "gemm/common.cuh"
#include "gemm/decode.cuh"
#include "gemm/dequant_cublas.cuh"
#include "gemm/gemv.cuh"
#include "gemm/mma_gemm.cuh"

namespace lowbit {
namespace cuda {

// What one call will do: its regime, its reduction splits (gemv backward and
// mma write fp32 partials when splits > 1) and the scratch bytes it needs
// (pass a buffer at least that large as gemm_options::workspace to avoid
// the stream-ordered allocation). M activation rows; W is n x k.
struct gemm_plan {
  gemm_regime regime = gemm_regime::gemv;
  int splits = 1;
  int64_t split_len = 0;  // rows of W (gemv backward) or reduction length (mma) per split
  size_t workspace_bytes = 0;
};

inline gemm_plan plan_dequant_gemm(gemm_direction dir, int64_t M, int64_t n, int64_t k, format fmt,
                                   dtype activations, dtype output, bool has_bias, const gemm_options& opt = {}) {
  using namespace gemm_detail;
  gemm_plan p;
  p.regime = opt.regime == gemm_regime::automatic ? select_gemm_regime(dir, M, n, k, activations, opt.policy) : opt.regime;
  const bool fwd = dir == gemm_direction::forward;
  const int64_t P = fwd ? n : k, R = fwd ? k : n;  // output columns, reduction length
  if (M == 0 || P == 0 || R == 0) return p;
  switch (p.regime) {
    case gemm_regime::gemv:
      if (!fwd) {
        p.splits = gemv_backward_splits(is_4bit(fmt), M, n, k, gemv_mt_for(M), &p.split_len);
        if (p.splits > 1) p.workspace_bytes = size_t(p.splits) * size_t(M) * size_t(k) * 4;
      }
      break;
    case gemm_regime::mma:
      p.splits = mma_splits(M, P, R, &p.split_len);
      if (p.splits > 1) p.workspace_bytes = size_t(p.splits) * size_t(M) * size_t(P) * 4;
      break;
    default: {
      const bool staging = gemm_detail::needs_staging(fwd && has_bias, activations, output);
      p.workspace_bytes =
          plan_panels(!fwd, M, n, k, dtype_size(activations), staging, opt.max_tile_bytes).bytes();
      break;
    }
  }
  return p;
}

namespace gemm_detail {

inline void check_regime(const gemm_plan& plan, dtype act, const char* fn, const char* act_name) {
  if (plan.regime != gemm_regime::mma) return;
  require(act == dtype::bf16 || act == dtype::f16, errc::unsupported,
          std::string(fn) + ": the mma regime needs bfloat16 or float16 " + act_name +
              " (tensor cores take 16-bit operands), got " + dtype_name(act) +
              "; use gemm_regime::automatic, gemv or dequant_cublas");
  require(device_has_mma(), errc::unsupported,
          std::string(fn) + ": the mma regime needs a GPU of compute capability 8.0 or newer");
}

// dst[M][P] = bias (or 0): the product over an empty reduction.
inline void fill_empty_product(void* out, dtype out_type, int64_t M, int64_t P, const tensor_view* bias,
                               cudaStream_t stream) {
  finalize_args f;
  f.splits = 0;
  f.M = M;
  f.P = P;
  f.bias = bias ? bias->data : nullptr;
  f.bias_type = bias ? bias->type : dtype::f32;
  f.out = out;
  f.out_type = out_type;
  f.out_ld = P;
  launch_finalize(f, stream);
}

inline void finalize_splits(const gemm_plan& plan, float* partial, int64_t M, int64_t P, const tensor_view* bias,
                            void* out, dtype out_type, cudaStream_t stream) {
  finalize_partials(partial, plan.splits, M, P, bias ? bias->data : nullptr, bias ? bias->type : dtype::f32, out,
                    out_type, stream);
}

template <class Fn>
void dispatch_mma_type(dtype t, Fn&& fn) {
  if (t == dtype::bf16) fn(bf16{});
  else fn(fp16{});
}

template <class Fn>
void dispatch_operand_type(dtype t, Fn&& fn) {
  if (t == dtype::bf16) fn(bf16{});
  else if (t == dtype::f16) fn(fp16{});
  else fn(float{});
}

}  // namespace gemm_detail

// Y[M, N] = X[M, K] W^T (+ bias[N]). x: [M, k], y: [M, n] (float32 /
// bfloat16 / float16, contiguous, device or managed memory); w: quantized
// n x k row-major (w.layout.n == n * k); bias: 1-D [n] float32 / bfloat16 /
// float16 / float64 or nullptr. y must not overlap x or bias.
// (A template only so that including this header compiles no kernels: nvcc
// builds device code for every kernel a non-template inline function could
// launch, about 50 here; callers never name the parameter.)
template <int Unused = 0>
inline void dequant_gemm_forward(const tensor_view& x, const quantized_view& w, int64_t n, int64_t k,
                                 const tensor_view* bias, const tensor_view& y, cudaStream_t stream = nullptr,
                                 const gemm_options& opt = {}) {
  using namespace gemm_detail;
  const char* fn = "cuda::dequant_gemm_forward";
  check_weight(w, fn, n, k);
  const int64_t M = check_activations(x, "x", k, y, "y", n, fn);
  check_bias(bias, fn, n);
  if (M == 0 || n == 0) return;
  if (k == 0) {
    fill_empty_product(y.data, y.type, M, n, bias, stream);
    return;
  }
  const gemm_plan plan = plan_dequant_gemm(gemm_direction::forward, M, n, k, w.layout.fmt, x.type, y.type,
                                           bias != nullptr, opt);
  check_regime(plan, x.type, fn, "x");
  const code_table table = make_code_table(w.layout.fmt);
  const code_table map = nested_map_table(w.layout.nested);
  const weight_args wa = make_weight_args(w, n, k);
  const void* bias_ptr = bias ? bias->data : nullptr;
  const dtype bias_type = bias ? bias->type : dtype::f32;
  dispatch_kind(w.layout.fmt, [&](auto tag) {
    constexpr decode_kind D = decltype(tag)::value;
    if (plan.regime == gemm_regime::gemv) {
      gemv_forward<D>(x.data, x.type, wa, bias_ptr, bias_type, y.data, y.type, M, n, k, table, map, stream,
                      opt.policy.gemv_forward);
    } else if (plan.regime == gemm_regime::mma) {
      scratch ws(opt, plan.workspace_bytes, stream, fn);
      mma_args a;
      a.act = x.data;
      a.out = y.data;
      a.out_type = y.type;
      a.bias = bias_ptr;
      a.bias_type = bias_type;
      a.partial = plan.splits > 1 ? ws.as<float>() : nullptr;
      a.M = M;
      a.P = n;
      a.R = k;
      a.r_per_split = plan.split_len;
      a.splits = plan.splits;
      a.w = wa;
      a.a_vec = k % 8 == 0 && is_aligned(x.data, 16);
      a.w_vec = k % 16 == 0 && is_aligned(w.codes, 16);
      dispatch_mma_type(x.type, [&](auto t) {
        launch_mma_gemm<D, decltype(t), false>(a, table, map, stream);
      });
      if (plan.splits > 1) finalize_splits(plan, a.partial, M, n, bias, y.data, y.type, stream);
    } else {
      dispatch_operand_type(x.type, [&](auto t) {
        dequant_cublas_forward<D, decltype(t)>(x, wa, w, bias, y, M, n, k, opt, table, map, stream, fn);
      });
    }
  });
}

// dX[M, K] = dY[M, N] W. dy: [M, n], dx: [M, k] (float32 / bfloat16 /
// float16, contiguous, device or managed memory); w as in
// dequant_gemm_forward, the same packed codes and scales. dx must not
// overlap dy. (A template for the same reason as dequant_gemm_forward.)
template <int Unused = 0>
inline void dequant_gemm_backward_input(const tensor_view& dy, const quantized_view& w, int64_t n, int64_t k,
                                        const tensor_view& dx, cudaStream_t stream = nullptr,
                                        const gemm_options& opt = {}) {
  using namespace gemm_detail;
  const char* fn = "cuda::dequant_gemm_backward_input";
  check_weight(w, fn, n, k);
  const int64_t M = check_activations(dy, "dy", n, dx, "dx", k, fn);
  if (M == 0 || k == 0) return;
  if (n == 0) {
    fill_empty_product(dx.data, dx.type, M, k, nullptr, stream);
    return;
  }
  const gemm_plan plan =
      plan_dequant_gemm(gemm_direction::backward_input, M, n, k, w.layout.fmt, dy.type, dx.type, false, opt);
  check_regime(plan, dy.type, fn, "dy");
  const code_table table = make_code_table(w.layout.fmt);
  const code_table map = nested_map_table(w.layout.nested);
  const weight_args wa = make_weight_args(w, n, k);
  dispatch_kind(w.layout.fmt, [&](auto tag) {
    constexpr decode_kind D = decltype(tag)::value;
    if (plan.regime == gemm_regime::gemv) {
      scratch ws(opt, plan.workspace_bytes, stream, fn);
      gemv_backward<D>(dy.data, dy.type, wa, dx.data, dx.type, M, n, k, plan.splits, plan.split_len,
                       plan.splits > 1 ? ws.as<float>() : nullptr, table, map, stream);
    } else if (plan.regime == gemm_regime::mma) {
      scratch ws(opt, plan.workspace_bytes, stream, fn);
      mma_args a;
      a.act = dy.data;
      a.out = dx.data;
      a.out_type = dx.type;
      a.partial = plan.splits > 1 ? ws.as<float>() : nullptr;
      a.M = M;
      a.P = k;
      a.R = n;
      a.r_per_split = plan.split_len;
      a.splits = plan.splits;
      a.w = wa;
      a.a_vec = n % 8 == 0 && is_aligned(dy.data, 16);
      a.w_vec = k % 16 == 0 && is_aligned(w.codes, 16);
      dispatch_mma_type(dy.type, [&](auto t) {
        launch_mma_gemm<D, decltype(t), true>(a, table, map, stream);
      });
      if (plan.splits > 1) finalize_splits(plan, a.partial, M, k, nullptr, dx.data, dx.type, stream);
    } else {
      dispatch_operand_type(dy.type, [&](auto t) {
        dequant_cublas_backward<D, decltype(t)>(dy, wa, w, dx, M, n, k, opt, table, map, stream, fn);
      });
    }
  });
}

// Bytes lowbit's GEMM scratch pool of device `dev` (the current device when
// -1) holds now: memory kept between calls that allocate their own scratch
// (gemm_options::workspace == nullptr).
inline size_t gemm_scratch_bytes(int dev = -1) {
  if (dev < 0) LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  uint64_t bytes = 0;
  LOWBIT_CUDA_CHECK(cudaMemPoolGetAttribute(gemm_detail::gemm_scratch_pool(dev), cudaMemPoolAttrReservedMemCurrent,
                                            &bytes));
  return size_t(bytes);
}

// Returns what the scratch pool of device `dev` keeps to the system. Call it
// once the work that used the scratch has completed (e.g. after
// cudaDeviceSynchronize); memory of calls still in flight is not returned.
inline void release_gemm_scratch(int dev = -1) {
  if (dev < 0) LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  LOWBIT_CUDA_CHECK(cudaMemPoolTrimTo(gemm_detail::gemm_scratch_pool(dev), 0));
}

// dW[N, K] = dY[M, N]^T X[M, K] (accumulate: dW += dY^T X) with cuBLAS,
// fp32 accumulation, one rounding into dw's dtype. dy and x: the same dtype,
// float32 / bfloat16 / float16; dw: float32 or bfloat16 (bfloat16 needs
// bfloat16 operands: cuBLAS has no fp16 x fp16 -> bf16 or fp32 -> bf16
// GEMM); all 2-D, contiguous, device or managed memory; dw must not overlap
// dy or x. handle: nullptr uses default_cublas_handle(); its stream is set
// for the call and restored after.
inline void gemm_weight_grad(const tensor_view& dy, const tensor_view& x, const tensor_view& dw, bool accumulate,
                             cudaStream_t stream = nullptr, cublasHandle_t handle = nullptr) {
  using namespace gemm_detail;
  const char* fn = "cuda::gemm_weight_grad";
  const gemm_checks::weight_grad_dims d = gemm_checks::check_weight_grad(dy, x, dw, fn, gemm_checks::side::device);
  const int64_t M = d.M, N = d.N, K = d.K;
  require(dy.type == x.type, errc::unsupported,
          std::string(fn) + ": dy (" + dtype_name(dy.type) + ") and x (" + dtype_name(x.type) +
              ") must have the same dtype for cuBLAS");
  require(dw.type == dtype::f32 || dy.type == dtype::bf16, errc::unsupported,
          std::string(fn) + ": a bfloat16 dw needs bfloat16 dy and x, got " + dtype_name(dy.type));
  if (N == 0 || K == 0) return;
  if (M == 0) {
    if (!accumulate) LOWBIT_CUDA_CHECK(cudaMemsetAsync(dw.data, 0, dw.nbytes(), stream));
    return;
  }
  require_int_dims(fn, M, N, K);
  cublasHandle_t h = handle ? handle : default_cublas_handle();
  cublas_stream_scope scope(h, stream);
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // column-major view: dW^T (K x N) = X^T (K x M) * dY (M x N)
  LOWBIT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(N), int(M), &one, x.data,
                                   cuda_type(x.type), int(K), dy.data, cuda_type(dy.type), int(N), &beta, dw.data,
                                   cuda_type(dw.type), int(K), compute_type(x.type), CUBLAS_GEMM_DEFAULT));
}

}  // namespace cuda
}  // namespace lowbit
