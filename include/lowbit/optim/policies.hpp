// lowbit/optim/policies.hpp
// The compile-time policies an optimizer is composed of (besides its rule):
//   states::  how moments are stored: fp32, bf16 (stochastic rounding),
//             int8 (bitsandbytes blockwise dynamic, block 256) or int4
//             (signed 4-bit dynamic / zero-free linear, block 128); the
//             quantized ones keep float32 states for tensors under 4096
//             elements, as bitsandbytes does. Quantized states are
//             re-encoded with stochastic rounding (bitsandbytes rounds to
//             nearest): with nearest rounding a momentum's small per-step
//             increments (1 - beta) g fall below half a code step and are
//             lost, which stalls Lion (tests/optim/test_convergence.cpp).
//   weights:: how the weight the optimizer updates is stored: fp32; bf16 with
//             stochastic rounding and no master copy; an fp32 master with a
//             bf16 working copy; or blockwise quantized (int8 / int4 / nf4 /
//             fp4 / dynamic8, float32 or nested scales) updated in place,
//             with stochastic rounding (or nearest, to show why not).
//   memory::  where states live and where the step runs: memory::host here
//             (CPU threads); memory::device, memory::paged and
//             memory::cpu_offload in optim/cuda_memory.cuh.
// Misuse (an unsigned format for weights, a non-policy type) fails to compile
// with a message saying what to use instead.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../formats/format.hpp"
#include "../formats/quantized_view.hpp"
#include "cpu_step.hpp"
#include "storage.hpp"

namespace lowbit {
namespace optim {

// How one state tensor of n elements is stored.
struct storage_plan {
  storage_kind kind = storage_kind::f32;
  format fmt = format::dynamic8;
  int block_size = 256;
};

struct state_policy_tag {};
struct weight_policy_tag {};
struct memory_policy_tag {};

namespace states {

struct fp32 : state_policy_tag {
  static constexpr const char* name = "fp32";
  static constexpr bool stochastic = false;
  static storage_plan plan(int /*state_index*/, int64_t /*n*/) { return {storage_kind::f32}; }
};

struct bf16 : state_policy_tag {
  static constexpr const char* name = "bf16";
  static constexpr bool stochastic = true;
  static storage_plan plan(int, int64_t) { return {storage_kind::bf16}; }
};

// bitsandbytes-compatible 8-bit blockwise states: signed dynamic map for the
// first moment, unsigned for the second, block 256.
struct int8 : state_policy_tag {
  static constexpr const char* name = "int8";
  static constexpr bool stochastic = true;
  static constexpr int block_size = 256;
  static constexpr int64_t min_quantized_numel = 4096;
  static storage_plan plan(int state_index, int64_t n) {
    if (n < min_quantized_numel) return {storage_kind::f32};
    return {storage_kind::blockwise, state_index == 0 ? format::dynamic8 : format::udynamic8, block_size};
  }
};

// The same storage re-encoded with nearest rounding, as bitsandbytes does:
// kept to measure what stochastic re-encoding buys (Lion stalls with it).
struct int8_nearest : int8 {
  static constexpr const char* name = "int8+rn";
  static constexpr bool stochastic = false;
};

// 4-bit states ("Memory Efficient Optimizers with 4-bit States"): first
// moment on the signed 4-bit dynamic map, second moment on the zero-free
// linear map, block 128.
struct int4 : state_policy_tag {
  static constexpr const char* name = "int4";
  static constexpr bool stochastic = true;
  static constexpr int block_size = 128;
  static constexpr int64_t min_quantized_numel = 4096;
  static storage_plan plan(int state_index, int64_t n) {
    if (n < min_quantized_numel) return {storage_kind::f32};
    return {storage_kind::blockwise, state_index == 0 ? format::dynamic4 : format::ulinear4, block_size};
  }
};

}  // namespace states

enum class rounding { stochastic, nearest };

namespace weights {

// float32 weights, updated in place.
struct fp32 : weight_policy_tag {
  static constexpr const char* name = "fp32";
  static constexpr bool is_quantized = false, has_master = false, stochastic = false;
  static constexpr dtype weight_dtype = dtype::f32;
};

// bfloat16 weights updated in place with stochastic rounding; no master copy.
template <rounding R = rounding::stochastic>
struct bf16_rounded : weight_policy_tag {
  static constexpr const char* name = R == rounding::stochastic ? "bf16+sr" : "bf16+rn";
  static constexpr bool is_quantized = false, has_master = false, stochastic = R == rounding::stochastic;
  static constexpr dtype weight_dtype = dtype::bf16;
};
using bf16 = bf16_rounded<rounding::stochastic>;

// An fp32 master copy owned by the optimizer, written back to the caller's
// bf16 working copy (nearest rounding) after every update.
struct fp32_master_bf16 : weight_policy_tag {
  static constexpr const char* name = "fp32-master+bf16";
  static constexpr bool is_quantized = false, has_master = true, stochastic = false;
  static constexpr dtype weight_dtype = dtype::bf16;
};

// Blockwise quantized weights updated in place (no fp32 master): QFT's int8,
// or int4 / NF4 / FP4, with float32 or nested scales as the caller's
// quantized_view says. The signed dynamic maps (dynamic8, dynamic4) are
// refused: their lowest entry is above -1 (-0.99297 and -0.8875), so a
// block whose largest magnitude is negative would be pulled towards zero
// at every re-encoding of the weight (measured: -1 became -0.70 in 50
// steps of lr 0 with dynamic8); optimizer states re-encode from fresh
// values each step and keep them.
template <format F, rounding R = rounding::stochastic>
struct quantized : weight_policy_tag {
  static_assert(!is_unsigned_format(F) && has_zero_code(F),
                "lowbit::optim::weights::quantized needs a signed format with a zero code: "
                "nf4, fp4, int4 or int8 (udynamic8 / ulinear4 are for non-negative states)");
  static_assert(F != format::dynamic8 && F != format::dynamic4,
                "lowbit::optim::weights::quantized needs a format whose table reaches -1 and +1: nf4, fp4, int4 or "
                "int8 (the signed dynamic maps stop short of -1 and would shrink a weight block whose largest "
                "magnitude is negative at every step; they are state formats)");
  static constexpr const char* name = R == rounding::stochastic ? "quantized+sr" : "quantized+rn";
  static constexpr bool is_quantized = true, has_master = false, stochastic = R == rounding::stochastic;
  static constexpr format weight_format = F;
};

}  // namespace weights

namespace memory {

// Everything in host memory; the step runs on CPU threads. A memory policy
// is an object owned by the optimizer: allocate / release state buffers
// (zero-filled), say which devices' tensors it accepts, compute gradient
// statistics, run the fused step, and synchronize at the end of a step.
struct host : memory_policy_tag {
  static constexpr const char* name = "host";
  static constexpr bool runs_on_device = false;
  void* allocate(size_t bytes) {
    void* p = std::calloc(bytes ? bytes : 1, 1);
    require(p != nullptr, errc::invalid_argument, "optimizer: out of host memory allocating " + std::to_string(bytes) + " bytes");
    return p;
  }
  void release(void* p) { std::free(p); }
  device state_device() const { return device::cpu(); }
  // Optimizer-owned buffers are ordinary host memory.
  void copy_to_host(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
  void copy_from_host(void* dst, const void* src, size_t bytes) const { std::memcpy(dst, src, bytes); }
  // Fills an fp32 master copy from the caller's 16-bit working weights.
  void init_master(float* master, const storage_view& working) {
    for (int64_t i = 0; i < working.n; ++i) master[i] = load_dense(working.kind, working.data, i);
  }
  bool accepts(const device& d) const { return d.host_accessible(); }
  grad_stats gradient_stats(const void* g, dtype t, int64_t n) { return cpu_grad_stats(g, t, n); }
  // Statistics of every gradient of a step (element counts in `n`).
  std::vector<grad_stats> gradient_stats_all(const std::vector<tensor_view>& grads, const std::vector<int64_t>& n) {
    std::vector<grad_stats> out(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) out[i] = gradient_stats(grads[i].data, grads[i].type, n[i]);
    return out;
  }
  template <class Rule>
  void run(const fused_step_args& a, const typename Rule::consts& c) {
    cpu_fused_step<Rule>(a, c);
  }
  void synchronize() {}
};

}  // namespace memory

}  // namespace optim
}  // namespace lowbit
