// examples/llama/linear.hpp
// The three products of a linear layer y = x W^T with W a matrix_ref
// (rows = out features, cols = in features):
//   linear_forward          y[M, rows]  = x[M, cols] W^T
//   linear_backward_input   dx[M, cols] = dy[M, rows] W
//   linear_weight_grad      dW[rows, cols] (+)= dy^T x
// In float they call lowbit's CPU kernels: dequant_gemm_* for quantized W
// (the packed codes are decoded tile by tile, never into a full copy),
// gemm_* for float32 / bfloat16 W, gemm_weight_grad for dW. In double (the
// gradient check only) they are plain loops over float64 weights.
#pragma once

#include <cstdint>

#include <lowbit/lowbit.hpp>

#include "parameters.hpp"

namespace llama {

inline void linear_forward(const float* x, int64_t M, const matrix_ref& w, float* y) {
  const lowbit::tensor_view xv = lowbit::make_view(x, {M, w.cols});
  const lowbit::tensor_view yv = lowbit::make_view(y, {M, w.rows});
  switch (w.kind) {
    case matrix_storage::quantized: lowbit::cpu::dequant_gemm_forward(xv, w.q, w.rows, w.cols, nullptr, yv); return;
    case matrix_storage::f32:
      lowbit::cpu::gemm_forward(xv, lowbit::make_view(static_cast<const float*>(w.data), {w.rows, w.cols}), nullptr, yv);
      return;
    case matrix_storage::bf16:
      lowbit::cpu::gemm_forward(xv, lowbit::make_view(static_cast<const lowbit::bf16*>(w.data), {w.rows, w.cols}),
                                nullptr, yv);
      return;
    case matrix_storage::f64: break;
  }
  throw lowbit::error(lowbit::errc::invalid_argument, "linear_forward: float activations with float64 weights");
}

inline void linear_backward_input(const float* dy, int64_t M, const matrix_ref& w, float* dx) {
  const lowbit::tensor_view dyv = lowbit::make_view(dy, {M, w.rows});
  const lowbit::tensor_view dxv = lowbit::make_view(dx, {M, w.cols});
  switch (w.kind) {
    case matrix_storage::quantized: lowbit::cpu::dequant_gemm_backward_input(dyv, w.q, w.rows, w.cols, dxv); return;
    case matrix_storage::f32:
      lowbit::cpu::gemm_backward_input(dyv, lowbit::make_view(static_cast<const float*>(w.data), {w.rows, w.cols}), dxv);
      return;
    case matrix_storage::bf16:
      lowbit::cpu::gemm_backward_input(dyv, lowbit::make_view(static_cast<const lowbit::bf16*>(w.data), {w.rows, w.cols}),
                                       dxv);
      return;
    case matrix_storage::f64: break;
  }
  throw lowbit::error(lowbit::errc::invalid_argument, "linear_backward_input: float activations with float64 weights");
}

inline void linear_weight_grad(const float* dy, const float* x, int64_t M, int64_t rows, int64_t cols, float* dw,
                               bool accumulate) {
  lowbit::cpu::gemm_weight_grad(lowbit::make_view(dy, {M, rows}), lowbit::make_view(x, {M, cols}),
                                lowbit::make_view(dw, {rows, cols}), accumulate);
}

// float64 reference versions (weights must be stored as float64).
inline const double* f64_weights(const matrix_ref& w) {
  lowbit::require(w.kind == matrix_storage::f64, lowbit::errc::invalid_argument,
                  "double-precision model needs float64 weights");
  return static_cast<const double*>(w.data);
}

inline void linear_forward(const double* x, int64_t M, const matrix_ref& w, double* y) {
  const double* W = f64_weights(w);
  lowbit::cpu::parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t r = 0; r < w.rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < w.cols; ++c) s += x[m * w.cols + c] * W[r * w.cols + c];
        y[m * w.rows + r] = s;
      }
  });
}

inline void linear_backward_input(const double* dy, int64_t M, const matrix_ref& w, double* dx) {
  const double* W = f64_weights(w);
  lowbit::cpu::parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t c = 0; c < w.cols; ++c) {
        double s = 0;
        for (int64_t r = 0; r < w.rows; ++r) s += dy[m * w.rows + r] * W[r * w.cols + c];
        dx[m * w.cols + c] = s;
      }
  });
}

inline void linear_weight_grad(const double* dy, const double* x, int64_t M, int64_t rows, int64_t cols, double* dw,
                               bool accumulate) {
  lowbit::cpu::parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        double s = 0;
        for (int64_t m = 0; m < M; ++m) s += dy[m * rows + r] * x[m * cols + c];
        dw[r * cols + c] = accumulate ? dw[r * cols + c] + s : s;
      }
  });
}

}  // namespace llama
