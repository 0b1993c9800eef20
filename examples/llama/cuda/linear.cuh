// examples/llama/cuda/linear.cuh
// The three products of a linear layer y = x W^T on CUDA, the twins of
// linear.hpp, with W a matrix_ref whose pointers are device memory:
//   linear_forward          y[M, rows]  = x[M, cols] W^T
//   linear_backward_input   dx[M, cols] = dy[M, rows] W
//   linear_weight_grad      dW[rows, cols] (float32 or bfloat16) = dy^T x
// Quantized W goes through lowbit::cuda::dequant_gemm_forward /
// dequant_gemm_backward_input (the packed codes are read as they are stored;
// the library picks its GEMV, tensor-core or dequantize+cuBLAS regime), a
// dense float32 / bfloat16 W through cublasGemmEx (its dtype must equal the
// activations': cuBLAS multiplies like types), and dW through
// lowbit::cuda::gemm_weight_grad. Activations are float32 or bfloat16
// (type A); outputs may be float32 where the caller wants (the logits).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <lowbit/lowbit.cuh>

#include "../parameters.hpp"
#include "attention.cuh"

namespace llama {
namespace gpu {

inline lowbit::tensor_view dview(const void* p, lowbit::dtype t, int64_t rows, int64_t cols) {
  return lowbit::make_view(const_cast<void*>(p), t, {rows, cols}, lowbit::device::cuda());
}

inline lowbit::dtype dense_dtype(const matrix_ref& w) {
  return w.kind == matrix_storage::bf16 ? lowbit::dtype::bf16 : lowbit::dtype::f32;
}

inline cudaDataType_t cuda_dtype_of(lowbit::dtype t) {
  return t == lowbit::dtype::bf16 ? CUDA_R_16BF : CUDA_R_32F;
}

inline void require_dense_match(const matrix_ref& w, lowbit::dtype act, const char* fn) {
  lowbit::require(w.kind == matrix_storage::f32 || w.kind == matrix_storage::bf16, lowbit::errc::invalid_argument,
                  std::string(fn) + ": dense weights must be float32 or bfloat16 on the GPU");
  lowbit::require(dense_dtype(w) == act, lowbit::errc::unsupported,
                  std::string(fn) + ": " + lowbit::dtype_name(dense_dtype(w)) + " weights with " +
                      lowbit::dtype_name(act) + " activations (cuBLAS multiplies like types)");
}

inline void require_int_dims(int64_t a, int64_t b, int64_t c, const char* fn) {
  const int64_t lim = int64_t(1) << 31;
  lowbit::require(a < lim && b < lim && c < lim, lowbit::errc::unsupported,
                  std::string(fn) + ": a dimension is too large for cuBLAS (>= 2^31)");
}

// One dense product with the arguments of a plan (gemm_plans.hpp): A = W.
inline void dense_gemm(cublasHandle_t h, const gemm_args& g, const void* w, const void* b, cudaDataType_t ab_type,
                       void* c, cudaDataType_t c_type, const char* what) {
  cublas_ok(cublasGemmEx(h, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, int(g.m),
                         int(g.n), int(g.k), &g.alpha, w, ab_type, int(g.lda), b, ab_type, int(g.ldb), &g.beta, c,
                         c_type, int(g.ldc), compute_type_for(ab_type), CUBLAS_GEMM_DEFAULT),
            what);
}

// y [M, w.rows] of dtype y_type = x [M, w.cols] (dtype x_type) W^T.
inline void linear_forward(cublasHandle_t h, const void* x, lowbit::dtype x_type, int64_t M, const matrix_ref& w,
                           void* y, lowbit::dtype y_type, cudaStream_t s) {
  if (w.kind == matrix_storage::quantized) {
    lowbit::cuda::dequant_gemm_forward(dview(x, x_type, M, w.cols), w.q, w.rows, w.cols, nullptr,
                                       dview(y, y_type, M, w.rows), s);
    return;
  }
  require_dense_match(w, x_type, "linear_forward");
  if (M == 0) return;
  require_int_dims(M, w.rows, w.cols, "linear_forward");
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  dense_gemm(h, plan_linear_forward(M, w.rows, w.cols), w.data, x, cuda_dtype_of(x_type), y, cuda_dtype_of(y_type),
             "linear_forward");
}

// dx [M, w.cols] (dtype dx_type: t, or float32) = dy [M, w.rows] (dtype t) W.
inline void linear_backward_input(cublasHandle_t h, const void* dy, lowbit::dtype t, int64_t M, const matrix_ref& w,
                                  void* dx, lowbit::dtype dx_type, cudaStream_t s) {
  if (w.kind == matrix_storage::quantized) {
    lowbit::cuda::dequant_gemm_backward_input(dview(dy, t, M, w.rows), w.q, w.rows, w.cols,
                                              dview(dx, dx_type, M, w.cols), s);
    return;
  }
  require_dense_match(w, t, "linear_backward_input");
  if (M == 0) return;
  require_int_dims(M, w.rows, w.cols, "linear_backward_input");
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  dense_gemm(h, plan_linear_backward_input(M, w.rows, w.cols), w.data, dy, cuda_dtype_of(t), dx,
             cuda_dtype_of(dx_type), "linear_backward_input");
}
inline void linear_backward_input(cublasHandle_t h, const void* dy, lowbit::dtype t, int64_t M, const matrix_ref& w,
                                  void* dx, cudaStream_t s) {
  linear_backward_input(h, dy, t, M, w, dx, t, s);
}

// dw [rows, cols] (+)= dy [M, rows]^T x [M, cols], both of dtype t; dw of
// dtype dw_type: float32, or bfloat16 (needs bfloat16 dy and x: cuBLAS has
// no float32 x float32 -> bfloat16 GEMM). The products are summed in
// float32 and rounded once into dw; with accumulate and a bfloat16 dw the
// sum starts from dw's already rounded value, so the result is rounded a
// second time (the trainer never accumulates here; see model.cuh for the
// tied head).
inline void linear_weight_grad(cublasHandle_t h, const void* dy, const void* x, lowbit::dtype t, int64_t M,
                               int64_t rows, int64_t cols, void* dw, lowbit::dtype dw_type, bool accumulate,
                               cudaStream_t s) {
  lowbit::cuda::gemm_weight_grad(dview(dy, t, M, rows), dview(x, t, M, cols), dview(dw, dw_type, rows, cols),
                                 accumulate, s, h);
}

}  // namespace gpu
}  // namespace llama
