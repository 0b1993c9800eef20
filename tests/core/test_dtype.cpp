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
    if (std::isnan(ref)) CHECK(std::isnan(got));
    else CHECK(double(got) == ref);
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
