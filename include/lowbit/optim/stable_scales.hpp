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

#include <algorithm>
#include <cmath>
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

// The nested scale map's codes sorted by their values (sort_scale_map):
// lets the CPU step find the smallest covering scale code with a binary
// search instead of decoding all 256 (that full search took about 9 % of
// the nested NF4 step on the CPU). The CUDA kernel keeps the full search.
struct sorted_scale_map {
  uint8_t code[256];  // code[i] has the i-th smallest map value (ties in code order)
};

inline sorted_scale_map sort_scale_map(const float* map) {
  int order[256];
  for (int c = 0; c < 256; ++c) order[c] = c;
  std::stable_sort(order, order + 256, [&](int a, int b) { return map[a] < map[b]; });
  sorted_scale_map s;
  for (int i = 0; i < 256; ++i) s.code[i] = uint8_t(order[i]);
  return s;
}

// old_scale: the block's decoded scale before the step; m: the absmax of its
// updated values. group_absmax / offset / map: the nested parameters of the
// block's group (ignored when !nested). sorted: sort_scale_map(map) for the
// binary search, or null for the full search; both choose the same code for
// every input (tests/optim/test_stable_scales.cpp compares them). Why: a
// decoded scale, map[c] * group_absmax + offset rounded twice, never
// decreases as map[c] grows, because group_absmax >= 0 (an absmax) and
// rounding is monotone. So the codes whose scale covers m form a tail of
// the sorted order; its first entry has the smallest covering scale, and the
// codes tying with it follow it, among which the full search keeps the
// lowest code.
LOWBIT_HD stable_scale choose_stable_scale(float old_scale, float m, bool nested, float group_absmax, float offset,
                                           const float* map, const sorted_scale_map* sorted = nullptr) {
  if (m <= old_scale) return {old_scale, -1, false};
  if (!nested) return {m, -1, false};
  int best = -1;
  float best_scale = 0.0f;
  if (sorted) {
    int lo = 0, hi = 256;  // the first sorted index whose scale covers m
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (decode_nested_scale(sorted->code[mid], group_absmax, offset, map) >= m) hi = mid;
      else lo = mid + 1;
    }
    if (lo < 256) best = sorted->code[lo], best_scale = decode_nested_scale(sorted->code[lo], group_absmax, offset, map);
    for (int i = lo + 1; i < 256 && decode_nested_scale(sorted->code[i], group_absmax, offset, map) == best_scale; ++i)
      best = sorted->code[i] < best ? sorted->code[i] : best;
  } else {
    for (int c = 0; c < 256; ++c) {
      const float d = decode_nested_scale(uint8_t(c), group_absmax, offset, map);
      if (d >= m && (best < 0 || d < best_scale)) best = c, best_scale = d;
    }
  }
  if (best < 0) return {m, -1, true};
  return {best_scale, best, false};
}

// Where a block-normalized value u between its sorted neighbours below <=
// above snaps: +1 onto `above`, -1 onto `below`, 0 nowhere. The tolerance,
// 2^-20 of the grid value, is far above the few ulps of a decode/encode
// round trip and far below any real update that survives stochastic rounding.
LOWBIT_HD int snap_direction(float u, float below, float above) {
  const float tol_above = 9.5367431640625e-07f * fabsf(above);  // fabsf: one operand modifier on a GPU
  const float tol_below = 9.5367431640625e-07f * fabsf(below);
  return above - u <= tol_above ? 1 : (u - below <= tol_below ? -1 : 0);
}

// Snaps u onto its grid neighbour (snap_direction) in the sorted codebook
// `sorted` of `size` entries, given lo = its floor index; returns the floor
// index of the snapped value. The CPU and CUDA steps both call this; it is
// written as selects, without branches, so that the CPU's loop over a block
// vectorizes.
LOWBIT_HD int snap_onto_grid(float& u, int lo, const float* sorted, int size) {
  const int up = lo + 1 < size ? lo + 1 : lo;
  const float below = sorted[lo], above = sorted[up];
  const int d = snap_direction(u, below, above);
  u = d > 0 ? above : (d < 0 ? below : u);
  return d > 0 ? up : lo;
}

}  // namespace optim
}  // namespace lowbit
