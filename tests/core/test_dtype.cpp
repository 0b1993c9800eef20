// Tests for core/dtype.hpp: exact 16-bit float conversions against float64
// references (exhaustive for decoding, nearest-even property for encoding).
#include <doctest/doctest.h>

#include <lowbit/core/dtype.hpp>

#include <cmath>
#include <cstdint>
#include <random>

using namespace lowbit;

static double half_bits_to_double(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(double(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(double(m + 1024), e - 25);
  return s ? -v : v;
}

TEST_CASE("fp16 -> float is exact for all 65536 bit patterns") {
  for (uint32_t b = 0; b < 65536; ++b) {
    const double ref = half_bits_to_double(uint16_t(b));
    const float got = to_float(fp16{uint16_t(b)});
    CHECK(std::signbit(got) == bool(b & 0x8000u));  // -0 stays -0
    if (std::isnan(ref)) {
      // a NaN keeps its sign and payload, shifted into place
      CHECK(float_bits(got) == (((b & 0x8000u) << 16) | 0x7F800000u | ((b & 0x3FFu) << 13)));
    } else {
      CHECK(double(got) == ref);
    }
  }
}

TEST_CASE("bf16 -> float is exact") {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float got = to_float(bf16{uint16_t(b)});
    uint32_t u = b << 16;
    float ref;
    std::memcpy(&ref, &u, 4);
    if (std::isnan(ref)) CHECK(std::isnan(got));
    else CHECK(got == ref);
  }
}

// Nearest-even rounding: the result is the closest representable value and a
// tie goes to the even significand.
template <class T>
static void check_nearest_even(float x) {
  const T r = from_float<T>(x);
  const double got = to_float(r);
  if (std::isnan(x)) {
    CHECK(std::isnan(got));
    return;
  }
  const T up{uint16_t(r.bits + 1)}, down{uint16_t(r.bits - 1)};
  const double err = std::fabs(got - double(x));
  if (std::isinf(got)) return;  // overflow checked separately
  const double e_up = std::fabs(double(to_float(up)) - double(x));
  const double e_down = std::fabs(double(to_float(down)) - double(x));
  if (!std::isnan(e_up)) CHECK(err <= e_up);
  if (!std::isnan(e_down) && (r.bits & 0x7FFF) != 0) CHECK(err <= e_down);
  if (err == e_up || err == e_down) CHECK((r.bits & 1) == 0);
}

TEST_CASE("float -> bf16 / fp16 round to nearest even") {
  std::mt19937 g(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = bits(g);
    float x;
    std::memcpy(&x, &u, 4);
    check_nearest_even<bf16>(x);
    if (std::fabs(x) < 65504.0f) check_nearest_even<fp16>(x);
  }
  // subnormal halves and exact ties
  for (float x : {5.9604644775390625e-8f, 2.98023223876953125e-8f, 8.940696716308594e-8f, 1.0009765625f + 0.00048828125f,
                  6.1035156e-5f, -3.0517578e-5f})
    check_nearest_even<fp16>(x);
  CHECK(to_fp16(70000.0f).bits == 0x7C00);
  CHECK(to_fp16(-70000.0f).bits == 0xFC00);
  CHECK(to_bf16(1.0f).bits == 0x3F80);
  CHECK(to_fp16(1.0f).bits == 0x3C00);
}

// The float -> float16 conversion by cases (the form lowbit used before its
// branch-free one): the reference the library's to_fp16 must equal.
static uint16_t fp16_by_cases(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u);
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);
  if (a >= 0x38800000u) {
    uint32_t v = a - 0x38000000u;
    v += 0xFFFu + ((v >> 13) & 1u);
    return uint16_t(sign | (v >> 13));
  }
  if (a < 0x33000000u) return sign;
  const uint32_t exp = a >> 23;
  const uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;
  const uint32_t q = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  return uint16_t(sign | (q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u)));
}

TEST_CASE("to_fp16 equals the conversion by cases on every 61st float and around every boundary") {
  int mismatches = 0;
  auto check = [&](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    if (to_fp16(f).bits != fp16_by_cases(f) && mismatches++ < 5)
      FAIL_CHECK("bits " << u << ": " << to_fp16(f).bits << " vs " << fp16_by_cases(f));
  };
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 61) check(uint32_t(u));
  // zero, 2^-25 (half the smallest subnormal), 2^-14 (the smallest normal),
  // 65520 (rounds to infinity), infinity: every float within 2^13 of each,
  // with both signs
  for (uint32_t edge : {0x00000000u, 0x33000000u, 0x38800000u, 0x477FF000u, 0x7F800000u})
    for (uint32_t d = 0; d < (1u << 13); ++d)
      for (uint32_t s : {0u, 0x80000000u}) {
        check(s | (edge + d));
        if (edge >= d) check(s | (edge - d));
      }
  CHECK(mismatches == 0);
}
