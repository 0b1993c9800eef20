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
  // Every class computed, then selected, with no branch, so that loops
  // converting arrays vectorize (quantize from float16 was 4 to 7 times
  // slower than from float32 with the branches).
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t magnitude = x.bits & 0x7FFFu;                   // exponent and mantissa
  const uint32_t normal = (magnitude << 13) + (112u << 23);       // exponent rebiased by 127 - 15
  const uint32_t inf_nan = (magnitude << 13) | 0x7F800000u;      // exponent 31: 255, mantissa kept
  // subnormal (exponent 0): man * 2^-24 = (2^-14 + man * 2^-24) - 2^-14,
  // both exact; the first is the float with exponent 113 and the mantissa
  const float subnormal = bits_float((113u << 23) | (magnitude << 13)) - 6.103515625e-05f;
  uint32_t bits = magnitude >= 0x7C00u ? inf_nan : normal;
  bits = magnitude < 0x0400u ? float_bits(subnormal) : bits;
  return bits_float(sign | bits);
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
  // Every case computed, then selected, with no branch, so that loops
  // converting arrays vectorize (dequantize to float16 ran 5 to 10 times
  // slower than to float32 with the branches).
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // normal half range (>= 2^-14): rebias the exponent 127 -> 15, round the
  // 13 dropped bits to nearest even
  const uint32_t rebiased = a - 0x38000000u;
  const uint32_t normal = (rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13;
  // below 2^-14: adding 0.5 leaves the value rounded to a multiple of 2^-24
  // (0.5's float spacing), to nearest even, i.e. the subnormal half's
  // significand in the low bits; below 2^-25 that is 0
  const uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3F000000u;
  uint32_t h = a >= 0x38800000u ? normal : subnormal;
  h = a >= 0x477FF000u ? 0x7C00u : h;  // rounds to >= 65520: infinity
  h = a > 0x7F800000u ? 0x7E00u : h;   // NaN
  return fp16{uint16_t(sign | h)};
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
