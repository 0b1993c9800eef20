// Tests for formats/stochastic_rounding.hpp: each stochastic conversion
// returns one of the two neighbouring representable values, and its mean over
// many independent draws equals the input within 5 standard errors (the
// standard error of a two-point distribution with gap g and probability p is
// g * sqrt(p (1 - p) / N)). Also shows round-to-nearest losing small updates
// that stochastic rounding keeps.
#include <doctest/doctest.h>

#include <lowbit/formats/stochastic_rounding.hpp>

#include <cmath>
#include <vector>

using namespace lowbit;

namespace {

constexpr int draws = 40000;

// Checks mean and support of a stochastic rounding of x whose neighbours are
// lo < x < hi (as doubles); `round(x, bits)` returns the decoded double.
template <class Round>
void check_unbiased(double x, double lo, double hi, Round round, uint32_t stream_id) {
  rng_stream s{12345, stream_id, rng_purpose::user, 0};
  double sum = 0;
  for (int i = 0; i < draws; ++i) {
    const double r = round(s.bits16(uint64_t(i)));  // the 16-bit draws the optimizer step uses
    REQUIRE((r == lo || r == hi));
    sum += r;
  }
  const double p = (x - lo) / (hi - lo);
  const double se = (hi - lo) * std::sqrt(std::max(p * (1 - p), 1.0 / draws) / draws);
  CHECK(std::fabs(sum / draws - x) <= 5 * se + 1e-12 * std::fabs(x));
}

}  // namespace

TEST_CASE("the stochastic choice takes the upper neighbour for round(2^16 p) of the 2^16 draws") {
  // Over all 65536 values of r16, round_up_stochastic(offset, gap, r16) must
  // be true for the number of draws whose midpoint (r16 + 1/2) / 2^16 lies
  // below p = offset / gap, computed here in float64: round(2^16 p). The
  // float product may move one draw at a boundary, so +-1 is allowed; the
  // resulting probability is then within 2^-17 + 2^-16 of p.
  uint32_t seed = 1;
  const auto next = [&] { return seed = seed * 1664525u + 1013904223u; };
  for (int trial = 0; trial < 300; ++trial) {
    const float gap = std::ldexp(1.0f + float(next() >> 8) / 16777216.0f, int(next() % 40) - 30);
    const double p = trial < 3 ? double(trial) / 2 : double(next() >> 8) / 16777216.0;
    const float offset = float(p * double(gap));
    const double pf = double(offset) / double(gap);  // the probability the float inputs ask for
    int ups = 0;
    for (uint32_t r = 0; r < 65536u; ++r) ups += round_up_stochastic(offset, gap, r) ? 1 : 0;
    const double want = std::floor(pf * 65536.0 + 0.5);  // draws with (r + 1/2) / 2^16 < pf
    CAPTURE(gap);
    CAPTURE(pf);
    CHECK(std::fabs(double(ups) - want) <= 1.0);
    CHECK(std::fabs(double(ups) / 65536.0 - pf) <= 1.5 / 65536.0);
  }
  CHECK(!round_up_stochastic(0.0f, 0.25f, 0xFFFFu));  // on the lower value: never up
  CHECK(round_up_stochastic(0.25f, 0.25f, 0xFFFFu));  // on the upper value: always up
  CHECK(round_up_stochastic(0.5f, 1.0f, 0x7FFFu) != round_up_stochastic(0.5f, 1.0f, 0x8000u));  // the half split
  CHECK(round_up_stochastic(0.5f, 1.0f, 0x12340000u | 0x7FFFu));  // only the low 16 bits count
}

TEST_CASE("fp32 -> bf16 stochastic rounding is unbiased") {
  uint32_t id = 0;
  for (float base : {1.0f, -3.5f, 1e-30f, 7.0e30f, -0.0078125f})
    for (double frac : {0.01, 0.25, 0.5, 0.77, 0.99}) {
      const bf16 b = to_bf16(base);
      const double lo = to_float(b), hi = to_float(bf16{uint16_t(b.bits + 1)});
      const float x = float(lo + frac * (hi - lo));
      CAPTURE(x);
      check_unbiased(double(x), std::min(lo, hi), std::max(lo, hi),
                     [&](uint32_t r) { return double(to_float(to_bf16_stochastic(x, r))); }, id++);
    }
  CHECK(to_bf16_stochastic(1.0f, 0xFFFFFFFFu).bits == to_bf16(1.0f).bits);  // exact values stay
  CHECK(std::isnan(to_float(to_bf16_stochastic(NAN, 123))));
  CHECK(to_bf16_stochastic(3.4028235e38f, 0xFFFFu).bits == 0x7F7F);  // saturates at the largest finite bf16
}

TEST_CASE("fp32 -> fp16 stochastic rounding is unbiased, subnormals included") {
  uint32_t id = 100;
  for (float base : {1.0f, -3.5f, 6.0e-8f, -1.0e-5f, 60000.0f})
    for (double frac : {0.01, 0.3, 0.5, 0.9}) {
      const fp16 h = to_fp16(base);
      const double a = to_float(h), b = to_float(fp16{uint16_t(h.bits + 1)});
      const double lo = std::min(a, b), hi = std::max(a, b);
      const float x = float(lo + frac * (hi - lo));
      CAPTURE(x);
      check_unbiased(double(x), lo, hi, [&](uint32_t r) { return double(to_float(to_fp16_stochastic(x, r))); },
                     id++);
    }
  CHECK(to_float(to_fp16_stochastic(70000.0f, 0)) == 65504.0f);
  CHECK(std::isinf(to_float(to_fp16_stochastic(INFINITY, 0))));
}

TEST_CASE("stochastic encoding into every format is unbiased between neighbours") {
  for (int f = 0; f < format_count; ++f) {
    const sorted_codebook t = make_sorted_codebook(format(f));
    const code_table dec = make_code_table(format(f));
    CAPTURE(std::string(format_name(format(f))));
    // every pair of neighbours for 4-bit formats, a spread of pairs for 8-bit
    const int stride = is_4bit(format(f)) ? 1 : 17;
    for (int k = 0; k + 1 < t.size; k += stride) {
      const double lo = t.value[k], hi = t.value[k + 1];
      REQUIRE(lo < hi);
      for (double frac : {0.2, 0.5, 0.9}) {
        const float u = float(lo + frac * (hi - lo));
        if (!(double(u) > lo && double(u) < hi)) continue;
        check_unbiased(double(u), lo, hi,
                       [&](uint32_t r) {
                         return double(dec.value[encode_stochastic(u, r, t.value, t.code, t.size, t.steps)]);
                       },
                       uint32_t(1000 + f * 300 + k));
      }
      CHECK(dec.value[encode_stochastic(float(lo), 0xFFFFFFFFu, t.value, t.code, t.size, t.steps)] == float(lo));
    }
    CHECK(dec.value[encode_stochastic(2.0f, 0, t.value, t.code, t.size, t.steps)] == t.value[t.size - 1]);
  }
  CHECK(make_sorted_codebook(format::int8).size == 255);
  CHECK(make_sorted_codebook(format::int4).size == 15);
  CHECK(make_sorted_codebook(format::fp4).size == 15);
  CHECK(make_sorted_codebook(format::nf4).size == 16);
  CHECK(make_sorted_codebook(format::dynamic8).size == 256);
}

TEST_CASE("round-to-nearest loses small updates that stochastic rounding keeps") {
  // 2000 updates of +1e-4 to a bf16 weight at 1.0 (bf16 spacing at 1 is 2^-7):
  // nearest rounding never moves; stochastic rounding tracks the true sum.
  bf16 nearest = to_bf16(1.0f), stochastic = to_bf16(1.0f);
  rng_stream s{7, 0, rng_purpose::weight, 0};
  for (int step = 0; step < 2000; ++step) {
    s.step = uint32_t(step);
    nearest = to_bf16(to_float(nearest) + 1e-4f);
    stochastic = to_bf16_stochastic(to_float(stochastic) + 1e-4f, s.bits(0));
  }
  CHECK(to_float(nearest) == 1.0f);
  // expected 1.2; each step adds a two-point error of sd <= 2^-8 (bf16 spacing
  // at [1, 2) is 2^-7), so after 2000 steps sd <= 2^-8 * sqrt(2000) = 0.175;
  // the sum of independent errors is far tighter in practice; allow 0.06
  // (> 5 sd of the actual p(1-p) spread, p = 1e-4 / 2^-7 = 0.0128)
  CHECK(std::fabs(double(to_float(stochastic)) - 1.2) < 0.06);
}
