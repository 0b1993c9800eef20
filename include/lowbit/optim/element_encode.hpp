// lowbit/optim/element_encode.hpp
// Re-encoding one block-normalized value onto a format's sorted codebook,
// in the form the CUDA optimizer step runs it: which sorted entry (and so
// which code) a value takes under nearest or stochastic rounding, with or
// without first snapping an unmoved weight onto its grid (stable scales).
// The CPU step reaches the same entries by separate whole-block passes
// (floor search, snap_onto_grid, then nearest_from_floor or
// stochastic_from_floor; optim/cpu_step.hpp), written to vectorize. Here,
// per element and for few GPU instructions (the QFT step is bound by
// instruction issue, ncu 2026-11-26):
//   - the table is padded with +infinity past the format's entries (a
//     padded_codebook_size array), so the floor search's steps need no
//     clamp at the table's end;
//   - the bucket's four consecutive entries are read at once (independent
//     loads, one address) and give both the floor index and the two
//     neighbours, which the choice then uses without reading them again;
//   - snapping, the choice between the neighbours and the clamp to the
//     table's ends are selects on those values, with no early returns.
// The entry equals the CPU path's for every float input, NaN and
// infinities included; tests/optim/test_element_encode.cpp checks that
// for every format, rounding mode and snapping, and the CUDA step's tests
// compare its output with the CPU step's byte for byte.
#pragma once

#include <cstdint>

#include "../core/config.hpp"
#include "../cpu/floor_index.hpp"
#include "../formats/stochastic_rounding.hpp"
#include "stable_scales.hpp"

namespace lowbit {
namespace optim {

// Entries of a padded sorted table: the format's at most 256 values, then
// +infinity, so that entry start + 3 exists for every bucket start (< 256)
// and every floor index + 1 for a floor index reached from one.
constexpr int padded_codebook_size = 260;
static_assert(cpu::floor_index_table::refine_steps == 2, "bucketed_neighbours reads a bucket's first 4 entries");

// A value's floor index lo in a sorted table and the entries at lo and lo + 1.
struct neighbours {
  int lo;
  float below, above;
};

// The floor index of u (finite: as cpu::floor_indices gives it; +infinity
// may step one entry further into the padding, which the range clamp of
// pick_entry overrides) from its bucket's start, in a padded table.
LOWBIT_HD neighbours bucketed_neighbours(float u, int start, const float* padded) {
  const float* p = padded + start;
  const float s0 = p[0], s1 = p[1], s2 = p[2], s3 = p[3];
  const bool up1 = s1 <= u, up2 = s2 <= u;  // up2 implies up1: the table ascends
  return {start + int(up1) + int(up2), up2 ? s2 : (up1 ? s1 : s0), up2 ? s3 : (up1 ? s2 : s1)};
}

// The neighbours of a floor index found otherwise (the binary search).
LOWBIT_HD neighbours neighbours_at(int lo, const float* padded) { return {lo, padded[lo], padded[lo + 1]}; }

// The sorted entry a value u takes, given its neighbours in a padded table
// whose `size` real entries run from `first` to `last`: nearest (ties to the
// lower entry) or stochastic with the 16 random bits r16; with Snap, u is
// first snapped onto a neighbour within snap_direction's tolerance, which
// then takes that neighbour (its offset from it is 0). Values outside
// [first, last] take the end entries, NaN entry 0.
template <bool Stochastic, bool Snap>
LOWBIT_HD int pick_entry(float u, const neighbours& nb, uint32_t r16, float first, float last, int size) {
  float v = u;
  int entry;
  const bool upper = Stochastic ? round_up_stochastic(u - nb.below, nb.above - nb.below, r16)
                                : nb.above - u < u - nb.below;
  entry = upper ? nb.lo + 1 : nb.lo;
  if (Snap) {
    const int d = snap_direction(u, nb.below, nb.above);
    const bool to_above = d > 0, to_below = d < 0;
    v = to_above ? nb.above : (to_below ? nb.below : u);
    entry = to_above ? nb.lo + 1 : (to_below ? nb.lo : entry);
  }
  return !(v > first) ? 0 : (v >= last ? size - 1 : entry);
}

}  // namespace optim
}  // namespace lowbit
