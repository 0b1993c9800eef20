// lowbit/cpu/gemm.hpp
// Dense-weight twins of the products in dequant_gemm.hpp, for layers whose
// weight W (row-major N x K) is stored as float32, bfloat16 or float16
// rather than in a blockwise format: the forward Y = X W^T (+ bias) and the
// input gradient dX = dY W. They run on the same cache-blocked fp32 kernel
// and tiling (each tile of W is converted to float while it is packed), so a
// trainer calls one family of functions whatever its weights are stored in,
// and the sum order (k = 0..K-1, one fp32 accumulator per output) is the same
// as dequant_gemm's. The weight gradient dW = dY^T X is gemm_weight_grad in
// dequant_gemm.hpp, which never involves W.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "dequant_gemm.hpp"

namespace lowbit {
namespace cpu {

// Y[M, N] = X[M, K] W^T (+ bias[N]). x: [M, K], w: [N, K], y: [M, N]; each
// float32 / bfloat16 / float16, contiguous, host memory; bias 1-D [N] float32
// or nullptr. fp32 products and sums, bias added last, one rounding into y.
inline void gemm_forward(const tensor_view& x, const tensor_view& w, const tensor_view* bias, const tensor_view& y) {
  using namespace gemm_detail;
  const char* fn = "gemm_forward";
  check_dense(w, fn, "w", 2);
  const int64_t n = w.shape[0], k = w.shape[1];
  const int64_t M = check_activations(x, "x", k, y, "y", n, fn);
  const float* bptr = nullptr;
  if (bias) {
    require(bias->ndim == 1 && bias->shape[0] == n && bias->type == dtype::f32, errc::invalid_argument,
            fn_arg(fn, "bias") + " must be float32 of shape [" + std::to_string(n) + "], got " +
                dtype_name(bias->type) + " " + bias->shape_string());
    require(bias->dev.host_accessible(), errc::invalid_argument, fn_arg(fn, "bias") + " is on device memory");
    require_contiguous(*bias, fn_arg(fn, "bias").c_str());
    bptr = static_cast<const float*>(bias->data);
  }
  if (M == 0 || n == 0) return;
  std::vector<float> x_storage;
  const float* xf = as_float(x, x_storage);
  dispatch_float_dtype(w.type, "gemm_forward: w", [&](auto wt) {
    using TW = decltype(wt);
    const TW* wp = static_cast<const TW*>(w.data);
    // B[kk][j] = W[j][kk]: row j of W becomes lane j % nr of its panel.
    auto pack = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
      for (int64_t j = 0; j < plen; ++j) {
        float* dst = buf + (j / nr) * rlen * nr + (j % nr);
        const TW* src = wp + (p0 + j) * k + r0;
        for (int64_t r = 0; r < rlen; ++r) dst[r * nr] = to_float(src[r]);
      }
      zero_pad(buf, rlen, plen);
    };
    dispatch_float_dtype(y.type, "gemm_forward: y", [&](auto yt) {
      using TY = decltype(yt);
      blocked_gemm(M, n, k, dense_a{xf, k}, pack, forward_store(static_cast<TY*>(y.data), n, bptr));
    });
  });
}

// dX[M, K] = dY[M, N] W. dy: [M, N], w: [N, K], dx: [M, K]; float32 /
// bfloat16 / float16, contiguous, host memory. fp32 products and sums over
// n = 0..N-1, one rounding into dx's dtype.
inline void gemm_backward_input(const tensor_view& dy, const tensor_view& w, const tensor_view& dx) {
  using namespace gemm_detail;
  const char* fn = "gemm_backward_input";
  check_dense(w, fn, "w", 2);
  const int64_t n = w.shape[0], k = w.shape[1];
  const int64_t M = check_activations(dy, "dy", n, dx, "dx", k, fn);
  if (M == 0 || k == 0) return;
  std::vector<float> dy_storage;
  const float* dyf = as_float(dy, dy_storage);
  dispatch_float_dtype(w.type, "gemm_backward_input: w", [&](auto wt) {
    using TW = decltype(wt);
    const TW* wp = static_cast<const TW*>(w.data);
    // B[nn][kk] = W[nn][kk]: W is read in its stored order.
    auto pack = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
      for (int64_t r = 0; r < rlen; ++r) {
        const TW* src = wp + (r0 + r) * k + p0;
        float* row = buf + r * nr;
        for (int64_t j = 0; j < plen; ++j) row[(j / nr) * rlen * nr + (j % nr)] = to_float(src[j]);
      }
      zero_pad(buf, rlen, plen);
    };
    dispatch_float_dtype(dx.type, "gemm_backward_input: dx", [&](auto xt) {
      using TX = decltype(xt);
      // a narrow float32 W is B itself, read where it lies (no tile copies)
      const auto store = matrix_store(static_cast<TX*>(dx.data), k);
      if constexpr (std::is_same<TW, float>::value) {
        if (k <= in_place_max_ld) return blocked_gemm(M, k, n, dense_a{dyf, n}, dense_b{wp, k}, store);
      }
      blocked_gemm(M, k, n, dense_a{dyf, n}, pack, store);
    });
  });
}

}  // namespace cpu
}  // namespace lowbit
