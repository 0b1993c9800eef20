// lowbit/formats/block_codec.hpp
// The per-element and per-block quantization math shared by the CPU and CUDA
// kernels: block absmax with non-finite detection, the block's inverse scale,
// encoding a run of elements into (packed) codes and decoding codes back.
// CUDA kernels call the same element functions inside their vectorized loops,
// so both backends produce bit-identical codes and scales.
#pragma once

#include <cstdint>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "codebooks.hpp"
#include "format.hpp"

namespace lowbit {

constexpr float float_max = 3.40282346638528859812e+38f;

// One step of the absmax reduction. A non-finite element poisons the result
// with NaN (plain fmaxf would silently skip a NaN).
LOWBIT_HD float absmax_step(float m, float v) {
  const float a = fabsf(v);
  if (!(a <= float_max) || m != m) return bits_float(0x7FC00000u);
  return a > m ? a : m;
}
// The fold of absmax_step over a run of values, in the form a GPU runs
// fastest: a plain maximum and a separate finiteness flag (2 instructions
// per value instead of 4). The same result as the fold: it turns NaN at the
// first non-finite value and stays NaN (tests/formats/test_roundtrip.cpp).
struct absmax_accumulator {
  float top = 0.0f;
  bool finite = true;
  LOWBIT_HD void add(float v) {
    const float a = fabsf(v);
    finite = finite && a <= float_max;
    top = fmaxf(top, a);
  }
  LOWBIT_HD float value() const { return finite ? top : bits_float(0x7FC00000u); }
};
// Combines two partial absmax results, keeping NaN.
LOWBIT_HD float absmax_combine(float a, float b) {
  if (a != a || b != b) return bits_float(0x7FC00000u);
  return a > b ? a : b;
}

LOWBIT_HD bool is_finite_scale(float absmax) { return absmax <= float_max; }  // false for NaN/inf

// Multiplier that maps a block into [-1, 1]. x * (1/absmax) as in
// bitsandbytes (a multiply by the reciprocal, not a division). An all-zero
// block gets 0, so every element encodes to the format's zero code; so does
// a block whose absmax is too small for its reciprocal to be a float
// (absmax below about 2.9e-39, subnormal): with an infinite multiplier its
// zeros would become NaN and take the table's first code (decoding to
// -absmax), and its other elements +-absmax. Such blocks hold only values
// below float32's normal range and decode to zeros.
LOWBIT_HD float inverse_scale(float absmax) {
  const float r = absmax > 0.0f ? reciprocal_rn(absmax) : 0.0f;
  return r <= 3.402823466e38f ? r : 0.0f;  // an overflowed reciprocal (+infinity) -> 0
}

template <format F, class T>
LOWBIT_HD uint8_t encode_element(T x, float inv, const float* dyn) {
  return encode_normalized<F>(mul_rn(to_float(x), inv), dyn);
}

template <class T>
LOWBIT_HD float block_absmax(const T* x, int64_t count) {
  float m = 0.0f;
  for (int64_t i = 0; i < count; ++i) m = absmax_step(m, to_float(x[i]));
  return m;
}

// Encodes `count` elements of one block. For 4-bit formats `codes` points at
// the block's first byte (block starts are even) and an odd tail is padded
// with the zero code in the low nibble.
template <format F, class T>
LOWBIT_HD void encode_block(const T* x, int64_t count, float absmax, const float* dyn, uint8_t* codes) {
  const float inv = inverse_scale(absmax);
  if constexpr (is_4bit(F)) {
    int64_t i = 0;
    for (; i + 1 < count; i += 2)
      codes[i / 2] = uint8_t((encode_element<F>(x[i], inv, dyn) << 4) | encode_element<F>(x[i + 1], inv, dyn));
    if (i < count) codes[i / 2] = uint8_t((encode_element<F>(x[i], inv, dyn) << 4) | zero_code(F));
  } else {
    for (int64_t i = 0; i < count; ++i) codes[i] = encode_element<F>(x[i], inv, dyn);
  }
}

// Decodes `count` elements of one block with decode table `table` (see
// make_code_table) and block scale `scale`.
template <format F, class T>
LOWBIT_HD void decode_block(const uint8_t* codes, int64_t count, float scale, const float* table, T* out) {
  if constexpr (is_4bit(F)) {
    // byte by byte (high nibble first): a loop without a per-element choice
    // of nibble, which CPU compilers vectorize
    const int64_t pairs = count / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      const uint8_t byte = codes[j];
      out[2 * j] = from_float<T>(mul_rn(table[byte >> 4], scale));
      out[2 * j + 1] = from_float<T>(mul_rn(table[byte & 15], scale));
    }
    if (count & 1) out[count - 1] = from_float<T>(mul_rn(table[codes[pairs] >> 4], scale));
  } else {
    for (int64_t i = 0; i < count; ++i) out[i] = from_float<T>(mul_rn(table[codes[i]], scale));
  }
}

}  // namespace lowbit
