// lowbit/cpu/simd_decode4.hpp
// Decoding 4-bit codes (nf4, fp4, int4, dynamic4, ulinear4) on x86 CPUs with
// vector permutes: the 16-entry decode table sits in registers and a
// permute looks up 16 (AVX-512) or 8 (AVX2) codes at once, where the
// portable loop of decode_block reads the table once per element (which
// compilers do not vectorize, and gathers are slow). Same bits as
// decode_block for every input: the product table[c] * scale is one IEEE
// multiplication either way, and the conversions to bfloat16 and float16
// round to nearest even like to_bf16 / to_fp16; their NaN encodings differ
// from the hardware's, so a block whose scale is not finite (the only way a
// product can be NaN: |table[c]| <= 1) goes to decode_block.
// Used by vector_decode_block (cpu/vector_codec.hpp) when the compiler
// targets AVX-512 (F, BW) or AVX2 with F16C; otherwise simd_decode4_available
// is false and nothing here is compiled. Measured: docs/PERFORMANCE.md,
// "Quantize / dequantize (CPU)", 2026-11-28 (afternoon).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../core/dtype.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define LOWBIT_SIMD_DECODE4_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__F16C__)
#define LOWBIT_SIMD_DECODE4_AVX2 1
#include <immintrin.h>
#endif

namespace lowbit {
namespace cpu {

#if defined(LOWBIT_SIMD_DECODE4_AVX512) || defined(LOWBIT_SIMD_DECODE4_AVX2)
constexpr bool simd_decode4_available = true;
#else
constexpr bool simd_decode4_available = false;
#endif

#if defined(LOWBIT_SIMD_DECODE4_AVX512) || defined(LOWBIT_SIMD_DECODE4_AVX2)
namespace simd_detail {

// 16 packed bytes -> their 32 nibbles in element order (high nibble first),
// one per byte: each byte b widens to the 16-bit word (b >> 4) | (b & 15) << 8,
// whose little-endian bytes are the two codes in order.
inline __m256i nibbles_in_order(const uint8_t* codes) {
  const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m256i high = _mm256_srli_epi16(w, 4);
  const __m256i low = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(15)), 8);
  return _mm256_or_si256(high, low);
}

#if defined(LOWBIT_SIMD_DECODE4_AVX512)

// The zero-masking forms with every lane selected: the same instructions
// as the unmasked intrinsics, which GCC 12 implements with an undefined
// pass-through operand and then warns about (-Wmaybe-uninitialized) in
// every program that inlines them.
constexpr __mmask16 all16 = 0xFFFF;

// to_bf16 without its NaN case: (u + 0x7FFF + ((u >> 16) & 1)) >> 16
inline __m256i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(all16, u, 16), _mm512_set1_epi32(1));
  const __m512i r =
      _mm512_maskz_srli_epi32(all16, _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  return _mm512_maskz_cvtepi32_epi16(all16, r);
}

template <class T>
inline void store16(__m512 v, T* out) {
  if constexpr (std::is_same<T, float>::value) {
    _mm512_storeu_ps(out, v);
  } else if constexpr (std::is_same<T, bf16>::value) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bf16_bits(v));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_maskz_cvtps_ph(all16, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// Elements [0, 32 * chunks) of a block: 16 code bytes per chunk.
template <class T>
inline void decode_chunks(const uint8_t* codes, int64_t chunks, float scale, const float* table, T* out) {
  const __m512 values = _mm512_loadu_ps(table);
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t c = 0; c < chunks; ++c) {
    const __m256i idx = nibbles_in_order(codes + 16 * c);
    const __m512i first = _mm512_maskz_cvtepu8_epi32(all16, _mm256_castsi256_si128(idx));
    const __m512i second = _mm512_maskz_cvtepu8_epi32(all16, _mm256_extracti128_si256(idx, 1));
    store16(_mm512_mul_ps(_mm512_maskz_permutexvar_ps(all16, first, values), s), out + 32 * c);
    store16(_mm512_mul_ps(_mm512_maskz_permutexvar_ps(all16, second, values), s), out + 32 * c + 16);
  }
}

#else  // AVX2 + F16C

inline __m128i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  // 8 words (each <= 0xFFFF) -> 8 halves: packus works per 128-bit lane
  const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
  return _mm_packus_epi32(lo, hi);
}

template <class T>
inline void store8(__m256 v, T* out) {
  if constexpr (std::is_same<T, float>::value) {
    _mm256_storeu_ps(out, v);
  } else if constexpr (std::is_same<T, bf16>::value) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), bf16_bits(v));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// table[idx] for 8 indices in [0, 16): a permute of each half of the table,
// then a blend on bit 3 (moved to the sign bit that blendv reads).
inline __m256 lookup8(__m128i idx8_bytes, __m256 low_half, __m256 high_half) {
  const __m256i idx = _mm256_cvtepu8_epi32(idx8_bytes);
  const __m256 a = _mm256_permutevar8x32_ps(low_half, idx);
  const __m256 b = _mm256_permutevar8x32_ps(high_half, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

template <class T>
inline void decode_chunks(const uint8_t* codes, int64_t chunks, float scale, const float* table, T* out) {
  const __m256 low_half = _mm256_loadu_ps(table), high_half = _mm256_loadu_ps(table + 8);
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t c = 0; c < chunks; ++c) {
    const __m256i idx = nibbles_in_order(codes + 16 * c);
    const __m128i first = _mm256_castsi256_si128(idx), second = _mm256_extracti128_si256(idx, 1);
    T* o = out + 32 * c;
    store8(_mm256_mul_ps(lookup8(first, low_half, high_half), s), o);
    store8(_mm256_mul_ps(lookup8(_mm_srli_si128(first, 8), low_half, high_half), s), o + 8);
    store8(_mm256_mul_ps(lookup8(second, low_half, high_half), s), o + 16);
    store8(_mm256_mul_ps(lookup8(_mm_srli_si128(second, 8), low_half, high_half), s), o + 24);
  }
}

#endif

}  // namespace simd_detail

// Decodes the first 32 * floor(count / 32) elements of a 4-bit block whose
// scale is finite and returns how many it decoded (0 for a non-finite
// scale); the caller decodes the rest with decode_block.
template <class T>
inline int64_t simd_decode4_prefix(const uint8_t* codes, int64_t count, float scale, const float* table, T* out) {
  if (!std::isfinite(scale)) return 0;
  const int64_t chunks = count / 32;
  simd_detail::decode_chunks(codes, chunks, scale, table, out);
  return 32 * chunks;
}
#else
// Without those instruction sets it decodes nothing (declared all the same,
// so that callers' `if constexpr (simd_decode4_available)` branches compile).
template <class T>
inline int64_t simd_decode4_prefix(const uint8_t*, int64_t, float, const float*, T*) {
  return 0;
}
#endif

}  // namespace cpu
}  // namespace lowbit
