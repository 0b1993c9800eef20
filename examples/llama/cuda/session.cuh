// examples/llama/cuda/session.cuh
// One training run on CUDA: the twin of session.hpp's training_session.
// The weights live on the device (device_weights, mirroring a host
// weight_store that initialisation, Hugging Face loading and checkpoints
// use), the optimizer is the mode's lowbit optimizer composed with a CUDA
// memory policy (memory::device; memory::paged with eviction after each
// tensor's step for paged-adamw8; memory::cpu_offload for offload-adamw8),
// the gradient buffer is on the device (the largest tensor's worth with the
// fused backward-update), float32 or, with --grad-dtype bf16 (bfloat16
// activations only), bfloat16: half the bytes, every gradient rounded to
// bfloat16 once per step (a tied head's twice, see model.cuh); the
// optimizers read bfloat16 gradients as they are. The model is
// cuda_model<A>. step() is the CPU session's step, with the gradient pass
// on the device.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <lowbit/lowbit.cuh>

#include "../checkpoint.hpp"
#include "../config.hpp"
#include "../modes.hpp"
#include "../parameters.hpp"
#include "../session.hpp"
#include "device_buffer.cuh"
#include "device_weights.cuh"
#include "model.cuh"
#include "phase_events.cuh"

namespace llama {
namespace gpu {

// The lowbit optimizer of a mode, updating the device weights in place.
inline std::unique_ptr<trainer_optimizer> make_device_optimizer(const mode_info& m, device_weights& w,
                                                                optimizer_hparams h) {
  using namespace lowbit::optim;
  using lowbit::format;
  h.stable_weight_scales = m.stable_scales;
  const lowbit::device dev = lowbit::device::cuda();
  if (m.name == "fp32-adamw")
    return std::make_unique<composed_optimizer<adamw, states::fp32, weights::fp32, memory::device>>(w, h, dev);
  if (m.name == "fp32-lion")
    return std::make_unique<composed_optimizer<lion, states::fp32, weights::fp32, memory::device>>(w, h, dev);
  if (m.name == "bf16-adamw8")
    return std::make_unique<composed_optimizer<adamw, states::int8, weights::bf16, memory::device>>(w, h, dev);
  if (m.name == "bf16-lion8")
    return std::make_unique<composed_optimizer<lion, states::int8, weights::bf16, memory::device>>(w, h, dev);
  if (m.name == "qft" || m.name == "qft-reencode")
    return std::make_unique<
        composed_optimizer<lion, states::int8, weights::quantized<format::int8>, memory::device>>(w, h, dev);
  if (m.name == "qft-rn")
    return std::make_unique<composed_optimizer<lion, states::int8,
                                               weights::quantized<format::int8, rounding::nearest>, memory::device>>(
        w, h, dev);
  if (m.name == "nf4" || m.name == "nf4-f32scales")
    return std::make_unique<
        composed_optimizer<lion, states::int8, weights::quantized<format::nf4>, memory::device>>(w, h, dev);
  if (m.name == "nf4-rn")
    return std::make_unique<composed_optimizer<lion, states::int8,
                                               weights::quantized<format::nf4, rounding::nearest>, memory::device>>(
        w, h, dev);
  if (m.name == "paged-adamw8") {
    auto o = std::make_unique<composed_optimizer<adamw, states::int8, weights::bf16, memory::paged>>(w, h, dev);
    // states go back to host memory after each tensor's step, so device
    // memory holds one tensor's states at a time (bitsandbytes' paging
    // under memory pressure, made explicit)
    o->configure_memory([](memory::paged& p) { p.evict_after_step = true; });
    return o;
  }
  if (m.name == "offload-adamw8")
    return std::make_unique<composed_optimizer<adamw, states::int8, weights::bf16, memory::cpu_offload>>(w, h, dev);
  throw lowbit::error(lowbit::errc::invalid_argument, "mode '" + m.name + "' has no CUDA optimizer");
}

inline std::string cuda_device_name() {
  int dev = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  LOWBIT_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return std::string(p.name);
}

template <class A>
class cuda_session final : public session_base {
 public:
  cuda_session(const llama_config& cfg, const mode_info& mode, const session_options& o)
      : cfg_(cfg), mode_(mode), opts_(o), layout_(cfg), host_(layout_, mode.storage, mode.qspec),
        plan_(layout_, o.fused_update) {
    lowbit::require(o.grad_dtype == lowbit::dtype::f32 || o.grad_dtype == lowbit::dtype::bf16,
                    lowbit::errc::invalid_argument, "--grad-dtype must be f32 or bf16");
    check_session_options(o);
    lowbit::require(o.grad_dtype == lowbit::dtype::f32 || std::is_same<A, lowbit::bf16>::value,
                    lowbit::errc::unsupported,
                    "--grad-dtype bf16 needs bfloat16 activations (--gpu-activations bf16 with quantized weights, or "
                    "a mode with bfloat16 weights; mode '" + mode.name + "' runs with float32 activations here): "
                    "cuBLAS has no float32 x float32 -> bfloat16 GEMM");
    // What the device had in use before this run allocated anything (the
    // CUDA context, other processes): peak_device_mib less this is what the
    // run itself took, the figure comparable with PyTorch's
    // max_memory_allocated (which counts tensors only).
    LOWBIT_CUDA_CHECK(cudaFree(nullptr));  // creates the context now
    sample_memory();
    start_used_ = peak_used_;
    dev_ = std::make_unique<device_weights>(host_);
    optimizer_ = make_device_optimizer(mode, *dev_, optimizer_hparams_for(o));
    // With the fused update and a tied head, the tied tensor's gradient is
    // made and stepped one vocabulary chunk at a time at the end of the
    // backward where the optimizer can step it in ranges (not nested
    // quantized scales, not paged / offloaded states): no whole gradient
    // buffer of vocab x dim, at the price of recomputing the head's logits
    // once more. The chunks are then whole ranges of the optimizer.
    const int64_t align = optimizer_->range_alignment(layout_.embed);
    tied_in_chunks_ = o.fused_update && cfg.tied_embeddings && align > 0;
    plan_ = gradient_plan(layout_, o.fused_update, tied_in_chunks_);
    const int64_t row_multiple = tied_in_chunks_ ? align / std::gcd(align, int64_t(cfg.dim)) : 1;
    model_ = std::make_unique<cuda_model<A>>(cfg, layout_, *dev_, o.batch, o.seq, o.checkpointing,
                                             o.logits_chunk_bytes, row_multiple, o.attention_chunk_bytes);
    if (tied_in_chunks_) chunk_grad_bytes_ = model_->reserve_chunk_gradient(bf16_grads() ? 2 : 4);
    if (bf16_grads()) {
      grads16_.resize(plan_.size);
      grads16_.zero();
    } else {
      grads32_.resize(plan_.size);
      grads32_.zero();
    }
    sample_memory();
  }

  const llama_config& config() const override { return cfg_; }
  const mode_info& mode() const override { return mode_; }
  const session_options& options() const override { return opts_; }
  const param_layout& layout() const override { return layout_; }
  weight_store<float>& weights() override { return host_; }
  void weights_changed() override { dev_->upload(host_); }
  void weights_to_host() override {
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
    dev_->download(host_);
  }
  trainer_optimizer& optimizer() override { return *optimizer_; }
  int64_t weight_bytes() const override { return dev_->bytes(); }
  int64_t gradient_bytes() const override { return grads32_.bytes() + grads16_.bytes() + chunk_grad_bytes_; }
  int64_t activation_bytes() const override { return model_->activation_bytes(); }
  bool on_cuda() const override { return true; }
  std::string device_description() const override {
    std::string d = "cuda (" + cuda_device_name() + "), " + lowbit::dtype_name(lowbit::dtype_of<A>::value) +
                    " activations, " + lowbit::dtype_name(opts_.grad_dtype) + " gradients";
    if (model_->vocab_chunk() < cfg_.vocab_size)
      d += ", logits in chunks of " + std::to_string(model_->vocab_chunk()) + " vocabulary rows";
    if (tied_in_chunks_) d += ", tied head stepped per vocabulary chunk";
    if (model_->attention_chunk_sequences() < opts_.batch)
      d += ", attention " + std::to_string(model_->attention_chunk_sequences()) + " sequence(s) at a time";
    if (opts_.fused_update && !opts_.hparams.defer_gradient_checks) d += ", gradient checks waited for on the host";
    return d;
  }
  double peak_device_mib() const override { return double(peak_used_) / (1024.0 * 1024.0); }
  double start_device_mib() const override { return double(start_used_) / (1024.0 * 1024.0); }

  step_result step(const int32_t* x, const int32_t* y, float lr, float clip) override {
    lowbit::require(!(opts_.fused_update && clip > 0.0f), lowbit::errc::invalid_argument,
                    "global-norm clipping is unavailable with the fused backward-update");
    step_result r;
    optimizer_->set_lr(lr);
    if (bf16_grads()) backward_and_update(grads16_.data(), x, y, clip, r);
    else backward_and_update(grads32_.data(), x, y, clip, r);
    return r;
  }

  double loss(const int32_t* x, const int32_t* y) override {
    return model_->forward(x, y, opts_.batch, opts_.seq);
  }
  phase_recorder& phase_profile() override {
    if (!profile_) {
      profile_ = std::make_unique<cuda_phase_recorder>(model_->stream());
      model_->set_phase_recorder(profile_.get());
    }
    return *profile_;
  }

  double gradients(const int32_t* x, const int32_t* y, std::vector<float>& out) override {
    lowbit::require(!opts_.fused_update, lowbit::errc::invalid_argument,
                    "gradients(): the fused backward-update keeps no full gradient buffer");
    out.resize(size_t(plan_.size));
    double loss = 0;
    if (bf16_grads()) {  // widened to float32 on the host (exact)
      loss = forward_backward_micro_batches(grads16_.data(), x, y);
      LOWBIT_CUDA_CHECK(cudaStreamSynchronize(model_->stream()));
      std::vector<lowbit::bf16> g16(static_cast<size_t>(plan_.size));
      grads16_.download(g16.data(), plan_.size);
      for (size_t i = 0; i < g16.size(); ++i) out[i] = lowbit::to_float(g16[i]);
    } else {
      loss = forward_backward_micro_batches(grads32_.data(), x, y);
      LOWBIT_CUDA_CHECK(cudaStreamSynchronize(model_->stream()));
      grads32_.download(out.data(), plan_.size);
    }
    divide_by_micro_batches(out, opts_.grad_accum);  // the mean, as the CPU session gives it
    return loss;
  }

  void last_logits(const int32_t* tokens, int64_t len, float* out) override {
    model_->forward(tokens, nullptr, 1, len);
    model_->copy_logits_row(len - 1, out);
  }

  void save(const std::string& path, const train_state& st) override {
    weights_to_host();
    save_checkpoint(path, cfg_, mode_, host_, *optimizer_, st);
  }
  train_state load(const std::string& path) override {
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
    dev_->download(host_);  // a refused checkpoint leaves the host copy equal to the device
    const train_state st = load_checkpoint(path, cfg_, mode_, host_, *optimizer_);
    dev_->upload(host_);
    return st;
  }

 private:
  bool bf16_grads() const { return opts_.grad_dtype == lowbit::dtype::bf16; }

  // The step's micro-batches into the gradient buffer g (session.hpp's
  // forward_backward_micro_batches), sampling device memory as they run.
  template <class G>
  double forward_backward_micro_batches(G* g, const int32_t* x, const int32_t* y) {
    return llama::forward_backward_micro_batches(*model_, opts_, g, plan_, x, y, [&] { sample_memory(); });
  }

  // The forward, the backward into the gradient buffer g (float or
  // bfloat16) and the update: per tensor as its gradient completes
  // (fused), or after the whole backward of every micro-batch with the
  // gradients' statistics (two-pass).
  template <class G>
  void backward_and_update(G* g, const int32_t* x, const int32_t* y, float clip, step_result& r) {
    const lowbit::dtype gt = lowbit::dtype_of<G>::value;
    if (opts_.fused_update) {
      r.loss = model_->forward(x, y, opts_.batch, opts_.seq);
      sample_memory();
      optimizer_->begin_step();
      model_->backward(
          g, plan_,
          [&](const std::vector<int>& ready) {
            phase_scope ph(profile_.get(), phase::optimizer);
            for (int p : ready) optimizer_->step_param(p, g + plan_.offset[size_t(p)], gt, 1.0f);
            sample_memory();
          },
          [&](int p, int64_t first, const G* part, int64_t count) {
            phase_scope ph(profile_.get(), phase::optimizer);
            optimizer_->step_param_range(p, first, part, gt, count, 1.0f);
            sample_memory();
          });
      phase_scope ph(profile_.get(), phase::optimizer);
      r.skipped = optimizer_->end_step().skipped > 0;
      sample_memory();
      return;
    }
    r.loss = forward_backward_micro_batches(g, x, y);
    phase_scope ph(profile_.get(), phase::gradient_check);
    const lowbit::optim::grad_stats gs = lowbit::optim::cuda_grad_stats(g, gt, plan_.size, model_->stream());
    ph.to(phase::optimizer);
    two_pass_update(*optimizer_, gs, g, gt, plan_, clip, r, opts_.grad_accum);
    sample_memory();
  }

  // Device memory in use (total - free: this process's allocations, the
  // CUDA context and the stream-ordered pool's reserve), sampled after the
  // forward, at every gradient group of the backward and after the update.
  void sample_memory() {
    size_t free_b = 0, total_b = 0;
    LOWBIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    peak_used_ = std::max<int64_t>(peak_used_, int64_t(total_b - free_b));
  }

  llama_config cfg_;
  mode_info mode_;
  session_options opts_;
  param_layout layout_;
  weight_store<float> host_;
  gradient_plan plan_;
  std::unique_ptr<device_weights> dev_;
  std::unique_ptr<trainer_optimizer> optimizer_;
  std::unique_ptr<cuda_model<A>> model_;
  device_array<float> grads32_;         // --grad-dtype f32 (the default)
  device_array<lowbit::bf16> grads16_;  // --grad-dtype bf16; the other one stays empty
  int64_t peak_used_ = 0;
  int64_t start_used_ = 0;
  bool tied_in_chunks_ = false;   // the tied head's gradient made and stepped per vocabulary chunk
  int64_t chunk_grad_bytes_ = 0;  // its one-chunk buffer (in the model)
  std::unique_ptr<cuda_phase_recorder> profile_;  // --profile only
};

}  // namespace gpu
}  // namespace llama
