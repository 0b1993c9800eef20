// lowbit/optim/stable_scales.hpp
// The two element-level decisions of optimizer_options::stable_weight_scales,
// shared by the CPU and CUDA steps so both take them bit for bit alike:
// which scale a quantized weight block keeps after an update (its old one
// unless the block's new absmax outgrew it; for nested scales the smallest
// covering scale code under the group's unchanged double-quantization
// parameters), and the snapping of an unmoved weight back onto its grid value
// (with a kept scale, table[c] * s * (1 / s) comes back a few ulps off
// table[c], and stochastic rounding would otherwise re-draw weights that did
// not move). The CPU step finds the nested scale code with a binary search
// over the sorted map (choose_stable_scale_sorted), which chooses what the
// full search chooses.
#pragma once

#include <algorithm>
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

// The nested scale map's codes sorted by their values: lets the CPU step
// find choose_stable_scale's code in a binary search instead of decoding all
// 256 (that search took about 9 % of the nested NF4 step on the CPU).
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

// choose_stable_scale (host only) with `sorted` = sort_scale_map(map): the
// same result for every input (tests/optim/test_stable_scales.cpp compares
// them). Why it is the same: a decoded scale, map[c] * group_absmax +
// offset rounded twice, never decreases as map[c] grows, because
// group_absmax >= 0 (an absmax) and rounding is monotone. So the codes whose scale covers m form
// a tail of the sorted order; its first entry has the smallest covering
// scale, and the codes tying with it follow it, among which the full search
// keeps the lowest code.
inline stable_scale choose_stable_scale_sorted(float old_scale, float m, bool nested, float group_absmax,
                                               float offset, const float* map, const sorted_scale_map& sorted) {
  if (m <= old_scale) return {old_scale, -1, false};
  if (!nested) return {m, -1, false};
  auto decode = [&](int i) { return decode_nested_scale(sorted.code[i], group_absmax, offset, map); };
  int lo = 0, hi = 256;  // first index whose scale covers m
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (decode(mid) >= m) hi = mid;
    else lo = mid + 1;
  }
  if (lo == 256) return {m, -1, true};
  const float best = decode(lo);
  int code = sorted.code[lo];
  for (int i = lo + 1; i < 256 && decode(i) == best; ++i) code = sorted.code[i] < code ? sorted.code[i] : code;
  return {best, code, false};
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
