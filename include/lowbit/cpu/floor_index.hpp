// lowbit/cpu/floor_index.hpp
// A faster way for CPU loops to find sorted_floor_index(u) (the last entry of
// a format's sorted codebook that is <= u), the search at the heart of every
// re-encoding by nearest or stochastic rounding. The binary search costs one
// gather per halving (8 for an 8-bit codebook); here u's float bits pick a
// bucket (sign, exponent and the top 6 mantissa bits, so buckets follow the
// logarithmic spacing of the dynamic maps as well as the linear spacing of
// int8), a table gives the floor index at the bucket's lower edge, and two
// compare-and-step moves finish it: three gathers, all vectorizable. The
// table is built once per format and used only where no bucket holds more
// than two codebook values (true of every lowbit format; checked, else the
// caller keeps the binary search). The result equals sorted_floor_index for
// every finite u, so the CPU step still produces the CUDA kernel's codes.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "../formats/format.hpp"
#include "../formats/stochastic_rounding.hpp"

namespace lowbit {
namespace cpu {

struct floor_index_table {
  // Buckets: magnitudes in [2^-24, 2) at 64 per octave on each side, and one
  // bucket for everything in (-2^-24, 2^-24).
  static constexpr int32_t tiny = 6592;  // (bits of 2^-24) >> 17
  static constexpr int32_t top = 8192;   // (bits of 2.0) >> 17
  static constexpr int32_t half = top - tiny + 1;
  static constexpr int32_t n_buckets = 2 * half + 1;
  static constexpr int refine_steps = 2;

  bool usable = false;
  int32_t start[n_buckets];
};

// The bucket of u, in [0, n_buckets): monotone in u (u <= v implies
// bucket(u) <= bucket(v)). Branch-free integer arithmetic; vectorizes. Also
// a device function: the CUDA optimizer step searches with the same table.
LOWBIT_HD int32_t floor_bucket(float u) {
  const uint32_t bits = float_bits(u);
  const int32_t mag = int32_t(bits & 0x7FFFFFFFu) >> 17;  // octave and 6 mantissa bits, >= 0
  const int32_t m = mag < floor_index_table::top ? mag : floor_index_table::top;
  const int32_t above_tiny = m >= floor_index_table::tiny ? m - floor_index_table::tiny + 1 : 0;
  return (bits >> 31) ? floor_index_table::half - above_tiny : floor_index_table::half + above_tiny;
}

inline floor_index_table make_floor_index_table(const sorted_codebook& t) {
  auto table = floor_index_table{};
  // values per bucket and the number of values in lower buckets
  std::array<int32_t, floor_index_table::n_buckets> count{};
  for (int i = 0; i < t.size; ++i) ++count[size_t(floor_bucket(t.value[i]))];
  int32_t below = 0;
  bool ok = true;
  for (int32_t b = 0; b < floor_index_table::n_buckets; ++b) {
    // for u in bucket b every value of a lower bucket is < u, every value of
    // a higher one > u: the floor index is below - 1 plus the values of this
    // bucket that are <= u (at most refine_steps of them may remain)
    table.start[b] = below > 0 ? below - 1 : 0;
    const int32_t steps_needed = below > 0 ? count[size_t(b)] : count[size_t(b)] - 1;
    if (steps_needed > floor_index_table::refine_steps) ok = false;
    below += count[size_t(b)];
  }
  table.usable = ok;
  return table;
}

// The table of a format's sorted codebook, built on first use.
inline const floor_index_table& floor_index_for(format f, const sorted_codebook& t) {
  static std::unique_ptr<floor_index_table> tables[format_count];
  static std::once_flag once[format_count];
  const int i = int(f);
  std::call_once(once[i], [&] { tables[i] = std::make_unique<floor_index_table>(make_floor_index_table(t)); });
  return *tables[i];
}

// One compare-and-step move after the bucket's start: lo + 1 when that entry
// is still <= u, else lo. Shared with the CUDA optimizer step.
LOWBIT_HD int floor_refine_step(int lo, float u, const float* sorted, int size) {
  const int next = lo + 1 < size ? lo + 1 : lo;
  return sorted[next] <= u ? next : lo;
}

// lo[k] = sorted_floor_index(u[k]) for k < len, for finite u (NaN and
// infinities give an index that the encoders' range checks override).
inline void floor_indices(const floor_index_table& ft, const sorted_codebook& t, const float* u, int len, int* lo) {
  for (int k = 0; k < len; ++k) lo[k] = ft.start[floor_bucket(u[k])];
  for (int r = 0; r < floor_index_table::refine_steps; ++r)
    for (int k = 0; k < len; ++k) lo[k] = floor_refine_step(lo[k], u[k], t.value, t.size);
}

}  // namespace cpu
}  // namespace lowbit
