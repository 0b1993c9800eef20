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

// total_bits 8 gives the 256-entry maps; total_bits 4 (max_exponent_bits 3)
// the 16-entry signed map of 4-bit optimizer states. Unused entries are 0.
inline std::array<float, 256> make_dynamic_map(bool is_signed, int total_bits = 8) {
  const int max_exponent_bits = total_bits - 1;
  const int non_sign_bits = total_bits - (is_signed ? 1 : 0);
  std::vector<float> data;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int k = 1 << (i + non_sign_bits - max_exponent_bits);
    const std::vector<float> b = torch_style_linspace(0.1f, 1.0f, k + 1);
    const float scale = float(std::pow(10.0, double(i - (max_exponent_bits - 1))));
    for (int j = 0; j < k; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};  // 4-bit maps use entries 0..15
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

// Signed 4-bit map (entries 0..15): +-{0.0055, 0.0325, 0.0775, 0.2125,
// 0.4375, 0.6625, 0.8875}, 0 and 1, sorted; the first-moment map of 4-bit
// optimizer states ("Memory Efficient Optimizers with 4-bit States").
inline const std::array<float, 256>& signed_dynamic4_map() {
  static const std::array<float, 256> m = detail::make_dynamic_map(true, 4);
  return m;
}

}  // namespace lowbit
