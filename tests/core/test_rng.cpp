// Tests for core/rng.hpp: Philox4x32-10 known-answer vectors (Random123),
// basic statistical sanity of the derived uniform floats, and the layout and
// statistics of the 16-bit draws stochastic rounding uses.
#include <doctest/doctest.h>

#include <lowbit/core/rng.hpp>

#include <cmath>

using namespace lowbit;

TEST_CASE("Philox4x32-10 known-answer vectors") {
  philox_result r = philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(r.w[0] == 0x6627e8d5u);
  CHECK(r.w[1] == 0xe169c58du);
  CHECK(r.w[2] == 0xbc57ac4cu);
  CHECK(r.w[3] == 0x9b00dbd8u);
  r = philox4x32_10(~0u, ~0u, ~0u, ~0u, ~0u, ~0u);
  CHECK(r.w[0] == 0x408f276du);
  CHECK(r.w[3] == 0x6d5451fdu);
  r = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(r.w[0] == 0xd16cfe09u);
  CHECK(r.w[1] == 0x94fdccebu);
  CHECK(r.w[2] == 0x5001e420u);
  CHECK(r.w[3] == 0x24126ea1u);
}

TEST_CASE("streams are pure functions of (seed, tensor, purpose, step, index)") {
  rng_stream a{42, 3, rng_purpose::weight, 7};
  rng_stream b = a;
  for (uint64_t i = 0; i < 100; ++i) CHECK(a.bits(i) == b.bits(i));
  CHECK(a.bits(5) == a.quad(1).w[1]);
  rng_stream c = a;
  c.step = 8;
  rng_stream d = a;
  d.purpose = rng_purpose::state1;
  rng_stream e = a;
  e.tensor_id = 4;
  int same_c = 0, same_d = 0, same_e = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_c += a.bits(i) == c.bits(i);
    same_d += a.bits(i) == d.bits(i);
    same_e += a.bits(i) == e.bits(i);
  }
  CHECK(same_c < 3);
  CHECK(same_d < 3);
  CHECK(same_e < 3);
  CHECK(a.bits(uint64_t(1) << 40) != a.bits(0));  // 64-bit indices reach the counter
}

TEST_CASE("uniform floats: range and moments") {
  rng_stream s{1, 0, rng_purpose::user, 0};
  const int n = 200000;
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const float u = uniform_from_bits(s.bits(uint64_t(i)));
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    sum += u;
    sum2 += double(u) * u;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  // standard error of the mean of U(0,1): sqrt(1/12/n) ~ 6.5e-4; allow 5 SE
  CHECK(std::fabs(mean - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
  CHECK(std::fabs(var - 1.0 / 12) < 0.002);
  CHECK(uniform_from_bits(0xFFFFFFFFu) < 1.0f);
  CHECK(uniform_from_bits(0) == 0.0f);
}

TEST_CASE("16-bit draws: eight elements per Philox call, in order, uniform and independent") {
  rng_stream s{7, 2, rng_purpose::weight, 3};
  // element i takes half (i & 1) of word (i >> 1) & 3 of quad i >> 3
  for (uint64_t i = 0; i < 64; ++i) {
    const uint32_t w = s.quad(i >> 3).w[(i >> 1) & 3];
    CHECK(s.bits16(i) == ((i & 1) ? w >> 16 : w & 0xFFFFu));
  }
  rng_stream shifted = s;  // a range stream that starts at element 8 * 5
  shifted.first_quad = 5;
  for (uint64_t i = 0; i < 16; ++i) CHECK(shifted.bits16(i) == s.bits16(40 + i));
  const int n = 200000;
  double sum = 0, sum2 = 0, cross = 0;
  for (int i = 0; i < n; ++i) {
    const double a = (s.bits16(uint64_t(2 * i)) + 0.5) / 65536.0, b = (s.bits16(uint64_t(2 * i + 1)) + 0.5) / 65536.0;
    REQUIRE(s.bits16(uint64_t(i)) < 65536u);
    sum += a + b;
    sum2 += a * a + b * b;
    cross += (a - 0.5) * (b - 0.5);  // the two halves of one word must not be correlated
  }
  const double m = sum / (2.0 * n), var = sum2 / (2.0 * n) - m * m;
  CHECK(std::fabs(m - 0.5) < 5 * std::sqrt(1.0 / 12 / (2.0 * n)));
  CHECK(std::fabs(var - 1.0 / 12) < 0.002);
  // covariance of independent U(0,1) pairs: mean 0, standard error 1/12/sqrt(n)
  CHECK(std::fabs(cross / n) < 5 * (1.0 / 12) / std::sqrt(double(n)));
}
