// lowbit/core/dtype.hpp
// Element types the library reads and writes: the dtype tag used by views and
// files, 16-bit storage types bf16 and fp16 (plain structs holding the bits,
// layout-compatible with __nv_bfloat16, __half, torch.bfloat16 ...), and exact
// host/device conversions to and from float. Float-to-16-bit conversion rounds
// to nearest even on both sides, so CPU and GPU produce identical bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "config.hpp"
#include "error.hpp"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace lowbit {

enum class dtype : uint8_t { f32, bf16, f16, f64, u8, i8, i16, i32, i64, boolean };

inline std::size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::bf16: return 2;
    case dtype::f16: return 2;
    case dtype::f64: return 8;
    case dtype::u8: return 1;
    case dtype::i8: return 1;
    case dtype::i16: return 2;
    case dtype::i32: return 4;
    case dtype::i64: return 8;
    case dtype::boolean: return 1;
  }
  return 0;
}

inline const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "float32";
    case dtype::bf16: return "bfloat16";
    case dtype::f16: return "float16";
    case dtype::f64: return "float64";
    case dtype::u8: return "uint8";
    case dtype::i8: return "int8";
    case dtype::i16: return "int16";
    case dtype::i32: return "int32";
    case dtype::i64: return "int64";
    case dtype::boolean: return "bool";
  }
  return "?";
}

inline bool is_floating(dtype t) { return t == dtype::f32 || t == dtype::bf16 || t == dtype::f16 || t == dtype::f64; }

struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};

LOWBIT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

LOWBIT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

LOWBIT_HD float to_float(float x) { return x; }
LOWBIT_HD float to_float(bf16 x) { return bits_float(uint32_t(x.bits) << 16); }

LOWBIT_HD float to_float(fp16 x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.bits));
#else
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1Fu;
  const uint32_t man = x.bits & 0x3FFu;
  if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return bits_float(sign);
  // subnormal half: man * 2^-24, exactly representable in float
  float v = float(man) * 5.9604644775390625e-8f;
  return sign ? -v : v;
#endif
}

// float -> bf16, round to nearest even; NaN stays a (quiet) NaN.
LOWBIT_HD bf16 to_bf16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  // a select, not an early return: loops converting arrays vectorize
  return bf16{uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded)};
}

// float -> fp16, round to nearest even, overflow to infinity.
LOWBIT_HD fp16 to_fp16(float f) {
#if defined(__CUDA_ARCH__)
  return fp16{__half_as_ushort(__float2half_rn(f))};
#else
  const uint32_t u = float_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return fp16{uint16_t(sign | 0x7E00u)};       // NaN
  if (a >= 0x477FF000u) return fp16{uint16_t(sign | 0x7C00u)};       // rounds to >= 65520: inf
  if (a >= 0x38800000u) {                                           // normal half range (>= 2^-14)
    uint32_t v = a - 0x38000000u;                                   // rebias exponent 127 -> 15
    v += 0xFFFu + ((v >> 13) & 1u);                                 // round to nearest even
    return fp16{uint16_t(sign | (v >> 13))};
  }
  if (a < 0x33000000u) return fp16{sign};                           // below half of min subnormal: 0
  // subnormal half: shift the full significand right, rounding to nearest even
  const uint32_t exp = a >> 23;
  const uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;                                // 14..24
  const uint32_t q = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  const uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
  return fp16{uint16_t(sign | r)};
#endif
}

template <class T>
LOWBIT_HD T from_float(float f);
template <>
LOWBIT_HD float from_float<float>(float f) { return f; }
template <>
LOWBIT_HD bf16 from_float<bf16>(float f) { return to_bf16(f); }
template <>
LOWBIT_HD fp16 from_float<fp16>(float f) { return to_fp16(f); }

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <>
struct dtype_of<bf16> { static constexpr dtype value = dtype::bf16; };
template <>
struct dtype_of<fp16> { static constexpr dtype value = dtype::f16; };
template <>
struct dtype_of<double> { static constexpr dtype value = dtype::f64; };
template <>
struct dtype_of<uint8_t> { static constexpr dtype value = dtype::u8; };
template <>
struct dtype_of<int8_t> { static constexpr dtype value = dtype::i8; };
template <>
struct dtype_of<int16_t> { static constexpr dtype value = dtype::i16; };
template <>
struct dtype_of<int32_t> { static constexpr dtype value = dtype::i32; };
template <>
struct dtype_of<int64_t> { static constexpr dtype value = dtype::i64; };

// Calls f(T{}) with T = float, bf16 or fp16 according to t; other dtypes are
// rejected with an error naming `what`.
template <class F>
decltype(auto) dispatch_float_dtype(dtype t, const char* what, F&& f) {
  switch (t) {
    case dtype::f32: return f(float{});
    case dtype::bf16: return f(bf16{});
    case dtype::f16: return f(fp16{});
    default: break;
  }
  throw error(errc::invalid_argument, std::string(what) + " must be float32, bfloat16 or float16, got " + dtype_name(t));
}

}  // namespace lowbit
