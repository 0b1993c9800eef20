// lowbit/formats/stochastic_rounding.hpp
// Rounding onto a format's sorted codebook (nearest, and stochastic) and
// unbiased stochastic rounding, shared by CPU and CUDA code: fp32 -> bf16,
// fp32 -> fp16, and fp32 -> a blockwise code of any lowbit format, rounding
// to one of the two neighbouring representable values with probabilities
// that make E[result] equal the input (inside the representable range).
// The random bits come from the caller (core/rng.hpp, keyed by seed, step and
// element index), so results are deterministic and backend-independent.
// Every rounding uses 16 random bits (the low half of `random_bits`): the
// probability of rounding up is resolved to 2^-16, as fp32 -> bf16 rounding
// by adding 16 bits below the kept mantissa is.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "../core/config.hpp"
#include "../core/dtype.hpp"
#include "../core/rng.hpp"
#include "codebooks.hpp"
#include "format.hpp"

namespace lowbit {

// Whether to take the upper of two neighbours `gap` apart for a value
// `offset` above the lower one (0 <= offset <= gap): true with probability
// offset / gap, resolved to 2^-16 by the 16 random bits r16 (rounded to the
// nearest multiple, so the bias is at most 2^-17 of the gap). Decided as
// (2 r16 + 1) * gap < offset * 2^17, without a division: 2 r16 + 1 and the
// power-of-two scaling are exact in float, so only the product rounds (a
// relative 2^-24), the same on every backend. (A division per element was a
// tenth of the GPU optimizer step's instructions.)
LOWBIT_HD bool round_up_stochastic(float offset, float gap, uint32_t r16) {
  return mul_rn(float(2u * (r16 & 0xFFFFu) + 1u), gap) < mul_rn(offset, 131072.0f);
}

// fp32 -> bf16: add 16 random bits below the kept mantissa, then truncate.
// The magnitude rounds up with probability (dropped bits) / 2^16. Overflow
// saturates at the largest finite bf16; NaN and infinities pass through.
LOWBIT_HD bf16 to_bf16_stochastic(float x, uint32_t random_bits) {
  const uint32_t u = float_bits(x);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return to_bf16(x);
  uint32_t t = u + (random_bits & 0xFFFFu);
  if ((t & 0x7FFFFFFFu) >= 0x7F800000u) t = (u & 0x80000000u) | 0x7F7F0000u;
  return bf16{uint16_t(t >> 16)};
}

// fp32 -> fp16: find the neighbours below and above |x| and pick the upper
// with probability (|x| - lo) / (hi - lo). Saturates at 65504.
LOWBIT_HD fp16 to_fp16_stochastic(float x, uint32_t random_bits) {
  const float a = fabsf(x);
  if (!(a <= 3.40282346638528859812e+38f)) return to_fp16(x);  // NaN, +-inf
  if (a >= 65504.0f) return to_fp16(x > 0.0f ? 65504.0f : -65504.0f);
  fp16 lo = to_fp16(x);                             // nearest
  if (fabsf(to_float(lo)) > a) lo.bits = uint16_t(lo.bits - 1);  // step the magnitude down to <= |x|
  const float lo_mag = fabsf(to_float(lo));
  if (lo_mag == a) return lo;
  const fp16 hi{uint16_t(lo.bits + 1)};
  return round_up_stochastic(a - lo_mag, fabsf(to_float(hi)) - lo_mag, random_bits) ? hi : lo;  // exact differences
}

template <class T>
LOWBIT_HD T from_float_stochastic(float x, uint32_t random_bits);
template <>
LOWBIT_HD float from_float_stochastic<float>(float x, uint32_t) { return x; }
template <>
LOWBIT_HD bf16 from_float_stochastic<bf16>(float x, uint32_t r) { return to_bf16_stochastic(x, r); }
template <>
LOWBIT_HD fp16 from_float_stochastic<fp16>(float x, uint32_t r) { return to_fp16_stochastic(x, r); }

// A format's distinct representable normalized values in ascending order with
// the code of each: what stochastic encoding searches. Entries past `size`
// are +infinity up to the next power of two (2^steps), so the search below
// runs a fixed number of branch-free steps. Passed by value to CUDA kernels
// (about 1.3 KB).
struct sorted_codebook {
  float value[256];
  uint8_t code[256];
  int size;
  int steps;  // log2 of the padded size
};

// Index of the last entry <= u, for sorted[0] <= u (branch-free: a fixed
// number of conditional moves, no data-dependent jumps).
LOWBIT_HD int sorted_floor_index(float u, const float* sorted, int steps) {
  int lo = 0;
  for (int step = 1 << (steps - 1); step >= 1; step >>= 1) lo = sorted[lo + step] <= u ? lo + step : lo;
  return lo;
}

inline sorted_codebook make_sorted_codebook(format f) {
  std::vector<std::pair<float, int>> entries;
  const float* dyn = dynamic_table(f);
  dispatch_format(f, [&](auto tag) {
    constexpr format F = decltype(tag)::value;
    for (int c = 0; c < (is_4bit(F) ? 16 : 256); ++c) {
      if (F == format::int4 && c == 8) continue;     // -8/7 is outside the symmetric grid
      if (F == format::int8 && c == 0x80) continue;  // likewise -128/127
      if (F == format::fp4 && c == 8) continue;      // "-0" duplicates +0
      entries.push_back({code_value<F>(c, dyn), c});
    }
  });
  std::sort(entries.begin(), entries.end());
  sorted_codebook t{};
  t.size = 0;
  for (const auto& e : entries) {
    if (t.size && t.value[t.size - 1] == e.first) continue;
    t.value[t.size] = e.first;
    t.code[t.size] = uint8_t(e.second);
    ++t.size;
  }
  t.steps = 0;
  while ((1 << t.steps) < t.size) ++t.steps;
  for (int i = t.size; i < (1 << t.steps); ++i) {
    t.value[i] = bits_float(0x7F800000u);  // +inf: never <= a finite u
    t.code[i] = t.code[t.size - 1];
  }
  return t;
}

// Nearest code for a block-normalized value u by searching the sorted
// codebook (ties go to the lower value). Used where one generic routine must
// serve every format at run time, e.g. re-encoding optimizer states.
// The final choice once lo = sorted_floor_index(u) is known (any u: values
// outside the table clamp to its ends, NaN to the first code).
LOWBIT_HD uint8_t nearest_from_floor(float u, int lo, const float* sorted, const uint8_t* codes, int size) {
  if (!(u > sorted[0])) return codes[0];
  if (u >= sorted[size - 1]) return codes[size - 1];
  const int hi = lo + 1;
  return (sorted[hi] - u < u - sorted[lo]) ? codes[hi] : codes[lo];
}

LOWBIT_HD uint8_t stochastic_from_floor(float u, int lo, uint32_t random_bits, const float* sorted,
                                        const uint8_t* codes, int size) {
  if (!(u > sorted[0])) return codes[0];
  if (u >= sorted[size - 1]) return codes[size - 1];
  const int hi = lo + 1;  // sorted[lo] <= u < sorted[hi]
  return round_up_stochastic(u - sorted[lo], sorted[hi] - sorted[lo], random_bits) ? codes[hi] : codes[lo];
}

LOWBIT_HD uint8_t encode_nearest(float u, const float* sorted, const uint8_t* codes, int size, int steps) {
  return nearest_from_floor(u, sorted_floor_index(u, sorted, steps), sorted, codes, size);
}

// Stochastic code for a block-normalized value u: with sorted neighbours
// v_lo <= u <= v_hi, returns hi's code with probability (u - v_lo)/(v_hi - v_lo).
// Values outside the table's range clamp to its ends.
LOWBIT_HD uint8_t encode_stochastic(float u, uint32_t random_bits, const float* sorted, const uint8_t* codes,
                                    int size, int steps) {
  return stochastic_from_floor(u, sorted_floor_index(u, sorted, steps), random_bits, sorted, codes, size);
}

}  // namespace lowbit
