// lowbit/cpu/dequantize_rows.hpp
// Row gather from a quantized matrix (an embedding lookup): out[i, :] is row
// rows_idx[i] of the row-major rows x cols matrix held by w, dequantized into
// float32 / bfloat16 / float16 without decoding the rest of w. Every value is
// bit-identical to the same element of cpu::dequantize's output (and so of
// cuda::dequantize_rows and cuda::dequantize): each block segment of a row is
// decoded by formats/block_codec.hpp's decode_block with the block's scale
// from cpu::block_scale (float32, or double-quantized through
// formats/nested_scales.hpp), i.e. value = mul_rn(table[code], scale) rounded
// once into the output dtype. Rows may start mid-block and, for 4-bit formats
// with odd cols, mid-byte; element offsets are 64-bit. All indices are
// checked before anything is written: an index outside [0, rows) throws
// lowbit::error(errc::invalid_argument) naming it and its position, and out
// is then untouched. Rows are decoded in parallel (cpu/parallel.hpp); the
// result does not depend on the thread count. w, rows_idx and out must be in
// host-accessible memory (rows_idx is a raw pointer and cannot be checked).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/block_codec.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/gemm_checks.hpp"
#include "../formats/quantized_view.hpp"
#include "parallel.hpp"
#include "quantize.hpp"

namespace lowbit {
namespace cpu {

namespace detail {

// Decodes elements [first, first + n) of q into y[0, n), block segment by
// block segment, bit-identical to dequantize's output for those elements.
template <format F, class T>
void decode_span(const quantized_view& q, const float* table, int64_t first, int64_t n, T* y) {
  const int64_t bs = q.layout.block_size;
  for (int64_t i = first, end = first + n; i < end;) {
    const int64_t b = i / bs, seg_end = std::min(end, (b + 1) * bs);
    const float s = block_scale(q, b);
    if constexpr (is_4bit(F)) {
      if (i & 1) {
        // A span starting mid-byte (only at a row start: block starts are
        // even): decode the whole byte and keep its second element (its
        // first belongs to the previous row but lies in the same block).
        T pair[2];
        decode_block<F>(q.codes + i / 2, 2, s, table, pair);
        y[i - first] = pair[1];
        ++i;
      }
      decode_block<F>(q.codes + i / 2, seg_end - i, s, table, y + (i - first));
    } else {
      decode_block<F>(q.codes + i, seg_end - i, s, table, y + (i - first));
    }
    i = seg_end;
  }
}

}  // namespace detail

// out[i, :] = row rows_idx[i] of w, dequantized, for i in [0, count).
// w: quantized_view of a row-major rows x cols matrix (w.layout.n == rows *
// cols), any format, float32 or nested scales, host memory. rows_idx: count
// int32 indices in [0, rows), repeats allowed. out: contiguous [count, cols]
// float32 / bfloat16 / float16 view in host memory, not overlapping w.
inline void dequantize_rows(const quantized_view& w, int64_t rows, int64_t cols, const int32_t* rows_idx,
                            int64_t count, const tensor_view& out) {
  const char* fn = "cpu::dequantize_rows";
  gemm_checks::check_row_gather(w, fn, rows, cols, rows_idx, count, out, gemm_checks::side::host);
  for (int64_t i = 0; i < count; ++i)
    require(rows_idx[i] >= 0 && rows_idx[i] < rows, errc::invalid_argument,
            std::string(fn) + ": rows_idx[" + std::to_string(i) + "] = " + std::to_string(rows_idx[i]) +
                " is out of range [0, " + std::to_string(rows) + ")");
  if (count == 0 || cols == 0) return;
  const code_table table = make_code_table(w.layout.fmt);
  dispatch_float_dtype(out.type, "cpu::dequantize_rows: out", [&](auto t) {
    using T = decltype(t);
    T* y = static_cast<T*>(out.data);
    dispatch_format(w.layout.fmt, [&](auto tag) {
      constexpr format F = decltype(tag)::value;
      parallel_for(count, std::max<int64_t>(1, 32768 / cols), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          detail::decode_span<F>(w, table.value, int64_t(rows_idx[r]) * cols, cols, y + r * cols);
      });
    });
  });
}

}  // namespace cpu
}  // namespace lowbit
