// examples/llama/tests/bitwise.hpp
// Helpers of the tests that hold a vectorized or reordered CPU op to its
// scalar form bit for bit (test_attention_lanes, test_rmsnorm_rows,
// test_swiglu_blocks):
// normally distributed inputs from a fixed seed, and an exact comparison of
// two arrays' bytes (so that -0.0 vs 0.0 or two NaN payloads also count).
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace llama {
namespace bitwise {

template <class T>
std::vector<T> normal(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(g));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace bitwise
}  // namespace llama
