// lowbit/cpu/quantize.hpp
// Multithreaded CPU quantize / dequantize for every format, scale kind and
// float dtype. Each block is processed by the shared functions of
// formats/block_codec.hpp and formats/nested_scales.hpp, the same ones the
// CUDA kernels call (quantize through their vectorizing form in
// cpu/vector_codec.hpp, which chooses the same codes), so both produce
// identical codes and scales.
//
// Non-finite input: quantize throws lowbit::error(errc::non_finite) naming
// the first offending block; the destination's contents are then
// unspecified (the source is never modified).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/block_codec.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/nested_scales.hpp"
#include "../formats/quantized_view.hpp"
#include "parallel.hpp"
#include "vector_codec.hpp"

namespace lowbit {
namespace cpu {

namespace detail {

inline void check_host_pair(const tensor_view& dense, const quantized_view& q, const char* dense_name) {
  require_contiguous(dense, dense_name);
  q.validate("quantized tensor");
  require(dense.dev.host_accessible(), errc::invalid_argument,
          std::string(dense_name) + " is on device memory; the CPU path needs host memory");
  require(q.dev.host_accessible(), errc::invalid_argument,
          "quantized tensor is on device memory; the CPU path needs host memory");
  require(dense.numel() == q.layout.n, errc::invalid_argument,
          std::string(dense_name) + " has " + std::to_string(dense.numel()) + " elements but the quantized layout has " +
              std::to_string(q.layout.n));
}

inline int64_t block_grain(int block_size) { return std::max<int64_t>(1, 32768 / block_size); }

template <format F, class T>
void quantize_blocks(const T* x, const blockwise_layout& l, uint8_t* codes, float* absmax) {
  const dynamic_search& search = dynamic_search_for(F);
  std::atomic<int64_t> first_bad{-1};
  parallel_for(l.n_blocks(), block_grain(l.block_size), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * l.block_size;
      const int64_t count = std::min<int64_t>(l.block_size, l.n - start);
      const float am = vector_block_absmax(x + start, count);
      absmax[b] = am;
      if (!is_finite_scale(am)) {
        int64_t expected = -1;
        first_bad.compare_exchange_strong(expected, b);
        continue;
      }
      vector_encode_block<F>(x + start, count, am, search, codes + (is_4bit(F) ? start / 2 : start));
    }
  });
  if (first_bad.load() >= 0) {
    const int64_t b = first_bad.load();
    throw error(errc::non_finite, "quantize: input contains NaN or infinity in block " + std::to_string(b) +
                                      " (elements " + std::to_string(b * l.block_size) + ".." +
                                      std::to_string(std::min<int64_t>(l.n, (b + 1) * l.block_size) - 1) + ")");
  }
}

}  // namespace detail

// Double-quantizes the float32 block scales `absmax` (n_blocks of them) into
// q's absmax_codes, nested_absmax and nested_offset (q.layout.nested).
inline void quantize_nested_scales(const float* absmax, const quantized_view& q) {
  const blockwise_layout& l = q.layout;
  uint8_t* absmax_codes = q.absmax_codes;
  float* nested_absmax = q.nested_absmax;
  float* nested_offset = q.nested_offset;
  const float offset = deterministic_mean(absmax, l.n_blocks());
  *nested_offset = offset;
  const dynamic_search& search = dynamic_search_for(format::dynamic8);
  const int64_t nb = l.n_blocks();
  parallel_for(l.n_nested_blocks(), 64, [&](int64_t c0, int64_t c1) {
    float centered[nested_block_size];
    for (int64_t c = c0; c < c1; ++c) {
      // encode_nested_block(absmax + start, count, offset, signed map, ...)
      // in cpu/vector_codec.hpp's loops: the same codes and nested absmax
      const int64_t start = c * nested_block_size;
      const int64_t count = std::min<int64_t>(nested_block_size, nb - start);
      for (int64_t i = 0; i < count; ++i) centered[i] = nested_centered(absmax[start + i], offset);
      const float m = vector_block_absmax(centered, count);
      nested_absmax[c] = m;
      vector_encode_block<format::dynamic8>(centered, count, m, search, absmax_codes + start);
    }
  });
}

// Quantizes `input` (float32 / bfloat16 / float16, contiguous, host memory,
// input.numel() == out.layout.n) into `out`.
inline void quantize(const tensor_view& input, const quantized_view& out) {
  detail::check_host_pair(input, out, "quantize input");
  const blockwise_layout& l = out.layout;
  if (l.n == 0) {
    if (l.nested) *out.nested_offset = 0.0f;
    return;
  }
  std::vector<float> tmp;
  float* absmax = out.absmax;
  if (l.nested) {
    tmp.resize(size_t(l.n_blocks()));
    absmax = tmp.data();
  }
  dispatch_float_dtype(input.type, "quantize input", [&](auto t) {
    using T = decltype(t);
    dispatch_format(l.fmt, [&](auto tag) {
      detail::quantize_blocks<decltype(tag)::value>(static_cast<const T*>(input.data), l, out.codes, absmax);
    });
  });
  if (l.nested) quantize_nested_scales(absmax, out);
}

// Block b's decoded scale.
inline float block_scale(const quantized_view& q, int64_t b) {
  if (!q.layout.nested) return q.absmax[b];
  return decode_nested_scale(q.absmax_codes[b], q.nested_absmax[b / nested_block_size], *q.nested_offset,
                             signed_dynamic_map().data());
}

// Dequantizes `in` into `output` (float32 / bfloat16 / float16, contiguous,
// host memory, output.numel() == in.layout.n).
inline void dequantize(const quantized_view& in, const tensor_view& output) {
  detail::check_host_pair(output, in, "dequantize output");
  const blockwise_layout& l = in.layout;
  if (l.n == 0) return;
  const code_table table = make_code_table(l.fmt);
  dispatch_float_dtype(output.type, "dequantize output", [&](auto t) {
    using T = decltype(t);
    T* y = static_cast<T*>(output.data);
    dispatch_format(l.fmt, [&](auto tag) {
      constexpr format F = decltype(tag)::value;
      parallel_for(l.n_blocks(), detail::block_grain(l.block_size), [&](int64_t b0, int64_t b1) {
        // Locals, and the float32-scale loop apart from the nested one: a
        // block of 64 is decoded in about 40 cycles, and with both paths in
        // one loop its bookkeeping lived on the stack (measured: 10 to 15 %
        // of the 8-bit formats' time).
        const int64_t block_size = l.block_size, n = l.n;
        const uint8_t* codes = in.codes;
        const float* values = table.value;
        const auto decode = [&](int64_t b, float scale) {
          const int64_t start = b * block_size;
          const int64_t count = std::min<int64_t>(block_size, n - start);
          vector_decode_block<F>(codes + (is_4bit(F) ? start / 2 : start), count, scale, values, y + start);
        };
        if (!l.nested) {
          const float* absmax = in.absmax;
          for (int64_t b = b0; b < b1; ++b) decode(b, absmax[b]);
        } else {
          for (int64_t b = b0; b < b1; ++b) decode(b, block_scale(in, b));
        }
      });
    });
  });
}

// Dequantizes elements [first, first + count) of `in` into out[0, count) as
// float32, bit-identical to the same elements of dequantize's output. For
// gathers such as an embedding lookup, which need a few rows of a large
// quantized matrix without decoding all of it. Single-threaded (rows are
// small); `in` must be in host memory.
inline void dequantize_range(const quantized_view& in, int64_t first, int64_t count, float* out) {
  in.validate("dequantize_range: input");
  require(in.dev.host_accessible(), errc::invalid_argument,
          "dequantize_range: input is on device memory; the CPU path needs host memory");
  require(first >= 0 && count >= 0 && first <= in.layout.n - count, errc::invalid_argument,
          "dequantize_range: range [" + std::to_string(first) + ", " + std::to_string(first + count) +
              ") is outside the tensor's " + std::to_string(in.layout.n) + " elements");
  require(out != nullptr || count == 0, errc::invalid_argument, "dequantize_range: null output pointer");
  if (count == 0) return;
  const code_table table = make_code_table(in.layout.fmt);
  const int64_t bs = in.layout.block_size;
  const bool four = is_4bit(in.layout.fmt);
  for (int64_t i = first, end = first + count; i < end;) {
    const int64_t b = i / bs, seg_end = std::min(end, (b + 1) * bs);
    const float s = block_scale(in, b);
    for (; i < seg_end; ++i) {
      const int c = four ? ((i & 1) ? (in.codes[i >> 1] & 15) : (in.codes[i >> 1] >> 4)) : in.codes[i];
      out[i - first] = mul_rn(table.value[c], s);
    }
  }
}

}  // namespace cpu
}  // namespace lowbit
