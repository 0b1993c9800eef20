// lowbit/optim/stable_scales.hpp
// The two element-level decisions of optimizer_options::stable_weight_scales,
// shared by the CPU and CUDA steps so both take them bit for bit alike:
// which scale a quantized weight block keeps after an update (its old one
// unless the block's new absmax outgrew it; for nested scales the smallest
// covering scale code under the group's unchanged double-quantization
// parameters), and the snapping of an unmoved weight back onto its grid value
// (with a kept scale, table[c] * s * (1 / s) comes back a few ulps off
// table[c], and stochastic rounding would otherwise re-draw weights that did
// not move).
#pragma once

#include <cstdint>

#include "../core/config.hpp"
#include "../formats/nested_scales.hpp"

namespace lowbit {
namespace optim {

struct stable_scale {
  float value;   // the block's scale after the step
  int code;      // nested scales: the scale code to store, or -1 (keep the stored one / renest)
  bool renest;   // nested scales: no code of the group covers the block; re-quantize all scales
};

// old_scale: the block's decoded scale before the step; m: the absmax of its
// updated values. group_absmax / offset / map: the nested parameters of the
// block's group (ignored when !nested).
LOWBIT_HD stable_scale choose_stable_scale(float old_scale, float m, bool nested, float group_absmax, float offset,
                                           const float* map) {
  if (m <= old_scale) return {old_scale, -1, false};
  if (!nested) return {m, -1, false};
  int best = -1;
  float best_scale = 0.0f;
  for (int c = 0; c < 256; ++c) {
    const float d = decode_nested_scale(uint8_t(c), group_absmax, offset, map);
    if (d >= m && (best < 0 || d < best_scale)) best = c, best_scale = d;
  }
  if (best < 0) return {m, -1, true};
  return {best_scale, best, false};
}

// Where a block-normalized value u between its sorted neighbours below <=
// above snaps: +1 onto `above`, -1 onto `below`, 0 nowhere. The tolerance,
// 2^-20 of the grid value, is far above the few ulps of a decode/encode
// round trip and far below any real update that survives stochastic rounding.
LOWBIT_HD int snap_direction(float u, float below, float above) {
  const float tol_above = 9.5367431640625e-07f * (above < 0 ? -above : above);
  const float tol_below = 9.5367431640625e-07f * (below < 0 ? -below : below);
  return above - u <= tol_above ? 1 : (u - below <= tol_below ? -1 : 0);
}

// Snaps u onto its grid neighbour (snap_direction) in the sorted codebook
// `sorted` of `size` entries, given lo = its floor index; returns the floor
// index of the snapped value. The CPU and CUDA steps both call this.
LOWBIT_HD int snap_onto_grid(float& u, int lo, const float* sorted, int size) {
  const int up = lo + 1 < size ? lo + 1 : lo;
  const int d = snap_direction(u, sorted[lo], sorted[up]);
  if (d > 0) {
    u = sorted[up];
    return up;
  }
  if (d < 0) u = sorted[lo];
  return lo;
}

}  // namespace optim
}  // namespace lowbit
