// lowbit/core/reduce.hpp
// Deterministic sum of squares (for gradient norms): the order of every
// addition is fixed by the element count alone, never by threads or launch
// shape, so the CPU and CUDA implementations return bit-identical doubles.
// Order: elements are cut into chunks of 4096; in a chunk, 256 lanes each sum
// a strided subset (lane, lane+256, ...) in double, then a fixed pairwise tree
// adds the lanes; chunk results are then added the same way with 1024 lanes.
#pragma once

#include <cstdint>
#include <vector>

#include "config.hpp"
#include "dtype.hpp"

namespace lowbit {

constexpr int sumsq_chunk = 4096;
constexpr int sumsq_chunk_lanes = 256;
constexpr int sumsq_final_lanes = 1024;

// Lane `lane` of chunk `c`: sum of x^2 (in double) over its strided elements,
// scaled by `scale` first (so clipping coefficients see the scaled gradient).
template <class T>
LOWBIT_HD double sumsq_lane(const T* x, int64_t n, int64_t c, int lane) {
  double s = 0.0;
  const int64_t begin = c * sumsq_chunk, end = begin + sumsq_chunk < n ? begin + sumsq_chunk : n;
  for (int64_t i = begin + lane; i < end; i += sumsq_chunk_lanes) {
    const double v = double(to_float(x[i]));
    s = add_rn(s, mul_rn(v, v));  // no FMA: the host computes the same
  }
  return s;
}

// In-place fixed pairwise tree over `lanes` (a power of two) partial sums.
inline double tree_sum(std::vector<double>& p) {
  for (size_t stride = p.size() / 2; stride >= 1; stride /= 2)
    for (size_t j = 0; j < stride; ++j) p[j] += p[j + stride];
  return p.empty() ? 0.0 : p[0];
}

// Sum of the chunk results with the final lane order.
inline double sum_chunk_results(const std::vector<double>& chunks) {
  std::vector<double> lane(sumsq_final_lanes, 0.0);
  for (int j = 0; j < sumsq_final_lanes; ++j)
    for (size_t i = size_t(j); i < chunks.size(); i += sumsq_final_lanes) lane[size_t(j)] += chunks[i];
  return tree_sum(lane);
}

}  // namespace lowbit
