// lowbit/cpu/dequant_gemm.hpp
// CPU matrix products with a blockwise-quantized weight W (a quantized_view
// holding a row-major N x K matrix, any format, float32 or nested scales):
// the forward Y = X W^T (+ bias), the input gradient dX = dY W, and the plain
// weight gradient dW = dY^T X. W is never dequantized as a whole: each task
// decodes one small tile of it (with the same code table and block scales as
// cpu::dequantize, so the weights used are bit-identical to dequantize's
// float32 output) into a packed float buffer that the cache-blocked fp32
// product (cpu/blocked_gemm.hpp) consumes. Both W products read
// the same packed codes; the backward pass only changes which way the tile
// is packed. Work is split over output columns (and rows of X when there
// are few columns) with cpu::parallel_for; every output element is summed
// in one fixed order (k = 0, 1, ..., K-1 in fp32), so results do not depend
// on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/gemm_checks.hpp"
#include "../formats/quantized_view.hpp"
#include "blocked_gemm.hpp"
#include "parallel.hpp"
#include "quantize.hpp"
#include "simd_decode4.hpp"

namespace lowbit {
namespace cpu {

namespace gemm_detail {

// Calls put(j, value) for the decoded elements i0 .. i0+count-1 of w, value
// = table[code] * scale(block) exactly as cpu::dequantize computes it. Runs
// are cut at block boundaries so each block's scale is decoded once per run.
// Vector: 4-bit chunks through cpu/simd_decode4.hpp and a buffer, which pays
// where put stores contiguously (the backward's tiles: 1.3 to 1.8x there)
// and not where it scatters (the forward's transposed panels: 17 % slower
// at M = 1; measured, bench_dequant_gemm_cpu, 2026-11-28).
template <bool Is4, bool Vector = false, class Put>
inline void decode_run(const quantized_view& w, const float* table, int64_t i0, int64_t count, Put&& put) {
  const int64_t bs = w.layout.block_size;
  const uint8_t* codes = w.codes;
  int64_t i = i0;
  const int64_t end = i0 + count;
  while (i < end) {
    const int64_t b = i / bs;
    const int64_t seg_end = std::min(end, (b + 1) * bs);
    const float s = block_scale(w, b);
    if constexpr (Is4 && Vector && simd_decode4_available) {
      // whole 32-element chunks of an even-aligned segment by vector
      // permutes (cpu/simd_decode4.hpp) into a buffer, then put; the same
      // products (the rest falls through to the loop below)
      if (!(i & 1) && seg_end - i >= 32) {
        alignas(64) float buf[4096];  // a segment lies in one block (<= 4096 elements)
        const int64_t done = simd_decode4_prefix(codes + (i >> 1), seg_end - i, s, table, buf);
        for (int64_t j = 0; j < done; ++j) put(i + j - i0, buf[j]);
        i += done;
      }
    }
    if constexpr (Is4) {
      // byte by byte (high nibble first), without a per-element choice of
      // nibble; a run may start or end mid-byte
      if ((i & 1) && i < seg_end) {
        put(i - i0, mul_rn(table[codes[i >> 1] & 15], s));
        ++i;
      }
      for (; i + 1 < seg_end; i += 2) {
        const uint8_t byte = codes[i >> 1];
        put(i - i0, mul_rn(table[byte >> 4], s));
        put(i + 1 - i0, mul_rn(table[byte & 15], s));
      }
      if (i < seg_end) {
        put(i - i0, mul_rn(table[codes[i >> 1] >> 4], s));
        ++i;
      }
    } else {
      for (; i < seg_end; ++i) put(i - i0, mul_rn(table[codes[i]], s));
    }
  }
}

// Stores for blocked_gemm: finished fp32 output rows rounded once into the
// destination dtype. forward_store adds bias[column] last (bias may be null);
// matrix_store writes plainly; accumulating_store adds the destination's
// old value when `accumulate` is set (a weight gradient summed over
// micro-batches). `ld` is the destination's row stride.
//
// blocked_gemm stores one panel (nr columns) of a micro-tile at a time; a
// whole panel's row goes through a loop of constant length, which the
// compiler turns into a few vector moves (a run-time length made it a call
// to memcpy per 128-byte row: 7 % of a 2048 x 128 x 128 forward).
template <class Op>
inline void for_row(int64_t plen, Op&& op) {
  if (plen == nr) {
    for (int j = 0; j < nr; ++j) op(j);
  } else {
    for (int64_t j = 0; j < plen; ++j) op(j);
  }
}
template <class TY>
auto forward_store(TY* y, int64_t ld, const float* bias) {
  return [=](int64_t m0, int64_t mlen, int64_t p0, int64_t plen, const float* c, int64_t ldc) {
    for (int64_t m = 0; m < mlen; ++m) {
      TY* LOWBIT_RESTRICT row = y + (m0 + m) * ld + p0;
      const float* LOWBIT_RESTRICT crow = c + m * ldc;
      if (bias) {
        const float* b = bias + p0;
        for_row(plen, [&](int64_t j) { row[j] = from_float<TY>(add_rn(crow[j], b[j])); });
      } else {
        for_row(plen, [&](int64_t j) { row[j] = from_float<TY>(crow[j]); });
      }
    }
  };
}
template <class TY>
auto matrix_store(TY* y, int64_t ld) {
  return forward_store<TY>(y, ld, nullptr);
}
template <class TY>
auto accumulating_store(TY* y, int64_t ld, bool accumulate) {
  return [=](int64_t m0, int64_t mlen, int64_t p0, int64_t plen, const float* c, int64_t ldc) {
    for (int64_t m = 0; m < mlen; ++m) {
      TY* LOWBIT_RESTRICT row = y + (m0 + m) * ld + p0;
      const float* LOWBIT_RESTRICT crow = c + m * ldc;
      if (accumulate) {
        for_row(plen, [&](int64_t j) { row[j] = from_float<TY>(add_rn(crow[j], to_float(row[j]))); });
      } else {
        for_row(plen, [&](int64_t j) { row[j] = from_float<TY>(crow[j]); });
      }
    }
  };
}

// A dense operand as a contiguous float matrix: the data itself for float32,
// else a converted copy in `storage` (activations only, never W).
inline const float* as_float(const tensor_view& v, std::vector<float>& storage) {
  if (v.type == dtype::f32) return static_cast<const float*>(v.data);
  const int64_t n = v.numel();
  storage.resize(size_t(n));
  float* out = storage.data();
  dispatch_float_dtype(v.type, "operand", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(v.data);
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = to_float(in[i]);
    });
  });
  return out;
}

using gemm_checks::check_shape;
using gemm_checks::fn_arg;
inline void check_dense(const tensor_view& v, const char* fn, const char* name, int ndim) {
  gemm_checks::check_dense(v, fn, name, ndim, gemm_checks::side::host);
}
inline void check_weight(const quantized_view& w, const char* fn, int64_t n, int64_t k) {
  gemm_checks::check_weight(w, fn, n, k, gemm_checks::side::host);
}
inline int64_t check_activations(const tensor_view& in, const char* in_name, int64_t in_cols, const tensor_view& out,
                                 const char* out_name, int64_t out_cols, const char* fn) {
  return gemm_checks::check_activations(in, in_name, in_cols, out, out_name, out_cols, fn, gemm_checks::side::host);
}

}  // namespace gemm_detail

// Y[M, N] = X[M, K] W^T (+ bias[N]). x: [M, k], y: [M, n], both float32 /
// bfloat16 / float16, contiguous, host memory; w: quantized n x k row-major
// (w.layout.n == n * k); bias: 1-D [n] float32 / bfloat16 / float16 /
// float64 or nullptr. Products and sums in fp32 (bias added last), one
// round-to-nearest into y's dtype. y must not overlap x or bias.
inline void dequant_gemm_forward(const tensor_view& x, const quantized_view& w, int64_t n, int64_t k,
                                 const tensor_view* bias, const tensor_view& y) {
  using namespace gemm_detail;
  const char* fn = "dequant_gemm_forward";
  check_weight(w, fn, n, k);
  const int64_t M = check_activations(x, "x", k, y, "y", n, fn);
  gemm_checks::check_bias(bias, fn, n, gemm_checks::side::host);
  std::vector<float> bias_f;
  if (bias) {
    bias_f.resize(size_t(n));
    if (bias->type == dtype::f64) {
      for (int64_t j = 0; j < n; ++j) bias_f[size_t(j)] = float(static_cast<const double*>(bias->data)[j]);
    } else {
      dispatch_float_dtype(bias->type, "dequant_gemm_forward: bias", [&](auto t) {
        using T = decltype(t);
        for (int64_t j = 0; j < n; ++j) bias_f[size_t(j)] = to_float(static_cast<const T*>(bias->data)[j]);
      });
    }
  }
  if (M == 0 || n == 0) return;
  std::vector<float> x_storage;
  const float* xf = as_float(x, x_storage);
  const code_table table = make_code_table(w.layout.fmt);
  const float* bptr = bias ? bias_f.data() : nullptr;
  dispatch_float_dtype(y.type, "dequant_gemm_forward: y", [&](auto yt) {
    using TY = decltype(yt);
    const auto store = forward_store(static_cast<TY*>(y.data), n, bptr);
    auto run = [&](auto is4) {
      constexpr bool Is4 = decltype(is4)::value;
      // B[kk][j] = W[j][kk]: row j of W (contiguous in k) becomes lane j % nr
      // of its panel, so the kernel reads nr consecutive output columns.
      auto pack = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
        for (int64_t j = 0; j < plen; ++j) {
          float* dst = buf + (j / nr) * rlen * nr + (j % nr);
          decode_run<Is4>(w, table.value, (p0 + j) * k + r0, rlen, [&](int64_t r, float v) { dst[r * nr] = v; });
        }
        zero_pad(buf, rlen, plen);
      };
      blocked_gemm(M, n, k, dense_a{xf, k}, pack, store);
    };
    if (is_4bit(w.layout.fmt)) run(std::true_type{});
    else run(std::false_type{});
  });
}

// dX[M, K] = dY[M, N] W. dy: [M, n], dx: [M, k], float32 / bfloat16 /
// float16, contiguous, host memory; w as in dequant_gemm_forward (the same
// packed codes; tiles are decoded, never a transposed or full copy). fp32
// products and sums over n = 0..N-1, one rounding into dx's dtype.
inline void dequant_gemm_backward_input(const tensor_view& dy, const quantized_view& w, int64_t n, int64_t k,
                                        const tensor_view& dx) {
  using namespace gemm_detail;
  const char* fn = "dequant_gemm_backward_input";
  check_weight(w, fn, n, k);
  const int64_t M = check_activations(dy, "dy", n, dx, "dx", k, fn);
  if (M == 0 || k == 0) return;
  std::vector<float> dy_storage;
  const float* dyf = as_float(dy, dy_storage);
  const code_table table = make_code_table(w.layout.fmt);
  dispatch_float_dtype(dx.type, "dequant_gemm_backward_input: dx", [&](auto xt) {
    using TX = decltype(xt);
    const auto store = matrix_store(static_cast<TX*>(dx.data), k);
    auto run = [&](auto is4) {
      constexpr bool Is4 = decltype(is4)::value;
      // B[nn][kk] = W[nn][kk]: a run of row nn fills row nn of consecutive
      // panels, so W is read in its stored order.
      auto pack = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
        for (int64_t r = 0; r < rlen; ++r) {
          float* row = buf + r * nr;
          decode_run<Is4, true>(w, table.value, (r0 + r) * k + p0, plen,
                          [&](int64_t j, float v) { row[(j / nr) * rlen * nr + (j % nr)] = v; });
        }
        zero_pad(buf, rlen, plen);
      };
      blocked_gemm(M, k, n, dense_a{dyf, n}, pack, store);
    };
    if (is_4bit(w.layout.fmt)) run(std::true_type{});
    else run(std::false_type{});
  });
}

// dW[N, K] = dY[M, N]^T X[M, K] (accumulate: dW += dY^T X). dy and x:
// float32 / bfloat16 / float16; dw: float32 or bfloat16; all 2-D, contiguous,
// host memory. fp32 products and sums over m = 0..M-1 (the old dW, when
// accumulating, added last), one rounding into dw's dtype. dw must not
// overlap dy or x.
inline void gemm_weight_grad(const tensor_view& dy, const tensor_view& x, const tensor_view& dw, bool accumulate) {
  using namespace gemm_detail;
  const char* fn = "gemm_weight_grad";
  const gemm_checks::weight_grad_dims d = gemm_checks::check_weight_grad(dy, x, dw, fn, gemm_checks::side::host);
  const int64_t M = d.M, N = d.N, K = d.K;
  if (N == 0 || K == 0) return;
  // Narrow operands (N and K up to in_place_max_ld) are read where they lie:
  // A = dY^T is dY read by columns (columns_a), B = X panel by panel
  // (dense_b); packing them (dY^T once per call, X once per task: up to 4
  // times) was 8 % of a tiny LLaMA training step on the Intel Xeon VM.
  // Wider ones are packed: A a block of rows of dW (columns of dY) at a
  // time, a strided copy in dY's order converted to float on the way (so a
  // bfloat16 / float16 dY never gets a full float copy); B (X) tile by tile.
  const bool in_place = N <= in_place_max_ld && K <= in_place_max_ld;
  std::vector<float> dy_storage, x_storage;
  const float* dyf = in_place ? as_float(dy, dy_storage) : nullptr;
  const float* xf = as_float(x, x_storage);
  auto pack_a = [&](int64_t n0, int64_t rows, float* out) {
    dispatch_float_dtype(dy.type, "gemm_weight_grad: dy", [&](auto t) {
      using T = decltype(t);
      const T* in = static_cast<const T*>(dy.data) + n0;
      // a full block's width as a constant, so that each step is one
      // vector copy (the scalar loop was 1/4 of the packing's cost)
      if (rows == mr) {
        for (int64_t m = 0; m < M; ++m)
          for (int i = 0; i < mr; ++i) out[m * mr + i] = to_float(in[m * N + i]);
      } else {
        for (int64_t m = 0; m < M; ++m)
          for (int64_t i = 0; i < rows; ++i) out[m * rows + i] = to_float(in[m * N + i]);
      }
    });
  };
  // whole panels of nr consecutive floats of a row of X at a time (a plain
  // copy the compiler vectorizes), then the last, partial panel
  auto pack_b = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
    const int64_t full = plen / nr;
    for (int64_t r = 0; r < rlen; ++r) {
      const float* src = xf + (r0 + r) * K + p0;
      for (int64_t jp = 0; jp < full; ++jp) {
        float* LOWBIT_RESTRICT dst = buf + jp * rlen * nr + r * nr;
        const float* LOWBIT_RESTRICT from = src + jp * nr;
        for (int j = 0; j < nr; ++j) dst[j] = from[j];
      }
      for (int64_t j = full * nr; j < plen; ++j) buf[full * rlen * nr + r * nr + (j - full * nr)] = src[j];
    }
    zero_pad(buf, rlen, plen);
  };
  auto run = [&](auto wt) {
    using TW = decltype(wt);
    const auto store = accumulating_store(static_cast<TW*>(dw.data), K, accumulate);
    if (in_place) blocked_gemm(N, K, M, columns_a{dyf, N}, dense_b{xf, K}, store);
    else blocked_gemm(N, K, M, pack_a, pack_b, store);
  };
  if (dw.type == dtype::f32) run(float{});
  else run(bf16{});
}

}  // namespace cpu
}  // namespace lowbit
