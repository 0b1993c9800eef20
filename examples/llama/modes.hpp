// examples/llama/modes.hpp
// The training modes and the optimizers behind them. A mode fixes how the
// matrices are stored (float32, bfloat16 updated with stochastic rounding,
// or int8 / NF4 blocks updated in place) and which lowbit optimizer updates
// them (rule x state policy x weight policy). The RMSNorm gains, a few
// thousand numbers, always stay float32 with float32 states under the same
// rule. trainer_optimizer hides the composed types behind a small virtual
// interface so the training loop is written once; make_optimizer builds the
// one a mode names. Each mode is one template instantiation.
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <lowbit/lowbit.hpp>

#include "parameters.hpp"

namespace llama {

enum class rule_kind { adamw, lion };

struct mode_info {
  std::string name;
  std::string description;
  rule_kind rule = rule_kind::adamw;
  matrix_storage storage = matrix_storage::f32;
  quantized_spec qspec;     // when storage == quantized
  bool stochastic = true;   // rounding of the weight update
  bool gpu_only = false;    // needs the CUDA trainer (device-side memory policy)
  float default_lr = 1e-3f;
  bool stable_scales = false;  // keep quantized blocks' scales unless they must grow (lowbit stable_weight_scales)
};

inline const std::vector<mode_info>& training_modes() {
  static const std::vector<mode_info> modes = [] {
    std::vector<mode_info> m;
    auto add = [&](std::string name, std::string desc, rule_kind r, matrix_storage s, quantized_spec q, bool sr,
                   bool gpu, float lr) { m.push_back({std::move(name), std::move(desc), r, s, q, sr, gpu, lr}); };
    const quantized_spec int8_blocks{lowbit::format::int8, 256, false};
    const quantized_spec nf4_blocks{lowbit::format::nf4, 64, true};
    add("fp32-adamw", "baseline: float32 weights, AdamW with float32 states", rule_kind::adamw, matrix_storage::f32, {},
        false, false, 2e-3f);
    add("fp32-lion", "reference: float32 weights, Lion with float32 momentum (the rule without quantization)",
        rule_kind::lion, matrix_storage::f32, {}, false, false, 1e-3f);
    add("bf16-adamw8", "bfloat16 weights (stochastic rounding), AdamW with 8-bit states", rule_kind::adamw,
        matrix_storage::bf16, {}, true, false, 2e-3f);
    add("bf16-lion8", "bfloat16 weights (stochastic rounding), Lion with 8-bit momentum", rule_kind::lion,
        matrix_storage::bf16, {}, true, false, 1e-3f);
    // qft keeps each block's scale unless the block's values outgrow it:
    // over ten seeds that ended 0.70 +- 0.32 points of validation loss
    // below re-encoding the scale every step (docs/RESULTS.md), because a
    // re-encoded scale moves every element's grid and its rounding noise
    // then no longer shrinks as the learning rate decays.
    add("qft", "QFT: int8 blockwise weights updated in place (stochastic rounding, stable block scales), Lion with "
        "8-bit momentum", rule_kind::lion, matrix_storage::quantized, int8_blocks, true, false, 1e-3f);
    m.back().stable_scales = true;
    add("qft-reencode", "QFT with every block's scale re-encoded from its absmax at every step (comparison)",
        rule_kind::lion, matrix_storage::quantized, int8_blocks, true, false, 1e-3f);
    add("qft-rn", "QFT with round-to-nearest weight updates (to show what stochastic rounding buys)",
        rule_kind::lion, matrix_storage::quantized, int8_blocks, false, false, 1e-3f);
    add("nf4", "NF4 weights (nested scales, kept stable) updated in place (stochastic rounding), Lion with 8-bit "
        "momentum", rule_kind::lion, matrix_storage::quantized, nf4_blocks, true, false, 1e-3f);
    m.back().stable_scales = true;
    add("nf4-rn", "NF4 weights with round-to-nearest updates", rule_kind::lion, matrix_storage::quantized, nf4_blocks,
        false, false, 1e-3f);
    add("nf4-f32scales", "NF4 weights with float32 block scales re-encoded every step, stochastic rounding, Lion 8-bit",
        rule_kind::lion, matrix_storage::quantized, {lowbit::format::nf4, 64, false}, true, false, 1e-3f);
    add("paged-adamw8", "bfloat16 weights, AdamW 8-bit states in paged (CUDA managed) memory", rule_kind::adamw,
        matrix_storage::bf16, {}, true, true, 2e-3f);
    add("offload-adamw8", "bfloat16 weights, AdamW 8-bit states offloaded to pinned CPU memory", rule_kind::adamw,
        matrix_storage::bf16, {}, true, true, 2e-3f);
    return m;
  }();
  return modes;
}

inline const mode_info& find_mode(const std::string& name) {
  if (name == "qft-stable")  // renamed on 2026-11-27, when qft took stable scales as its default
    throw lowbit::error(lowbit::errc::invalid_argument,
                        "mode 'qft-stable' is now 'qft' (stable block scales became qft's default; the former qft "
                        "is 'qft-reencode')");
  std::string names;
  for (const mode_info& m : training_modes()) {
    if (m.name == name) return m;
    names += (names.empty() ? "" : ", ") + m.name;
  }
  throw lowbit::error(lowbit::errc::invalid_argument, "unknown mode '" + name + "' (modes: " + names + ")");
}

struct optimizer_hparams {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // matrices only; the RMSNorm gains are never decayed
  uint64_t seed = 0;  // stochastic rounding stream (matrices; the norm gains use seed + 1)
  bool stable_weight_scales = false;  // quantized matrices (see lowbit::optim::optimizer_options)
  // Whether the optimizer checks each gradient for NaN and infinity before
  // stepping it. The sessions turn it off for the two-pass update, which
  // has checked the whole gradient buffer at once and skips the step if any
  // value is not finite, so a second look per tensor would only read every
  // gradient again.
  bool check_each_gradient = true;
  // On the GPU: the step kernels read each check's verdict on the device
  // (lowbit's optimizer_options::defer_gradient_checks), so the update never
  // waits for the GPU per tensor; false: wait on the host
  // (--sync-gradient-checks, for timing comparisons). No effect on the CPU.
  bool defer_gradient_checks = true;
};

// What the training loop needs from its optimizer(s). Parameters are named
// by their index in the param_layout.
class trainer_optimizer {
 public:
  virtual ~trainer_optimizer() = default;
  virtual void set_lr(float lr) = 0;
  virtual void begin_step() = 0;
  // Updates parameter p with its gradient now (numel elements of dtype
  // grad_type: float32, or bfloat16 from the CUDA trainer's --grad-dtype
  // bf16); false if it was skipped (non-finite gradient: weight and states
  // untouched). On the GPU the check is deferred: true ("queued"), and
  // end_step() reports the skip.
  virtual bool step_param(int p, const void* grad, lowbit::dtype grad_type, float grad_scale) = 0;
  bool step_param(int p, const float* grad, float grad_scale) {
    return step_param(p, grad, lowbit::dtype::f32, grad_scale);
  }
  // Range steps (lowbit's optimizer::step_param_range): the element
  // multiple that ranges of tensor p start at, or 0 where tensor p cannot
  // be stepped in ranges (nested quantized scales, paged / offloaded
  // states); then elements [first, first + count) of p from their gradient.
  virtual int64_t range_alignment(int p) const = 0;
  virtual bool step_param_range(int p, int64_t first, const void* grad, lowbit::dtype grad_type, int64_t count,
                                float grad_scale) = 0;
  virtual lowbit::optim::step_report end_step() = 0;
  virtual int64_t step_count() const = 0;
  virtual int64_t state_bytes() const = 0;  // optimizer states, their scales, any master copy
  // The key of the stochastic rounding stream (optimizer_hparams::seed): a
  // checkpoint records it, and resuming with another one is refused.
  virtual uint64_t rounding_seed() const = 0;
  virtual void save(lowbit::safetensors_writer& w) const = 0;
  virtual void load(const lowbit::safetensors_reader& r) = 0;
};

// Whether a memory policy carves its states from slabs (lowbit's
// memory::device::slab_bytes).
template <class M, class = void>
struct has_state_slabs : std::false_type {};
template <class M>
struct has_state_slabs<M, std::void_t<decltype(std::declval<M&>().slab_bytes)>> : std::true_type {};

// Memory is lowbit's memory policy (memory::host here; the CUDA trainer
// composes memory::device / paged / cpu_offload). Store is where the weights
// live: a weight_store (host) or gpu::device_weights; it hands out the views
// the optimizer updates in place (vector_view, dense_view, quantized_view),
// and gradients come from the same memory (grad_device).
template <class Rule, class States, class Weights, class Memory = lowbit::optim::memory::host>
class composed_optimizer final : public trainer_optimizer {
  using matrix_opt = lowbit::optim::optimizer<Rule, States, Weights, Memory>;
  using vector_opt =
      lowbit::optim::optimizer<Rule, lowbit::optim::states::fp32, lowbit::optim::weights::fp32, Memory>;

 public:
  template <class Store>
  composed_optimizer(Store& w, const optimizer_hparams& h, lowbit::device grad_device = lowbit::device::cpu())
      : matrices_(make_hparams(h, h.weight_decay), options(h.seed, h.stable_weight_scales, h)),
        vectors_(make_hparams(h, 0.0f), options(h.seed + 1, false, h)),
        grad_device_(grad_device) {
    const param_layout& L = *w.layout;
    // On a GPU, every state array of one optimizer in one allocation (a
    // slab of their total size), not one cudaMalloc per array: the driver
    // rounds every allocation up to its page size, which the 1B shape's
    // ~230 state arrays would pay each.
    if constexpr (has_state_slabs<Memory>::value) {
      int64_t matrix_bytes = 0, vector_bytes = 0;
      for (const param_info& i : L.params) {
        if (i.matrix) matrix_bytes += matrix_opt::allocated_bytes_for(i.numel, !Weights::is_quantized);
        else vector_bytes += vector_opt::allocated_bytes_for(i.numel);
      }
      matrices_.memory_policy().slab_bytes = size_t(matrix_bytes);
      vectors_.memory_policy().slab_bytes = size_t(vector_bytes);
    }
    index_.assign(L.params.size(), -1);
    for (size_t p = 0; p < L.params.size(); ++p) {
      const param_info& i = L.params[p];
      if (!i.matrix) {
        index_[p] = vectors_.add_param(w.vector_view(int(p)), 0, i.name);
      } else if constexpr (Weights::is_quantized) {
        index_[p] = matrices_.add_param(w.quantized_view(int(p)), 0, i.name);
      } else {
        index_[p] = matrices_.add_param(w.dense_view(int(p)), 0, i.name);
      }
    }
    matrix_flag_.resize(L.params.size());
    numel_.resize(L.params.size());
    for (size_t p = 0; p < L.params.size(); ++p) {
      matrix_flag_[p] = L.params[p].matrix;
      numel_[p] = L.params[p].numel;
    }
  }

  void set_lr(float lr) override {
    matrices_.group(0).lr = lr;
    vectors_.group(0).lr = lr;
  }
  void begin_step() override {
    matrices_.begin_step();
    vectors_.begin_step();
  }
  using trainer_optimizer::step_param;
  bool step_param(int p, const void* grad, lowbit::dtype grad_type, float grad_scale) override {
    const lowbit::tensor_view g =
        lowbit::make_view(const_cast<void*>(grad), grad_type, {numel_[size_t(p)]}, grad_device_);
    return matrix_flag_[size_t(p)] ? matrices_.step_param(index_[size_t(p)], g, grad_scale)
                                   : vectors_.step_param(index_[size_t(p)], g, grad_scale);
  }
  int64_t range_alignment(int p) const override {
    const std::string mem = Memory::name;
    if (mem != "host" && mem != "device") return 0;
    if (!matrix_flag_[size_t(p)]) return vectors_.range_alignment(index_[size_t(p)]);
    const auto& w = matrices_.param(index_[size_t(p)]).weight;
    if (w.is_blockwise() && w.q.layout.nested) return 0;
    return matrices_.range_alignment(index_[size_t(p)]);
  }
  bool step_param_range(int p, int64_t first, const void* grad, lowbit::dtype grad_type, int64_t count,
                        float grad_scale) override {
    const lowbit::tensor_view g = lowbit::make_view(const_cast<void*>(grad), grad_type, {count}, grad_device_);
    return matrix_flag_[size_t(p)] ? matrices_.step_param_range(index_[size_t(p)], first, g, grad_scale)
                                   : vectors_.step_param_range(index_[size_t(p)], first, g, grad_scale);
  }
  lowbit::optim::step_report end_step() override {
    lowbit::optim::step_report r = matrices_.end_step();
    const lowbit::optim::step_report v = vectors_.end_step();
    r.skipped += v.skipped;
    return r;
  }
  int64_t step_count() const override { return matrices_.step_count(); }
  int64_t state_bytes() const override {
    const auto a = matrices_.memory(), b = vectors_.memory();
    return a.state_bytes + a.master_bytes + b.state_bytes + b.master_bytes;
  }
  uint64_t rounding_seed() const override { return matrices_.options().seed; }
  void save(lowbit::safetensors_writer& w) const override {
    lowbit::save_optimizer_state(matrices_, w, "optimizer.");
    lowbit::save_optimizer_state(vectors_, w, "optimizer_norms.");
  }
  void load(const lowbit::safetensors_reader& r) override {
    lowbit::load_optimizer_state(matrices_, r, "optimizer.");
    lowbit::load_optimizer_state(vectors_, r, "optimizer_norms.");
  }

  // Both optimizers' memory policies (e.g. to make a paged one evict).
  template <class Fn>
  void configure_memory(Fn&& fn) {
    fn(matrices_.memory_policy());
    fn(vectors_.memory_policy());
  }

 private:
  static typename Rule::hparams make_hparams(const optimizer_hparams& h, float wd) {
    typename Rule::hparams r;
    r.lr = h.lr;
    r.beta1 = h.beta1;
    r.beta2 = h.beta2;
    r.weight_decay = wd;
    if constexpr (std::is_same<Rule, lowbit::optim::adamw>::value) r.eps = h.eps;
    return r;
  }
  static lowbit::optim::optimizer_options options(uint64_t seed, bool stable_scales, const optimizer_hparams& h) {
    lowbit::optim::optimizer_options o;
    o.seed = seed;
    o.stable_weight_scales = stable_scales;
    o.check_gradients = h.check_each_gradient;
    // On the GPU (memory::device / paged) the fused update's per-tensor
    // finiteness checks are read by the step kernels on the device, so the
    // backward never waits for the GPU per tensor; skips come with
    // end_step(). The host policies check synchronously regardless.
    o.defer_gradient_checks = h.defer_gradient_checks;
    return o;
  }

  matrix_opt matrices_;
  vector_opt vectors_;
  lowbit::device grad_device_;
  std::vector<int> index_;
  std::vector<char> matrix_flag_;
  std::vector<int64_t> numel_;
};

inline std::unique_ptr<trainer_optimizer> make_optimizer(const mode_info& m, weight_store<float>& w,
                                                         optimizer_hparams h) {
  using namespace lowbit::optim;
  h.stable_weight_scales = m.stable_scales;
  using lowbit::format;
  lowbit::require(!m.gpu_only, lowbit::errc::unsupported,
                  "mode '" + m.name + "' keeps optimizer states in CUDA memory: it runs on the trainer's CUDA "
                  "path only (--device cuda, in a build with CUDA on a machine with a GPU)");
  if (m.name == "fp32-adamw") return std::make_unique<composed_optimizer<adamw, states::fp32, weights::fp32>>(w, h);
  if (m.name == "fp32-lion") return std::make_unique<composed_optimizer<lion, states::fp32, weights::fp32>>(w, h);
  if (m.name == "bf16-adamw8") return std::make_unique<composed_optimizer<adamw, states::int8, weights::bf16>>(w, h);
  if (m.name == "bf16-lion8") return std::make_unique<composed_optimizer<lion, states::int8, weights::bf16>>(w, h);
  if (m.name == "qft" || m.name == "qft-reencode")  // same policy; stable scales are an optimizer option
    return std::make_unique<composed_optimizer<lion, states::int8, weights::quantized<format::int8>>>(w, h);
  if (m.name == "qft-rn")
    return std::make_unique<
        composed_optimizer<lion, states::int8, weights::quantized<format::int8, rounding::nearest>>>(w, h);
  if (m.name == "nf4" || m.name == "nf4-f32scales")  // same policy; the scale kind is in the weights' layout
    return std::make_unique<composed_optimizer<lion, states::int8, weights::quantized<format::nf4>>>(w, h);
  if (m.name == "nf4-rn")
    return std::make_unique<
        composed_optimizer<lion, states::int8, weights::quantized<format::nf4, rounding::nearest>>>(w, h);
  throw lowbit::error(lowbit::errc::invalid_argument, "mode '" + m.name + "' has no optimizer");
}

}  // namespace llama
