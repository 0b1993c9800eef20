// lowbit/optim/fused_step.hpp
// The arguments of one fused optimizer step on one tensor, shared by the CPU
// and CUDA executors: where the weight, its optional bf16 working copy and the
// states live, the gradient, the clipping factors and the random stream. Also
// the tile size rule: a tile is a whole number of every blockwise block
// involved, so each tile can be decoded, updated and re-encoded (with fresh
// block scales) on its own, without any full-size temporary buffer.
#pragma once

#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/rng.hpp"
#include "storage.hpp"

namespace lowbit {
namespace optim {

struct fused_step_args {
  storage_view weight;       // updated in place (f32, bf16, f16 or blockwise)
  storage_view weight_copy;  // optional bf16/f16 working copy written by nearest rounding
  storage_view state1;       // momentum (none for rules without one)
  storage_view state2;       // Adam's second moment (none otherwise)
  const format_tables* weight_tables = nullptr;  // for blockwise storages
  const format_tables* state1_tables = nullptr;
  const format_tables* state2_tables = nullptr;
  const void* grad = nullptr;
  dtype grad_type = dtype::f32;
  float grad_scale = 1.0f;   // global-norm clipping factor
  float max_update = 0.0f;   // > 0: clamp every element's update to +-max_update
  bool weight_stochastic = true;  // stochastic rounding of bf16/f16/blockwise weights
  bool state_stochastic = true;   // stochastic rounding of bf16/f16/blockwise states (else nearest)
  bool stable_weight_scales = false;  // blockwise weights: keep a block's scale unless its absmax grows
  uint64_t seed = 0;
  uint32_t tensor_id = 0;
  uint32_t step = 0;
  // Range steps (optimizer::step_param_range): the storages above are views
  // of elements [first_element, first_element + weight.n) of the tensor; the
  // random streams are keyed by whole-tensor element indices, so stepping a
  // tensor in ranges draws the bits one whole step draws. A multiple of
  // fused_tile_size (and so of 8).
  int64_t first_element = 0;
  // Deferred gradient check (optimizer_options::defer_gradient_checks): a
  // device int that a check queued before this step on the same stream
  // sets non-zero when the gradient holds NaN or infinity; the CUDA step
  // reads it and then changes nothing. Null: no check to wait for (the
  // host steps never take one).
  const int* skip_flag = nullptr;

  LOWBIT_HD rng_stream stream(rng_purpose p) const {
    return {seed, tensor_id, p, step, uint64_t(first_element) >> 3};
  }
};

inline int storage_block(const storage_view& s) { return s.is_blockwise() ? s.q.layout.block_size : 1; }

// Tile length: at least 256 and a multiple of every blockwise block size.
inline int64_t fused_tile_size(const fused_step_args& a) {
  int64_t t = 256;
  for (const storage_view* s : {&a.weight, &a.state1, &a.state2})
    if (s->is_blockwise() && s->q.layout.block_size > t) t = s->q.layout.block_size;
  return t;
}

}  // namespace optim
}  // namespace lowbit
