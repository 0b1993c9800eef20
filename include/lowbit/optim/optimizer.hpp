// lowbit/optim/optimizer.hpp
// The composed optimizer: optimizer<Rule, StatePolicy, WeightPolicy,
// MemoryPolicy>. Register the caller's weights (views, never copied except
// for an fp32 master when the weight policy asks for one), then either
//   step(grads)            : one pass over every gradient for finiteness and
//                            the global norm (clipping), then one fused
//                            update per tensor; or
//   begin_step(); step_param(i, grad) ...; end_step()
//                          : update each tensor as soon as its gradient is
//                            ready (fused backward-update, no full gradient
//                            buffer; global-norm clipping then needs the
//                            caller's own norm pass, passed as grad_scale).
// A tensor whose gradient holds NaN or infinity is skipped: its weight and
// states are untouched and the skip is reported. States are owned by the
// optimizer and allocated through the memory policy.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/view.hpp"
#include "policies.hpp"
#include "rules.hpp"
#include "storage.hpp"

namespace lowbit {
namespace optim {

// Whether a memory policy can defer gradient checks to the device
// (optimizer_options::defer_gradient_checks): it has begin_deferred_checks,
// queue_gradient_check and deferred_skips (memory::device and paged).
template <class M, class = void>
struct defers_gradient_checks : std::false_type {};
template <class M>
struct defers_gradient_checks<M, std::void_t<decltype(std::declval<M&>().begin_deferred_checks(0))>>
    : std::true_type {};

struct optimizer_options {
  uint64_t seed = 0;           // stochastic rounding stream
  float max_grad_norm = 0.0f;  // > 0: scale all gradients so the global L2 norm is at most this
  float max_update = 0.0f;     // > 0: clamp each element's update to +-max_update
  // Blockwise (quantized) weights: keep each block's decoded scale (and,
  // with nested scales, the double-quantization parameters) from step to
  // step unless the block's new absmax exceeds it. By default every step
  // recomputes every block's absmax and re-quantizes all scales, so a
  // block's grid moves even where no weight changed and stochastic rounding
  // re-draws all its elements; with nested 4-bit weights that noise makes
  // training diverge once the learning rate is small (docs/OPTIMIZERS.md).
  // The CPU and CUDA steps take the same decisions (optim/stable_scales.hpp).
  // Refused with round-to-nearest weights, where a kept scale would ratchet
  // (hence off by default). With stochastic rounding it helped LLM
  // fine-tuning (int8 QFT weights: docs/RESULTS.md, "Stable block scales")
  // and hurt a least-squares test, for reasons not understood
  // (docs/OPTIMIZERS.md).
  bool stable_weight_scales = false;
  // Before updating, every step reads each gradient once to find non-finite
  // values (that tensor's update is then skipped) and the global norm. Set
  // false to drop that pass where the caller guarantees finite gradients
  // (e.g. it checks them itself): a step then reads the gradient only once,
  // as PyTorch's fused AdamW does without a GradScaler, so a NaN or
  // infinity goes into the weights and states. Requires max_grad_norm == 0;
  // step_report::grad_norm is then -1 (not computed).
  bool check_gradients = true;
  // Where the step runs on the GPU (memory::device, memory::paged; a
  // policy of your own with defers_gradient_checks, above): the
  // finiteness check of step_param / step_param_range is queued on the
  // stream with the step, which reads its verdict on the device, instead of
  // waiting for it on the host. A fused backward-update then never
  // synchronizes per tensor (a GPU synchronization per tensor leaves the
  // device idle while the host queues the next work). The price: those
  // calls return true before the verdict exists, and skips are reported by
  // end_step() (step_report::skipped, skipped_params in index order) and
  // param(i).skipped after it. Weights, states and Adam's step counts end
  // exactly as with synchronous checks. step() and host-side policies
  // (memory::host, memory::cpu_offload) check synchronously either way.
  bool defer_gradient_checks = false;
};

struct step_report {
  int64_t step = 0;              // the optimizer step just taken (1-based)
  double grad_norm = 0.0;        // global L2 norm of the finite gradients (step() only; -1 if not checked)
  float grad_scale = 1.0f;       // clipping factor applied
  int skipped = 0;               // tensors skipped for non-finite gradients
  std::vector<int> skipped_params;
};

struct memory_report {
  int64_t params = 0;
  int64_t weight_bytes = 0;  // caller's weights as stored (codes + scales for quantized)
  int64_t master_bytes = 0;  // optimizer-owned fp32 master weights
  int64_t state_bytes = 0;   // optimizer states (+ their scales)
  double bytes_per_param() const { return params ? double(weight_bytes + master_bytes + state_bytes) / params : 0.0; }
};

// Everything the optimizer keeps about one registered tensor.
struct param_record {
  std::string name;
  int group = 0;
  uint32_t id = 0;
  int64_t steps = 0;    // updates applied (Adam's bias-correction t)
  int64_t skipped = 0;  // updates skipped for non-finite gradients
  int64_t counted_step = 0;  // the optimizer step `steps` last counted (range steps count once)
  int64_t previous_counted_step = 0;  // counted_step before that (a deferred skip restores it)
  int64_t skip_step = 0;     // the optimizer step `skipped` last counted
  std::vector<int64_t> shape;
  storage_view weight, weight_copy, state1, state2;
  const format_tables* weight_tables = nullptr;
  const format_tables* state1_tables = nullptr;
  const format_tables* state2_tables = nullptr;
};

// The storage part of a fused step for one registered tensor (gradient,
// scaling, rounding and random stream are filled in by the caller).
inline fused_step_args step_args_for(const param_record& r) {
  fused_step_args a;
  a.weight = r.weight;
  a.weight_copy = r.weight_copy;
  a.state1 = r.state1;
  a.state2 = r.state2;
  a.weight_tables = r.weight_tables;
  a.state1_tables = r.state1_tables;
  a.state2_tables = r.state2_tables;
  a.tensor_id = r.id;
  return a;
}

template <class Rule, class StatePolicy = states::fp32, class WeightPolicy = weights::fp32,
          class MemoryPolicy = memory::host>
class optimizer {
  static_assert(std::is_base_of<state_policy_tag, StatePolicy>::value,
                "StatePolicy must be one of lowbit::optim::states::{fp32, bf16, int8, int4}");
  static_assert(std::is_base_of<weight_policy_tag, WeightPolicy>::value,
                "WeightPolicy must be one of lowbit::optim::weights::{fp32, bf16, fp32_master_bf16, quantized<F>}");
  static_assert(std::is_base_of<memory_policy_tag, MemoryPolicy>::value,
                "MemoryPolicy must be lowbit::optim::memory::host (or device / paged / cpu_offload from "
                "<lowbit/optim/cuda_memory.cuh>)");
  static_assert(Rule::n_states >= 1 && Rule::n_states <= 2, "a Rule keeps one or two states");

 public:
  using rule = Rule;
  using hparams = typename Rule::hparams;
  using weight_arg = std::conditional_t<WeightPolicy::is_quantized, quantized_view, tensor_view>;

  explicit optimizer(const hparams& defaults = hparams{}, const optimizer_options& options = {})
      : options_(options) {
    defaults.validate();
    require(std::isfinite(options.max_grad_norm) && options.max_grad_norm >= 0.0f, errc::invalid_argument,
            "optimizer_options.max_grad_norm must be >= 0");
    require(std::isfinite(options.max_update) && options.max_update >= 0.0f, errc::invalid_argument,
            "optimizer_options.max_update must be >= 0");
    // With nearest rounding a kept scale turns into a ratchet: a block's
    // largest weight can move outward (the scale grows with it) but its
    // inward moves round back, so scales grow without bound.
    require(!(options.stable_weight_scales && WeightPolicy::is_quantized && !WeightPolicy::stochastic),
            errc::invalid_argument,
            "optimizer_options.stable_weight_scales needs stochastic rounding of the weights (the weight policy "
            "rounds to nearest)");
    require(options.check_gradients || options.max_grad_norm == 0.0f, errc::invalid_argument,
            "optimizer_options.max_grad_norm needs the gradient pass (check_gradients = true) to compute the norm");
    groups_.push_back(defaults);
  }
  optimizer(const optimizer&) = delete;
  optimizer& operator=(const optimizer&) = delete;
  ~optimizer() {
    for (void* p : owned_) memory_.release(p);
  }

  // The memory policy instance (e.g. to set the CUDA stream of memory::device).
  MemoryPolicy& memory_policy() { return memory_; }
  const MemoryPolicy& memory_policy() const { return memory_; }

  // A parameter group with its own hyperparameters; returns its index.
  int add_group(const hparams& h) {
    h.validate();
    groups_.push_back(h);
    return int(groups_.size()) - 1;
  }
  hparams& group(int g) {
    require(g >= 0 && g < int(groups_.size()), errc::invalid_argument, "optimizer: no parameter group " + std::to_string(g));
    return groups_[size_t(g)];
  }
  const optimizer_options& options() const { return options_; }

  // Registers a weight (the caller keeps ownership); returns its index.
  int add_param(const weight_arg& w, int group_index = 0, std::string name = {}) {
    require(!in_step_, errc::invalid_argument,
            "optimizer.add_param: a step is in progress (call end_step() first)");
    require(group_index >= 0 && group_index < int(groups_.size()), errc::invalid_argument,
            "optimizer.add_param: no parameter group " + std::to_string(group_index));
    param_record r;
    r.name = name.empty() ? "param" + std::to_string(params_.size()) : std::move(name);
    // Names key the saved states (save_optimizer_state): refuse a second
    // one now rather than when a checkpoint is written.
    require(!names_.count(r.name), errc::invalid_argument,
            "optimizer.add_param: a parameter is already named '" + r.name + "'; names must be unique");
    r.group = group_index;
    r.id = uint32_t(params_.size());
    const std::string what = "weight '" + r.name + "'";
    if constexpr (WeightPolicy::is_quantized) {
      require(memory_.accepts(w.dev), errc::invalid_argument,
              what + " is in " + device_name(w.dev.kind) + " memory, which memory::" + MemoryPolicy::name +
                  " cannot update");
      require(w.layout.fmt == WeightPolicy::weight_format, errc::invalid_argument,
              what + " is " + format_name(w.layout.fmt) + " but the weight policy expects " +
                  format_name(WeightPolicy::weight_format));
      r.weight = blockwise_storage(w, what.c_str());
      r.weight_tables = tables(w.layout.fmt);
      r.shape = {w.layout.n};
    } else {
      require(memory_.accepts(w.dev), errc::invalid_argument,
              what + " is in " + device_name(w.dev.kind) + " memory, which memory::" + MemoryPolicy::name +
                  " cannot update");
      require(w.type == WeightPolicy::weight_dtype, errc::invalid_argument,
              what + " has dtype " + dtype_name(w.type) + " but the weight policy " + WeightPolicy::name +
                  " expects " + dtype_name(WeightPolicy::weight_dtype));
      storage_view caller = dense_storage(w, what.c_str());
      r.shape.assign(w.shape, w.shape + w.ndim);
      if constexpr (WeightPolicy::has_master) {
        r.weight_copy = caller;
        r.weight.kind = storage_kind::f32;
        r.weight.n = caller.n;
        r.weight.data = allocate(size_t(caller.n) * sizeof(float));
        memory_.init_master(static_cast<float*>(r.weight.data), caller);
      } else {
        r.weight = caller;
      }
    }
    const int64_t n = r.weight.n;
    r.state1 = make_state(0, n, r.state1_tables);
    if (Rule::n_states == 2) r.state2 = make_state(1, n, r.state2_tables);
    names_.insert(r.name);
    params_.push_back(std::move(r));
    return int(params_.size()) - 1;
  }

  int size() const { return int(params_.size()); }
  const param_record& param(int i) const { return params_.at(size_t(i)); }
  param_record& param_mutable(int i) { return params_.at(size_t(i)); }
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }

  // Starts a step for step_param(); returns its 1-based number.
  int64_t begin_step() { return start_step(options_.defer_gradient_checks); }

  // Updates parameter i with `grad` now (fused backward-update). Returns
  // false, leaving weight and states untouched, when grad is not finite
  // (never with check_gradients = false, which does not look; nor with
  // defer_gradient_checks on a device, where end_step() reports the skip).
  bool step_param(int i, const tensor_view& grad, float grad_scale = 1.0f) {
    require(in_step_, errc::invalid_argument, "optimizer.step_param: call begin_step() first");
    param_record& r = params_.at(size_t(i));
    check_grad_scale(grad_scale, "optimizer.step_param of '" + r.name + "'");
    check_grad(r, grad);
    if (!options_.check_gradients) return apply(i, grad, grad_scale, true);
    if (deferring_) return apply(i, grad, grad_scale, true, 0, -1, queue_check(i, grad.data, grad.type, r.weight.n));
    const grad_stats st = memory_.gradient_stats(grad.data, grad.type, r.weight.n);
    return apply(i, grad, grad_scale, st.finite);
  }

  // Updates elements [first, first + grad.numel()) of parameter i with
  // `grad`, the gradient of those elements only: a tensor whose gradient
  // appears in parts (a tied embedding's rows, chunk by chunk) is stepped
  // part by part, with no whole gradient buffer. Ranges that cover the
  // tensor once in a step give the bits of one step_param of the whole
  // tensor: the same element math, block scales and random bits (the
  // streams are keyed by whole-tensor element indices), and Adam's bias
  // correction counts the step once. `first` must be a multiple of
  // range_alignment(i) (a whole number of every block of the weight and
  // states), and the range must end at such a multiple or at the tensor's
  // end. A range whose gradient is not finite is skipped (its elements'
  // weights and states untouched; the tensor is reported skipped once per
  // step) while the step's other ranges apply: where a tensor must be
  // skipped as a whole, check its gradient parts first. Not available for
  // quantized weights with nested scales (re-quantized per tensor) nor
  // with memory::paged / cpu_offload (they move whole tensors).
  bool step_param_range(int i, int64_t first, const tensor_view& grad, float grad_scale = 1.0f) {
    require(in_step_, errc::invalid_argument, "optimizer.step_param_range: call begin_step() first");
    param_record& r = params_.at(size_t(i));
    const std::string what = "optimizer.step_param_range of '" + r.name + "'";
    check_grad_scale(grad_scale, what);
    require(std::string(MemoryPolicy::name) == "host" || std::string(MemoryPolicy::name) == "device",
            errc::unsupported,
            what + ": memory::" + MemoryPolicy::name + " steps whole tensors only (use step_param)");
    require(!(r.weight.is_blockwise() && r.weight.q.layout.nested), errc::unsupported,
            what + ": quantized weights with nested scales are re-quantized per tensor; step them whole");
    const int64_t count = grad.numel(), n = r.weight.n, align = range_alignment(i);
    require(first >= 0 && count >= 0 && first <= n && count <= n - first, errc::invalid_argument,
            what + ": elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
                ") are outside the tensor's " + std::to_string(n));
    require(first % align == 0 && (first + count == n || count % align == 0), errc::invalid_argument,
            what + ": a range must start at a multiple of " + std::to_string(align) +
                " elements and end at one or at the tensor's end, got [" + std::to_string(first) + ", " +
                std::to_string(first + count) + ")");
    require_contiguous(grad, (what + " gradient").c_str());
    require(grad.type == dtype::f32 || grad.type == dtype::bf16 || grad.type == dtype::f16, errc::invalid_argument,
            what + ": the gradient must be float32, bfloat16 or float16, got " + dtype_name(grad.type));
    require(memory_.accepts(grad.dev), errc::invalid_argument,
            what + ": the gradient is in " + device_name(grad.dev.kind) + " memory, which memory::" +
                MemoryPolicy::name + " cannot read");
    if (count == 0) return true;
    if (deferring_) return apply(i, grad, grad_scale, true, first, count, queue_check(i, grad.data, grad.type, count));
    const bool finite =
        !options_.check_gradients || memory_.gradient_stats(grad.data, grad.type, count).finite;
    return apply(i, grad, grad_scale, finite, first, count);
  }

  // The element multiple that step_param_range's ranges start at for
  // parameter i: the fused step's tile, a whole number of every block.
  int64_t range_alignment(int i) const { return fused_tile_size(step_args_for(params_.at(size_t(i)))); }

  step_report end_step() {
    require(in_step_, errc::invalid_argument, "optimizer.end_step: no step in progress");
    memory_.synchronize();
    in_step_ = false;
    if constexpr (defers_gradient_checks<MemoryPolicy>::value)
      if (deferring_) collect_deferred_skips();
    deferring_ = false;
    return report_;
  }

  // One full step: gradient statistics for all tensors (global clipping),
  // then the fused updates. grads[i] belongs to param(i).
  step_report step(const std::vector<tensor_view>& grads) {
    require(grads.size() == params_.size(), errc::invalid_argument,
            "optimizer.step: got " + std::to_string(grads.size()) + " gradients for " +
                std::to_string(params_.size()) + " parameters");
    for (size_t i = 0; i < grads.size(); ++i) check_grad(params_[i], grads[i]);
    start_step(false);  // its statistics pass below checks every gradient first, on the host
    if (!options_.check_gradients) {
      report_.grad_norm = -1.0;
      for (size_t i = 0; i < grads.size(); ++i) apply(int(i), grads[i], 1.0f, true);
      return end_step();
    }
    std::vector<int64_t> counts(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) counts[i] = params_[i].weight.n;
    const std::vector<grad_stats> stats = memory_.gradient_stats_all(grads, counts);  // one sync on a GPU
    double total = 0.0;
    for (size_t i = 0; i < grads.size(); ++i)
      if (stats[i].finite) total += stats[i].sumsq;
    report_.grad_norm = std::sqrt(total);
    float scale = 1.0f;
    if (options_.max_grad_norm > 0.0f && report_.grad_norm > double(options_.max_grad_norm))
      scale = float(double(options_.max_grad_norm) / (report_.grad_norm + 1e-6));
    report_.grad_scale = scale;
    for (size_t i = 0; i < grads.size(); ++i) apply(int(i), grads[i], scale, stats[i].finite);
    return end_step();
  }

  // Storage of weights and states, measured on what is allocated.
  memory_report memory() const {
    memory_report m;
    for (const param_record& r : params_) {
      m.params += r.weight.n;
      if (WeightPolicy::has_master) {
        m.master_bytes += r.weight.bytes();
        m.weight_bytes += r.weight_copy.bytes();
      } else {
        m.weight_bytes += r.weight.bytes();
      }
      m.state_bytes += r.state1.bytes() + r.state2.bytes();
    }
    return m;
  }

  // Optimizer-state bytes for a tensor of n elements under this policy.
  static int64_t state_bytes_for(int64_t n) {
    int64_t b = 0;
    for (int s = 0; s < Rule::n_states; ++s) {
      const storage_plan p = StatePolicy::plan(s, n);
      if (p.kind == storage_kind::blockwise) b += make_layout(p.fmt, n, p.block_size, false).total_bytes();
      else b += int64_t(p.kind == storage_kind::f32 ? 4 : 2) * n;
    }
    return b;
  }

  // Bytes this optimizer allocates for a tensor of n dense or quantized
  // elements: its state arrays (codes and block scales apart) and, for a
  // master-weight policy with dense weights, the float32 master, each
  // rounded up to 256 bytes, the alignment of a piece carved from a slab
  // (memory::device::slab_bytes). Summed over the tensors, a slab that
  // holds everything.
  static int64_t allocated_bytes_for(int64_t n, bool dense_weights = true) {
    auto piece = [](int64_t bytes) { return (std::max<int64_t>(bytes, 1) + 255) / 256 * 256; };
    int64_t b = WeightPolicy::has_master && dense_weights ? piece(n * 4) : 0;
    for (int s = 0; s < Rule::n_states; ++s) {
      const storage_plan p = StatePolicy::plan(s, n);
      if (p.kind == storage_kind::blockwise) {
        const blockwise_layout l = make_layout(p.fmt, n, p.block_size, false);
        b += piece(l.code_bytes()) + piece(l.n_blocks() * 4);
      } else {
        b += piece(int64_t(p.kind == storage_kind::f32 ? 4 : 2) * n);
      }
    }
    return b;
  }

 private:
  void* allocate(size_t bytes) {
    void* p = memory_.allocate(bytes);
    owned_.push_back(p);
    return p;
  }

  const format_tables* tables(format f) {
    auto it = tables_.find(f);
    if (it == tables_.end()) it = tables_.emplace(f, std::make_unique<format_tables>(make_format_tables(f))).first;
    return it->second.get();
  }

  storage_view make_state(int index, int64_t n, const format_tables*& tab) {
    const storage_plan p = StatePolicy::plan(index, n);
    storage_view s;
    s.kind = p.kind;
    s.n = n;
    if (p.kind == storage_kind::blockwise) {
      const blockwise_layout l = make_layout(p.fmt, n, p.block_size, false);
      s.q.layout = l;
      s.q.codes = static_cast<uint8_t*>(allocate(size_t(l.code_bytes())));
      s.q.absmax = static_cast<float*>(allocate(size_t(l.n_blocks()) * sizeof(float)));
      s.q.dev = memory_.state_device();
      s.data = s.q.codes;
      tab = tables(p.fmt);
    } else {
      s.data = allocate(size_t(n) * (p.kind == storage_kind::f32 ? 4 : 2));
    }
    return s;
  }

  // A caller's clipping factor: a NaN one (from a NaN global norm) would
  // write NaN weights while the gradient itself passed the checks, and a
  // negative one would ascend.
  static void check_grad_scale(float s, const std::string& what) {
    require(std::isfinite(s) && s >= 0.0f, errc::invalid_argument,
            what + ": grad_scale must be finite and >= 0, got " + std::to_string(s));
  }

  void check_grad(const param_record& r, const tensor_view& g) const {
    const std::string what = "gradient of '" + r.name + "'";
    require_contiguous(g, what.c_str());
    require(g.numel() == r.weight.n, errc::invalid_argument,
            what + " has " + std::to_string(g.numel()) + " elements, the weight has " + std::to_string(r.weight.n));
    require(g.type == dtype::f32 || g.type == dtype::bf16 || g.type == dtype::f16, errc::invalid_argument,
            what + " must be float32, bfloat16 or float16, got " + dtype_name(g.type));
    require(memory_.accepts(g.dev), errc::invalid_argument,
            what + " is in " + device_name(g.dev.kind) + " memory, which memory::" + MemoryPolicy::name +
                " cannot read");
  }

  // begin_step(), with the step's checks deferred (where the step runs on
  // the device) or not.
  int64_t start_step(bool defer) {
    require(!in_step_, errc::invalid_argument, "optimizer.begin_step: previous step not ended");
    in_step_ = true;
    report_ = step_report{};
    report_.step = ++step_;
    deferring_ = false;
    if constexpr (defers_gradient_checks<MemoryPolicy>::value)
      if (defer && options_.check_gradients) {
        memory_.begin_deferred_checks(int(params_.size()));
        deferred_checks_.assign(params_.size(), 0);
        deferring_ = true;
      }
    return step_;
  }

  // Queues parameter i's deferred gradient check (n values); returns the
  // device flag its step reads.
  const int* queue_check(int i, const void* g, dtype t, int64_t n) {
    if constexpr (defers_gradient_checks<MemoryPolicy>::value) {
      ++deferred_checks_[size_t(i)];
      return memory_.queue_gradient_check(g, t, n, i);
    } else {
      return nullptr;  // (never called: deferring_ stays false without the policy's support)
    }
  }

  // After a step with deferred checks: report each parameter that had a
  // non-finite gradient, as the synchronous checks would have, and undo the
  // step count of a parameter none of whose ranges was applied (apply()
  // counted it when it queued the step; its kernels changed nothing).
  void collect_deferred_skips() {
    const std::vector<int> skips = memory_.deferred_skips(int(params_.size()));
    for (size_t i = 0; i < params_.size(); ++i) {
      if (skips[i] == 0) continue;
      param_record& r = params_[i];
      r.skip_step = step_;
      ++r.skipped;
      ++report_.skipped;
      report_.skipped_params.push_back(int(i));
      if (skips[i] >= deferred_checks_[i] && r.counted_step == step_) {
        --r.steps;
        r.counted_step = r.previous_counted_step;
      }
    }
  }

  // One fused update of parameter i, or of its elements [first, first +
  // count) (count < 0: the whole tensor). skip_flag: the device flag of a
  // deferred check, which the step kernel reads.
  bool apply(int i, const tensor_view& grad, float grad_scale, bool finite, int64_t first = 0, int64_t count = -1,
             const int* skip_flag = nullptr) {
    param_record& r = params_[size_t(i)];
    if (!finite) {
      if (r.skip_step != step_) {  // once per step, however many ranges were skipped
        r.skip_step = step_;
        ++r.skipped;
        ++report_.skipped;
        report_.skipped_params.push_back(i);
      }
      return false;
    }
    if (r.counted_step != step_) {  // once per step, however many ranges the step takes
      r.previous_counted_step = r.counted_step;
      r.counted_step = step_;
      ++r.steps;
    }
    const hparams& h = groups_[size_t(r.group)];
    fused_step_args a = step_args_for(r);
    if (count >= 0) {
      a.weight = storage_part(r.weight, first, count);
      a.weight_copy = storage_part(r.weight_copy, first, count);
      a.state1 = storage_part(r.state1, first, count);
      a.state2 = storage_part(r.state2, first, count);
      a.first_element = first;
    }
    a.grad = grad.data;
    a.grad_type = grad.type;
    a.grad_scale = grad_scale;
    a.max_update = options_.max_update;
    a.weight_stochastic = WeightPolicy::stochastic;
    a.state_stochastic = StatePolicy::stochastic;
    a.stable_weight_scales = options_.stable_weight_scales;
    a.seed = options_.seed;
    a.step = uint32_t(step_);
    a.skip_flag = skip_flag;
    memory_.template run<Rule>(a, Rule::make_consts(h, r.steps));
    return true;
  }

  optimizer_options options_;
  MemoryPolicy memory_;
  std::vector<hparams> groups_;
  std::vector<param_record> params_;
  std::set<std::string> names_;  // of params_, unique
  std::vector<void*> owned_;
  std::map<format, std::unique_ptr<format_tables>> tables_;
  int64_t step_ = 0;
  bool in_step_ = false;
  bool deferring_ = false;               // this step's checks are deferred (defer_gradient_checks)
  std::vector<int> deferred_checks_;     // checks queued this step, per parameter
  step_report report_;
};

}  // namespace optim
}  // namespace lowbit
