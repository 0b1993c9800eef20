// lowbit/cpu/vector_codec.hpp
// The CPU's form of a block's absmax and encoding (formats/block_codec.hpp),
// written as loops a compiler turns into vector code: the block absmax as an
// integer maximum of float bits, the block's values normalized into a small
// buffer, every code chosen in a separate loop (for the table-searched
// dynamic formats by the bucketed floor search of cpu/floor_index.hpp
// instead of an 8-step binary search per value), and the 4-bit codes packed
// in a last loop. The codes and scales are those of block_absmax and
// encode_block, the functions the CUDA kernels run, for every input
// (tests/cpu/test_vector_codec.cpp compares them value for value); only the
// shape of the loops differs, which is why cpu::quantize was 5 to 30 times
// slower than memory before it used this file.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "../core/dtype.hpp"
#include "../formats/block_codec.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/format.hpp"
#include "../formats/stochastic_rounding.hpp"
#include "floor_index.hpp"
#include "simd_decode4.hpp"

namespace lowbit {
namespace cpu {

// block_absmax(x, count): the largest |x[i]|, NaN when any element is NaN or
// infinite. Non-negative floats are ordered as their bit patterns, so the
// maximum of the magnitudes' bits is the bits of the largest magnitude, and
// it reaches infinity's bits exactly when an element is not finite. (A float
// maximum that keeps NaN does not vectorize without fast-math; this does.)
template <class T>
float vector_block_absmax(const T* x, int64_t count) {
  uint32_t top = 0;
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t magnitude = float_bits(to_float(x[i])) & 0x7FFFFFFFu;
    top = magnitude > top ? magnitude : top;
  }
  return top >= 0x7F800000u ? bits_float(0x7FC00000u) : bits_float(top);
}

// ulinear4_encode(x) with the ceiling taken by truncation, for |x| <= 2^20
// (callers pass block-normalized values, |x| <= 1 up to rounding): GCC does
// not vectorize ceilf under the default -ftrapping-math, nor float selects,
// but does a conversion and integer selects. ceil(t) = trunc(t) + (trunc(t)
// < t) for every t (for negative t trunc is the ceiling already).
inline uint8_t ulinear4_encode_by_truncation(float x) {
  const float t = mul_rn(x, 16.0f) - 0.5f;
  const int whole = int(t);
  const int q = whole + (float(whole) < t) - 1;
  return uint8_t(q > 15 ? 15 : (q < 0 ? 0 : q));
}

// What encoding a dynamic format needs besides its table: the bucketed floor
// search over the table (whose entries are sorted, so an entry's index is
// its code). `usable` is false where the search cannot stand in for the
// binary search; dynamic_encode is used then.
struct dynamic_search {
  const float* table = nullptr;
  const sorted_codebook* sorted = nullptr;
  const floor_index_table* floor = nullptr;
  bool usable = false;
};

// The search for format f, built once per format (nullptr-table for formats
// without a dynamic table).
inline const dynamic_search& dynamic_search_for(format f) {
  static dynamic_search searches[format_count];
  static sorted_codebook sorted[format_count];
  static std::once_flag once[format_count];
  const int i = int(f);
  std::call_once(once[i], [&] {
    dynamic_search& s = searches[i];
    s.table = dynamic_table(f);
    if (!s.table) return;
    sorted[i] = make_sorted_codebook(f);
    const int entries = is_4bit(f) ? 16 : 256;
    // the floor index equals the table index only if the table is its own
    // sorted codebook: every entry present, in order, none merged
    bool identity = sorted[i].size == entries;
    for (int c = 0; identity && c < entries; ++c) identity = sorted[i].code[c] == c;
    s.sorted = &sorted[i];
    s.floor = &floor_index_for(f, sorted[i]);
    s.usable = identity && s.floor->usable;
  });
  return searches[i];
}

// encode_block<F>(x, count, absmax, dyn, codes), chunk by chunk, where
// absmax is the block's (vector_block_absmax). `search` is
// dynamic_search_for(F) for the dynamic formats and ignored otherwise.
template <format F, class T>
void vector_encode_block(const T* x, int64_t count, float absmax, const dynamic_search& search, uint8_t* codes) {
  if (!is_finite_scale(absmax)) {
    // a block holding NaN or infinity: the bucketed search is only exact
    // for finite values, so leave such a block to the element functions
    encode_block<F>(x, count, absmax, search.table, codes);
    return;
  }
  constexpr int chunk = 256;  // even, so a chunk's 4-bit codes fill whole bytes
  const float inv = inverse_scale(absmax);
  float u[chunk];
  uint8_t c[chunk];
  int lo[chunk];
  for (int64_t s = 0; s < count; s += chunk) {
    const int len = int(std::min<int64_t>(chunk, count - s));
    for (int k = 0; k < len; ++k) u[k] = mul_rn(to_float(x[s + k]), inv);
    if constexpr (uses_dynamic_table(F)) {
      constexpr int bits = is_4bit(F) ? 4 : 8;
      if (search.usable) {
        // the floor index, then dynamic_encode's nearest choice (ties down)
        floor_indices(*search.floor, *search.sorted, u, len, lo);
        const float* t = search.table;
        for (int k = 0; k < len; ++k) c[k] = dynamic_nearest_from_floor<bits>(lo[k], u[k], t);
      } else {
        for (int k = 0; k < len; ++k) c[k] = dynamic_encode<bits>(u[k], search.table);
      }
    } else if constexpr (F == format::ulinear4) {
      for (int k = 0; k < len; ++k) c[k] = ulinear4_encode_by_truncation(u[k]);
    } else {
      for (int k = 0; k < len; ++k) c[k] = encode_normalized<F>(u[k], nullptr);
    }
    if constexpr (is_4bit(F)) {
      uint8_t* out = codes + s / 2;
      const int pairs = len / 2;
      for (int j = 0; j < pairs; ++j) out[j] = uint8_t((c[2 * j] << 4) | c[2 * j + 1]);
      if (len & 1) out[pairs] = uint8_t((c[len - 1] << 4) | zero_code(F));
    } else {
      std::memcpy(codes + s, c, size_t(len));
    }
  }
}

// decode_block<F>(codes, count, scale, table, out), the same values. The
// table lookups stay scalar loops: a vectorized lookup is a gather, which on
// AMD CPUs made dequantize 2.6 times slower (measured). With AVX2, int8's
// values are computed instead of looked up (int8_value, the expression that
// filled the table, so the same bits), which vectorizes without a gather;
// without it the division runs scalar and the lookup is faster (measured on
// the x86-64 baseline target: 1.5 times). 4-bit codes: with AVX-512 or
// AVX2 + F16C, whole chunks of 32 through the table held in registers and
// looked up by vector permutes (cpu/simd_decode4.hpp), not a gather; else
// byte by byte (decode_block's loop).
template <format F, class T>
void vector_decode_block(const uint8_t* codes, int64_t count, float scale, const float* table, T* out) {
#if defined(__AVX2__)
  constexpr bool compute_int8 = true;
#else
  constexpr bool compute_int8 = false;
#endif
  if constexpr (F == format::int8 && compute_int8) {
    for (int64_t k = 0; k < count; ++k) out[k] = from_float<T>(mul_rn(int8_value(codes[k]), scale));
  } else if constexpr (is_4bit(F) && simd_decode4_available) {
    // whole 32-element chunks by vector permutes (cpu/simd_decode4.hpp), the rest here
    const int64_t done = simd_decode4_prefix(codes, count, scale, table, out);
    decode_block<F>(codes + done / 2, count - done, scale, table, out + done);
  } else {
    decode_block<F>(codes, count, scale, table, out);
  }
}

}  // namespace cpu
}  // namespace lowbit
