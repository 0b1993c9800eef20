// Tests for formats/codebooks.hpp and formats/dynamic_map.hpp: exact table
// values from FORMATS.md, encode thresholds at and around every midpoint, and
// the dynamic map anchors and structure.
#include <doctest/doctest.h>

#include <lowbit/formats/codebooks.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

using namespace lowbit;

TEST_CASE("NF4 table is the canonical float32 table") {
  const double ref[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                          -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                          0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                          0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  for (int c = 0; c < 16; ++c) CHECK(nf4_value(c) == float(ref[c]));
  CHECK(zero_code(format::nf4) == 7);
}

TEST_CASE("FP4 table follows the bitsandbytes bit order") {
  const double raw[8] = {0, 0.0625, 8, 12, 4, 6, 2, 3};
  for (int c = 0; c < 16; ++c) {
    const double mag = raw[c & 7] / 12.0;
    CHECK(fp4_value(c) == float((c & 8) ? -mag : mag));
  }
  CHECK(fp4_encode(-1e-9f) == 8);  // tiny negative -> negative zero
  CHECK(fp4_encode(0.0f) == 0);
  CHECK(fp4_encode(1.0f) == 3);
  CHECK(fp4_encode(-1.0f) == 11);
}

// For a monotonic list of (value, code) pairs, x exactly on a midpoint takes
// the lower code and the next float above takes the upper one.
template <class Encode>
static void check_thresholds(const std::vector<std::pair<double, int>>& sorted, Encode enc) {
  for (size_t i = 0; i + 1 < sorted.size(); ++i) {
    const float mid = float((sorted[i].first + sorted[i + 1].first) / 2.0);
    CHECK(enc(mid) == sorted[i].second);
    CHECK(enc(std::nextafter(mid, 2.0f)) == sorted[i + 1].second);
    CHECK(enc(std::nextafter(mid, -2.0f)) == sorted[i].second);
    CHECK(enc(float(sorted[i].first)) == sorted[i].second);
  }
}

TEST_CASE("NF4 encode thresholds are midpoints with strict >") {
  std::vector<std::pair<double, int>> s;
  for (int c = 0; c < 16; ++c) s.push_back({double(nf4_value(c)), c});
  check_thresholds(s, [](float x) { return int(nf4_encode(x)); });
  CHECK(nf4_encode(-1.0f) == 0);
  CHECK(nf4_encode(1.0f) == 15);
  CHECK(nf4_encode(0.0f) == 7);
}

TEST_CASE("FP4 encode thresholds on magnitudes, both signs") {
  std::vector<std::pair<double, int>> pos;
  for (int c = 0; c < 8; ++c) pos.push_back({double(fp4_value(c)), c});
  std::sort(pos.begin(), pos.end());
  check_thresholds(pos, [](float x) { return int(fp4_encode(x)); });
  std::vector<std::pair<double, int>> neg;
  for (auto p : pos) neg.push_back({-p.first, p.second | 8});
  std::reverse(neg.begin(), neg.end());
  // on the negative side the tie goes to the smaller magnitude (larger value)
  for (size_t i = 0; i + 1 < neg.size(); ++i) {
    const float mid = float((neg[i].first + neg[i + 1].first) / 2.0);
    CHECK(fp4_encode(mid) == neg[i + 1].second);
    CHECK(fp4_encode(std::nextafter(mid, -2.0f)) == neg[i].second);
  }
}

TEST_CASE("int4 and int8 are symmetric linear grids") {
  for (int q = -7; q <= 7; ++q) {
    const uint8_t c = int4_encode(float(q) / 7.0f);
    CHECK(int4_value(c) == float(q) / 7.0f);
  }
  for (int q = -127; q <= 127; ++q) CHECK(int8_value(int8_encode(float(q) / 127.0f)) == float(q) / 127.0f);
  CHECK(int4_value(int4_encode(2.0f)) == 1.0f);  // clamps
  CHECK(int8_value(int8_encode(-2.0f)) == -1.0f);
  CHECK(int4_encode(0.5f / 7.0f) == 0);  // tie to even
  CHECK(int4_encode(1.5f / 7.0f) == 2);
}

TEST_CASE("dynamic maps match the published anchors and construction") {
  const auto& s = signed_dynamic_map();
  const auto& u = unsigned_dynamic_map();
  CHECK(s[0] == -0.99296875f);
  CHECK(s[127] == 0.0f);
  CHECK(s[255] == 1.0f);
  CHECK(u[0] == 0.0f);
  CHECK(u[255] == 1.0f);
  CHECK(std::is_sorted(s.begin(), s.end()));
  CHECK(std::is_sorted(u.begin(), u.end()));
  // symmetric except for the extra +1.0: s[k] == -s[254 - k]
  for (int k = 0; k < 127; ++k) CHECK(s[k] == -s[254 - k]);
  // smallest positive entries: 1e-6 * midpoint of linspace(0.1, 1, 2) = 0.55e-6
  CHECK(s[128] == doctest::Approx(0.55e-6).epsilon(1e-6));
  CHECK(u[1] == doctest::Approx(0.325e-6).epsilon(1e-6));
  // every entry is within float rounding of its float64 construction value
  std::vector<double> ref;
  for (int i = 0; i < 7; ++i) {
    const int k = 1 << i;
    for (int j = 0; j < k; ++j) {
      const double a = 0.1 + 0.9 * j / k, b = 0.1 + 0.9 * (j + 1) / k;
      ref.push_back(std::pow(10.0, i - 6) * (a + b) / 2);
      ref.push_back(-ref.back());
    }
  }
  ref.push_back(0);
  ref.push_back(1);
  std::sort(ref.begin(), ref.end());
  for (int k = 0; k < 256; ++k) CHECK(std::fabs(double(s[k]) - ref[k]) <= 4e-7 * std::fabs(ref[k]) + 1e-12);
}

TEST_CASE("4-bit optimizer-state maps") {
  const auto& d4 = signed_dynamic4_map();
  const double mags[7] = {0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875};
  for (int k = 0; k < 7; ++k) {
    CHECK(d4[size_t(6 - k)] == doctest::Approx(-mags[k]).epsilon(1e-6));
    CHECK(d4[size_t(8 + k)] == doctest::Approx(mags[k]).epsilon(1e-6));
  }
  CHECK(d4[7] == 0.0f);
  CHECK(d4[15] == 1.0f);
  for (int c = 0; c < 16; ++c) {
    CHECK(ulinear4_value(c) == float(c + 1) / 16.0f);
    CHECK(ulinear4_encode(float(c + 1) / 16.0f) == c);
    if (c < 15) {
      CHECK(ulinear4_encode(float(c + 1.5) / 16.0f) == c);  // tie -> lower
      CHECK(ulinear4_encode(std::nextafter(float(c + 1.5) / 16.0f, 2.0f)) == c + 1);
    }
  }
  CHECK(ulinear4_encode(0.0f) == 0);
  for (int c = 0; c < 16; ++c) CHECK(dynamic_encode<4>(d4[size_t(c)], d4.data()) == c);
}

TEST_CASE("dynamic encode picks the nearest entry, ties to the lower") {
  const auto& s = signed_dynamic_map();
  for (int k = 0; k < 256; ++k) CHECK(dynamic_encode<8>(s[k], s.data()) == k);
  for (int k = 0; k < 255; ++k) {
    const double mid = (double(s[k]) + double(s[k + 1])) / 2.0;
    const float below = std::nextafter(float(mid), -2.0f), above = std::nextafter(float(mid), 2.0f);
    if (double(below) < mid) CHECK(dynamic_encode<8>(below, s.data()) == k);
    if (double(above) > mid) CHECK(dynamic_encode<8>(above, s.data()) == k + 1);
  }
  CHECK(dynamic_encode<8>(-1.0f, s.data()) == 0);
  CHECK(dynamic_encode<8>(2.0f, s.data()) == 255);
}

TEST_CASE("decode tables agree with the per-format value functions") {
  for (int f = 0; f < format_count; ++f) {
    const code_table t = make_code_table(format(f));
    if (format(f) != format::ulinear4) CHECK(t.value[zero_code(format(f))] == 0.0f);
  }
  CHECK(make_code_table(format::dynamic8).value[0] == signed_dynamic_map()[0]);
}
