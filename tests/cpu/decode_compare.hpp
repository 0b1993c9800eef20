// tests/cpu/decode_compare.hpp
// One check shared by test_vector_codec and the x86 vector-path tests
// (test_simd_decode4_*): cpu::vector_decode_block against decode_block, the
// element-wise definition, byte for byte, for one format and output dtype.
// Blocks of 1 to 4097 elements (odd counts, the 32-element chunks of the
// vector paths and their edges); every code byte, then random ones; scales
// whose products are ordinary, subnormal in float32, subnormal or past the
// largest value in float16, exact bfloat16 / float16 rounding ties, signed
// zero, and non-finite (infinity, NaN: decoded without the vector path).
#pragma once

#include <doctest/doctest.h>

#include <lowbit/cpu/vector_codec.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace decode_compare {

template <lowbit::format F, class T>
void compare_decode() {
  using namespace lowbit;
  std::mt19937 g(99 + int(F));
  const code_table t = make_code_table(F);
  const float scales[] = {1.0f,       0.0123f,     3.5e4f,  1e-40f,   3e-39f, 6e-8f, 3e-5f, 7e4f, 65520.0f,
                          // 1 + k 2^-8 and 1 + k 2^-11 times the table's 1.0: bfloat16 and
                          // float16 ties, rounding down (k = 1) and up (k = 3) to even
                          1.00390625f, 1.01171875f, 1.00048828125f, 1.00146484375f,
                          -0.0f,      -2.5f,       std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()};
  for (int64_t count : {1, 2, 3, 31, 32, 33, 63, 64, 65, 96, 255, 256, 1001, 4097}) {
    std::vector<uint8_t> codes(size_t(is_4bit(F) ? (count + 1) / 2 : count));
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = uint8_t(i < 256 ? i : g());  // every byte value first
    for (float scale : scales) {
      CAPTURE(count);
      CAPTURE(scale);
      std::vector<T> want(static_cast<size_t>(count)), got(static_cast<size_t>(count));
      decode_block<F>(codes.data(), count, scale, t.value, want.data());
      cpu::vector_decode_block<F>(codes.data(), count, scale, t.value, got.data());
      CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(T)) == 0);
    }
  }
}

template <lowbit::format F>
void compare_decode_all_dtypes() {
  compare_decode<F, float>();
  compare_decode<F, lowbit::bf16>();
  compare_decode<F, lowbit::fp16>();
}

}  // namespace decode_compare
