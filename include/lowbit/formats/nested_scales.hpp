// lowbit/formats/nested_scales.hpp
// Double quantization of block scales (bitsandbytes "compress_statistics"):
// offset = mean(absmax); the values absmax - offset are quantized blockwise
// (nested blocks of 256) with the signed 8-bit dynamic map. Decoding a scale
// is map[code] * nested_absmax + offset, computed as a rounded multiply then
// a rounded add (no FMA), as bitsandbytes does in two separate operations.
//
// The mean is computed in a fixed order that does not depend on threads or
// launch shape: 1024 lanes each sum a strided subset in double, then a fixed
// pairwise tree adds the lanes. The CUDA kernel uses exactly this order, so
// the offset is bit-identical on CPU and GPU.
#pragma once

#include <cstdint>
#include <vector>

#include "../core/config.hpp"
#include "block_codec.hpp"
#include "codebooks.hpp"

namespace lowbit {

constexpr int mean_lanes = 1024;

// Lane j's partial sum of the deterministic mean.
LOWBIT_HD double mean_lane_sum(const float* a, int64_t n, int lane) {
  double s = 0.0;
  for (int64_t i = lane; i < n; i += mean_lanes) s += double(a[i]);
  return s;
}

// Host implementation of the deterministic mean (returns 0 for n == 0).
inline float deterministic_mean(const float* a, int64_t n) {
  if (n == 0) return 0.0f;
  std::vector<double> lane(mean_lanes);
  for (int j = 0; j < mean_lanes; ++j) lane[j] = mean_lane_sum(a, n, j);
  for (int stride = mean_lanes / 2; stride >= 1; stride /= 2)
    for (int j = 0; j < stride; ++j) lane[j] += lane[j + stride];
  return float(lane[0] / double(n));
}

LOWBIT_HD float nested_centered(float absmax, float offset) { return add_rn(absmax, -offset); }

LOWBIT_HD float decode_nested_scale(uint8_t code, float nested_absmax, float offset, const float* signed_map) {
  return add_rn(mul_rn(signed_map[code], nested_absmax), offset);
}

// Quantizes one nested block of `count` (<= 256) scales: the definition,
// element by element. cpu::quantize_nested_scales runs it in vectorizing
// loops (cpu/vector_codec.hpp) and cuda::quantize one element per thread;
// tests compare both with it.
inline void encode_nested_block(const float* absmax, int64_t count, float offset, const float* signed_map,
                                uint8_t* codes, float* nested_absmax) {
  float m = 0.0f;
  for (int64_t i = 0; i < count; ++i) m = absmax_step(m, nested_centered(absmax[i], offset));
  *nested_absmax = m;
  const float inv = inverse_scale(m);
  for (int64_t i = 0; i < count; ++i)
    codes[i] = dynamic_encode(mul_rn(nested_centered(absmax[i], offset), inv), signed_map);
}

}  // namespace lowbit
