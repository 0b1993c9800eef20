// lowbit/formats/dynamic_map.hpp
// The bitsandbytes 8-bit "dynamic tree" maps (signed and unsigned), generated
// on the host. Construction (FORMATS.md): for i = 0..6 take k = 2^i values
// (2^(i+1) unsigned), the midpoints of consecutive points of
// linspace(0.1, 1, k+1) in float32, times 10^(i-6); the signed map adds their
// negatives; append 0 and 1; sort. linspace is evaluated the way torch's CPU
// kernel does (float step, first half counted from the start, second half
// from the end) so the generated floats match the reference table; tests
// check the published anchors. Device kernels receive the table by value as a
// `code_table` (see codebooks.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace lowbit {

namespace detail {

inline std::vector<float> torch_style_linspace(float start, float end, int steps) {
  std::vector<float> out(steps);
  const float step = (end - start) / float(steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i)
    out[i] = i < halfway ? start + step * float(i) : end - step * float(steps - i - 1);
  return out;
}

inline std::array<float, 256> make_dynamic_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int k = is_signed ? (1 << i) : (1 << (i + 1));
    const std::vector<float> b = torch_style_linspace(0.1f, 1.0f, k + 1);
    const float scale = float(std::pow(10.0, double(i - 6)));
    for (int j = 0; j < k; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

}  // namespace detail

// Signed map: [0] = -0.99296875, [127] = 0, [255] = 1.
inline const std::array<float, 256>& signed_dynamic_map() {
  static const std::array<float, 256> m = detail::make_dynamic_map(true);
  return m;
}

// Unsigned map: [0] = 0, [255] = 1.
inline const std::array<float, 256>& unsigned_dynamic_map() {
  static const std::array<float, 256> m = detail::make_dynamic_map(false);
  return m;
}

}  // namespace lowbit
