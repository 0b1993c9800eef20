// lowbit/formats/gemm_checks.hpp
// Argument checks shared by the CPU (cpu/dequant_gemm.hpp, cpu/gemm.hpp) and
// CUDA (cuda/dequant_gemm.cuh) matrix products, so both sides reject the same
// inputs with the same messages: dense operands (rank, float dtype,
// contiguity), 2-D shapes, a product's pair of activations, the quantized
// weight (valid layout holding n * k elements) and its forward's bias, and
// the weight gradient's operands. The row gathers (cpu/dequantize_rows.hpp,
// cuda/dequantize_rows.cuh) share check_row_gather the same way. `side` says
// which memory the calling implementation can read; each message names the
// function and the argument.
#pragma once

#include <cstdint>
#include <string>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "quantized_view.hpp"

namespace lowbit {
namespace gemm_checks {

enum class side { host, device };

inline std::string fn_arg(const char* fn, const char* arg) { return std::string(fn) + ": " + arg; }

inline void require_reachable(const device& d, side s, const std::string& what) {
  if (s == side::host)
    require(d.host_accessible(), errc::invalid_argument, what + " is on device memory; the CPU path needs host memory");
  else
    require(d.device_accessible(), errc::invalid_argument,
            what + " is in host memory; the CUDA path needs device or managed memory");
}

inline void check_dense(const tensor_view& v, const char* fn, const char* name, int ndim, side s) {
  const std::string w = fn_arg(fn, name);
  require(v.ndim == ndim, errc::invalid_argument,
          w + " must be " + std::to_string(ndim) + "-D, got shape " + v.shape_string());
  require(v.type == dtype::f32 || v.type == dtype::bf16 || v.type == dtype::f16, errc::invalid_argument,
          w + " must be float32, bfloat16 or float16, got " + dtype_name(v.type));
  require_reachable(v.dev, s, w);
  require_contiguous(v, w.c_str());
}

inline void check_shape(const tensor_view& v, const char* fn, const char* name, int64_t rows, int64_t cols) {
  require(v.shape[0] == rows && v.shape[1] == cols, errc::invalid_argument,
          fn_arg(fn, name) + " has shape " + v.shape_string() + ", expected [" + std::to_string(rows) + ", " +
              std::to_string(cols) + "]");
}

// A product's two activations, dense 2-D floats with M rows each: `in`
// [M, in_cols], which it reads, and `out` [M, out_cols], which it writes
// (the forward's x and y, the input gradient's dy and dx). Returns M.
inline int64_t check_activations(const tensor_view& in, const char* in_name, int64_t in_cols, const tensor_view& out,
                                 const char* out_name, int64_t out_cols, const char* fn, side s) {
  check_dense(in, fn, in_name, 2, s);
  check_dense(out, fn, out_name, 2, s);
  const int64_t M = in.shape[0];
  check_shape(in, fn, in_name, M, in_cols);
  check_shape(out, fn, out_name, M, out_cols);
  return M;
}

// The quantized forward's optional bias (nullptr: none): 1-D [n], float32,
// bfloat16, float16 or float64, contiguous.
inline void check_bias(const tensor_view* bias, const char* fn, int64_t n, side s) {
  if (!bias) return;
  require(bias->ndim == 1 && bias->shape[0] == n, errc::invalid_argument,
          fn_arg(fn, "bias") + " has shape " + bias->shape_string() + ", expected [" + std::to_string(n) + "]");
  require(bias->type == dtype::f32 || bias->type == dtype::bf16 || bias->type == dtype::f16 ||
              bias->type == dtype::f64,
          errc::invalid_argument,
          fn_arg(fn, "bias") + " must be float32, bfloat16, float16 or float64, got " + dtype_name(bias->type));
  require_reachable(bias->dev, s, fn_arg(fn, "bias"));
  require_contiguous(*bias, fn_arg(fn, "bias").c_str());
}

inline void check_weight(const quantized_view& w, const char* fn, int64_t n, int64_t k, side s) {
  require(n >= 0 && k >= 0, errc::invalid_argument,
          std::string(fn) + ": n and k must be >= 0, got n = " + std::to_string(n) + ", k = " + std::to_string(k));
  w.validate((std::string(fn) + ": w").c_str());
  require_reachable(w.dev, s, fn_arg(fn, "w"));
  // n <= layout.n / k first, so that n * k cannot overflow
  require((k == 0 || n <= w.layout.n / k) && w.layout.n == n * k, errc::invalid_argument,
          fn_arg(fn, "w") + " holds " + std::to_string(w.layout.n) + " elements, expected n * k = " +
              std::to_string(n) + " * " + std::to_string(k));
}

// The weight gradient dW[N, K] = dY[M, N]^T X[M, K]: dy, x and dw dense 2-D
// operands, dw float32 or bfloat16, shapes agreeing. Returns {M, N, K}.
struct weight_grad_dims {
  int64_t M, N, K;
};
inline weight_grad_dims check_weight_grad(const tensor_view& dy, const tensor_view& x, const tensor_view& dw,
                                          const char* fn, side s) {
  check_dense(dy, fn, "dy", 2, s);
  check_dense(x, fn, "x", 2, s);
  check_dense(dw, fn, "dw", 2, s);
  require(dw.type == dtype::f32 || dw.type == dtype::bf16, errc::invalid_argument,
          fn_arg(fn, "dw") + " must be float32 or bfloat16, got " + dtype_name(dw.type));
  const weight_grad_dims d{dy.shape[0], dy.shape[1], x.shape[1]};
  check_shape(x, fn, "x", d.M, d.K);
  check_shape(dw, fn, "dw", d.N, d.K);
  return d;
}

// A row gather from w (a rows x cols row-major matrix): rows_idx holds
// `count` indices (their values are checked by the gather itself), out is a
// contiguous [count, cols] float32 / bfloat16 / float16 tensor.
inline void check_row_gather(const quantized_view& w, const char* fn, int64_t rows, int64_t cols,
                             const int32_t* rows_idx, int64_t count, const tensor_view& out, side s) {
  require(rows >= 0 && cols >= 0, errc::invalid_argument,
          std::string(fn) + ": rows and cols must be >= 0, got rows = " + std::to_string(rows) +
              ", cols = " + std::to_string(cols));
  w.validate((std::string(fn) + ": w").c_str());
  require_reachable(w.dev, s, fn_arg(fn, "w"));
  // rows <= layout.n / cols first, so that rows * cols cannot overflow
  require((cols == 0 || rows <= w.layout.n / cols) && w.layout.n == rows * cols, errc::invalid_argument,
          fn_arg(fn, "w") + " holds " + std::to_string(w.layout.n) + " elements, expected rows * cols = " +
              std::to_string(rows) + " * " + std::to_string(cols));
  require(count >= 0, errc::invalid_argument, fn_arg(fn, "count") + " must be >= 0, got " + std::to_string(count));
  require(rows_idx != nullptr || count == 0, errc::invalid_argument,
          fn_arg(fn, "rows_idx") + " is null but count is " + std::to_string(count));
  check_dense(out, fn, "out", 2, s);
  check_shape(out, fn, "out", count, cols);
}

}  // namespace gemm_checks
}  // namespace lowbit
