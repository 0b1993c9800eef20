// tests/cpu/row_gather_inputs.hpp
// Inputs shared by the CPU and GPU tests of dequantize_rows: a random
// matrix (standard normal, or its absolute values for the unsigned
// formats) and row indices that always include the first and last row and
// a repeat.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace row_gather_inputs {

inline std::vector<float> random_matrix(int64_t n, unsigned seed, bool non_negative) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = non_negative ? std::fabs(d(g)) : d(g);
  return x;
}

// `count` (>= 4) indices in [0, rows): the last and first row, a repeat, the rest random.
inline std::vector<int32_t> random_indices(int64_t rows, int64_t count, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(rows - 1));
  std::vector<int32_t> idx(static_cast<size_t>(count));
  for (auto& i : idx) i = d(g);
  idx[0] = int32_t(rows - 1);
  idx[1] = 0;
  idx[3] = idx[2];
  return idx;
}

}  // namespace row_gather_inputs
