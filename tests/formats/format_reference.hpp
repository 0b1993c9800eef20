// Float64 reference facts about each format used by the format tests: the
// sorted decode table, the largest reconstruction error of a normalized value
// in [-1, 1] (half the widest gap between neighbours, or the distance from
// the table's ends to +-1), and random data generators.
#pragma once

#include <lowbit/formats/codebooks.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace ref {

inline std::vector<double> table(lowbit::format f) {
  const lowbit::code_table t = lowbit::make_code_table(f);
  std::vector<double> v;
  for (int c = 0; c < (lowbit::is_4bit(f) ? 16 : 256); ++c) v.push_back(double(t.value[c]));
  return v;
}

// Worst |u - decode(encode(u))| over u in the format's input range: [0, 1]
// for the unsigned map, [-1, 1] otherwise.
inline double max_normalized_error(lowbit::format f) {
  std::vector<double> v = table(f);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  double worst = 0;
  for (size_t i = 0; i + 1 < v.size(); ++i) worst = std::max(worst, (v[i + 1] - v[i]) / 2);
  const double lo = lowbit::is_unsigned_format(f) ? 0.0 : -1.0;
  worst = std::max(worst, v.front() - lo);
  worst = std::max(worst, 1.0 - v.back());
  return worst;
}

inline std::vector<float> normal(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

// Student-t with 2 degrees of freedom: heavy tails, occasional huge outliers.
inline std::vector<float> heavy_tailed(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<double> d;
  std::chi_squared_distribution<double> c(2.0);
  std::vector<float> x(n);
  for (auto& v : x) v = float(d(g) / std::sqrt(c(g) / 2.0));
  return x;
}

}  // namespace ref
