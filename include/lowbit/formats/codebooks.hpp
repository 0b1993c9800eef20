// lowbit/formats/codebooks.hpp
// Where every format's code <-> value mapping lives: the NF4 and FP4 tables
// of FORMATS.md, the linear int4 / int8 grids, and the encode functions that
// turn a block-normalized value (x / absmax, in [-1, 1]) into a code. All are
// host/device functions used unchanged by the CPU and CUDA kernels.
//
// Encoding rule: nearest value; a value exactly on the midpoint between two
// neighbours takes the lower code (thresholds compared with strict >). The
// thresholds are the float32 rounding of the exact (double) midpoints of the
// float32 table values, as in bitsandbytes. int4 / int8 use rint (ties to even).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "../core/config.hpp"
#include "dynamic_map.hpp"
#include "format.hpp"

namespace lowbit {

// ---- NF4 -------------------------------------------------------------------
LOWBIT_HD constexpr float nf4_value(int code) {
  switch (code & 15) {
    case 0: return -1.0f;
    case 1: return -0.6961928009986877f;
    case 2: return -0.5250730514526367f;
    case 3: return -0.39491748809814453f;
    case 4: return -0.28444138169288635f;
    case 5: return -0.18477343022823334f;
    case 6: return -0.09105003625154495f;
    case 7: return 0.0f;
    case 8: return 0.07958029955625534f;
    case 9: return 0.16093020141124725f;
    case 10: return 0.24611230194568634f;
    case 11: return 0.33791524171829224f;
    case 12: return 0.44070982933044434f;
    case 13: return 0.5626170039176941f;
    case 14: return 0.7229568362236023f;
    default: return 1.0f;
  }
}

// Midpoint between sorted neighbours i and i+1 (of a monotonic table).
LOWBIT_HD constexpr float nf4_threshold(int i) {
  return float((double(nf4_value(i)) + double(nf4_value(i + 1))) / 2.0);
}

// NF4 codes are monotonic in value, so the code is the number of thresholds
// strictly below x. Fifteen compares against immediates: no table, no
// divergent branches on the GPU.
LOWBIT_HD uint8_t nf4_encode(float x) {
  constexpr float t0 = nf4_threshold(0), t1 = nf4_threshold(1), t2 = nf4_threshold(2), t3 = nf4_threshold(3),
                  t4 = nf4_threshold(4), t5 = nf4_threshold(5), t6 = nf4_threshold(6), t7 = nf4_threshold(7),
                  t8 = nf4_threshold(8), t9 = nf4_threshold(9), t10 = nf4_threshold(10),
                  t11 = nf4_threshold(11), t12 = nf4_threshold(12), t13 = nf4_threshold(13),
                  t14 = nf4_threshold(14);
  return uint8_t((x > t0) + (x > t1) + (x > t2) + (x > t3) + (x > t4) + (x > t5) + (x > t6) + (x > t7) +
                 (x > t8) + (x > t9) + (x > t10) + (x > t11) + (x > t12) + (x > t13) + (x > t14));
}

// ---- FP4 (bitsandbytes E2M1 variant) ----------------------------------------
// Bit 3 is the sign; bits 2..0 index magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3
// (divided by 12), a non-monotonic order.
LOWBIT_HD constexpr float fp4_magnitude(int bits3) {
  switch (bits3 & 7) {
    case 0: return 0.0f;
    case 1: return float(0.0625 / 12.0);
    case 2: return float(8.0 / 12.0);
    case 3: return 1.0f;
    case 4: return float(4.0 / 12.0);
    case 5: return 0.5f;
    case 6: return float(2.0 / 12.0);
    default: return 0.25f;
  }
}

LOWBIT_HD constexpr float fp4_value(int code) { return (code & 8) ? -fp4_magnitude(code) : fp4_magnitude(code); }

// Magnitudes in ascending order are the codes 0,1,6,7,4,5,2,3.
LOWBIT_HD constexpr int fp4_sorted_code(int rank) { return rank ^ ((rank & 2) << 1); }

LOWBIT_HD constexpr float fp4_threshold(int rank) {
  return float((double(fp4_magnitude(fp4_sorted_code(rank))) + double(fp4_magnitude(fp4_sorted_code(rank + 1)))) /
               2.0);
}

// Sign from x < 0 (so tiny negatives become 0b1000, "negative zero"), then
// the magnitude's rank among the eight sorted magnitudes.
LOWBIT_HD uint8_t fp4_encode(float x) {
  constexpr float t0 = fp4_threshold(0), t1 = fp4_threshold(1), t2 = fp4_threshold(2), t3 = fp4_threshold(3),
                  t4 = fp4_threshold(4), t5 = fp4_threshold(5), t6 = fp4_threshold(6);
  const int sign = x < 0.0f ? 8 : 0;
  const float a = fabsf(x);
  const int rank = (a > t0) + (a > t1) + (a > t2) + (a > t3) + (a > t4) + (a > t5) + (a > t6);
  return uint8_t(sign | fp4_sorted_code(rank));
}

// ---- linear int4 / int8 ------------------------------------------------------
LOWBIT_HD float int4_value(int code) {
  const int q = (code & 8) ? (code & 15) - 16 : (code & 15);  // two's-complement nibble
  return float(q) / 7.0f;
}
LOWBIT_HD uint8_t int4_encode(float x) {
  float q = rintf(mul_rn(x, 7.0f));
  q = q > 7.0f ? 7.0f : (q < -7.0f ? -7.0f : q);
  return uint8_t(int(q) & 15);
}

LOWBIT_HD float int8_value(int code) { return float(int8_t(uint8_t(code))) / 127.0f; }
LOWBIT_HD uint8_t int8_encode(float x) {
  float q = rintf(mul_rn(x, 127.0f));
  q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
  return uint8_t(int8_t(int(q)));
}

// ---- zero-free linear 4-bit ----------------------------------------------------
LOWBIT_HD float ulinear4_value(int code) { return float((code & 15) + 1) / 16.0f; }
// Nearest of (c+1)/16 for x in [0, 1]; ties to the lower code.
LOWBIT_HD uint8_t ulinear4_encode(float x) {
  float q = ceilf(mul_rn(x, 16.0f) - 0.5f) - 1.0f;  // nearest level, ties down
  q = q > 15.0f ? 15.0f : (q < 0.0f ? 0.0f : q);
  return uint8_t(int(q));
}

// ---- dynamic maps -------------------------------------------------------------
// Nearest entry of a sorted table of 2^Bits entries by binary search; on an
// exact tie the lower entry wins, as with the 4-bit thresholds.
// The nearer of table[lo] and table[lo + 1] to x, given lo, the last index
// with table[lo] <= x (0 when x < table[0]); on an exact tie the lower. Also
// the last step of cpu/vector_codec.hpp's bucketed search.
template <int Bits = 8>
LOWBIT_HD uint8_t dynamic_nearest_from_floor(int lo, float x, const float* table) {
  constexpr int last = (1 << Bits) - 1;
  return uint8_t(lo < last && table[lo + 1] - x < x - table[lo] ? lo + 1 : lo);
}

template <int Bits = 8>
LOWBIT_HD uint8_t dynamic_encode(float x, const float* table) {
  int lo = 0;  // ends as the last index with table[lo] <= x (0 when x < table[0])
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int step = 1 << (Bits - 1); step >= 1; step >>= 1)
    if (table[lo + step] <= x) lo += step;
  return dynamic_nearest_from_floor<Bits>(lo, x, table);
}

// ---- per-format dispatch ---------------------------------------------------
// A decode table for one format: entry c is the normalized value of code c
// (multiply by the block scale to decode). Passed by value to CUDA kernels.
struct code_table {
  float value[256];
};

template <format F>
LOWBIT_HD float code_value(int code, const float* dyn) {
  if constexpr (F == format::nf4) return nf4_value(code);
  else if constexpr (F == format::fp4) return fp4_value(code);
  else if constexpr (F == format::int4) return int4_value(code);
  else if constexpr (F == format::int8) return int8_value(code);
  else if constexpr (F == format::ulinear4) return ulinear4_value(code);
  else if constexpr (F == format::dynamic4) return dyn[code & 15];
  else return dyn[code & 255];
}

template <format F>
LOWBIT_HD uint8_t encode_normalized(float x, const float* dyn) {
  if constexpr (F == format::nf4) return nf4_encode(x);
  else if constexpr (F == format::fp4) return fp4_encode(x);
  else if constexpr (F == format::int4) return int4_encode(x);
  else if constexpr (F == format::int8) return int8_encode(x);
  else if constexpr (F == format::ulinear4) return ulinear4_encode(x);
  else if constexpr (F == format::dynamic4) return dynamic_encode<4>(x, dyn);
  else return dynamic_encode<8>(x, dyn);
}

// The 256-entry dynamic table a format needs (nullptr for formats without one).
inline const float* dynamic_table(format f) {
  if (f == format::dynamic8) return signed_dynamic_map().data();
  if (f == format::udynamic8) return unsigned_dynamic_map().data();
  if (f == format::dynamic4) return signed_dynamic4_map().data();
  return nullptr;
}

// Decode table of a format (16 or 256 meaningful entries).
inline code_table make_code_table(format f) {
  code_table t{};
  const float* dyn = dynamic_table(f);
  dispatch_format(f, [&](auto tag) {
    constexpr format F = decltype(tag)::value;
    const int n = is_4bit(F) ? 16 : 256;
    for (int c = 0; c < n; ++c) t.value[c] = code_value<F>(c, dyn);
  });
  return t;
}

}  // namespace lowbit
