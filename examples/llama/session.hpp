// examples/llama/session.hpp
// One training run's objects, wired together: the parameter layout, the
// weights in the mode's format, the optimizer, the model with its
// activation buffers and the gradient buffer. step() is one optimizer step
// on one batch (forward, backward, clipping, update, or the fused
// backward-update); evaluate() the mean loss over fixed batches. The command
// line trainer and the tests both drive a session, so they run the same
// code.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <lowbit/lowbit.hpp>

#include "checkpoint.hpp"
#include "config.hpp"
#include "model.hpp"
#include "modes.hpp"
#include "parameters.hpp"
#include "phase_profile.hpp"

namespace llama {

struct session_options {
  int64_t batch = 16, seq = 128;
  // Gradient accumulation (--grad-accum): a step runs this many
  // micro-batches of [batch, seq] one after another, adds their gradients
  // in the one gradient buffer and updates once with their mean (as one
  // batch of grad_accum * batch sequences would, up to float rounding);
  // activations are sized for one micro-batch. Needs the two-pass update
  // (the fused backward-update keeps no whole gradient to add to).
  int64_t grad_accum = 1;
  bool checkpointing = false;
  bool fused_update = false;  // no full gradient buffer; no global-norm clipping
  // Element type of the gradient buffer: float32, or bfloat16 (CUDA path
  // only, with bfloat16 activations; --grad-dtype): half the gradient
  // memory, each gradient rounded to bfloat16 once per step.
  lowbit::dtype grad_dtype = lowbit::dtype::f32;
  // CUDA path: the float32 logits are made and consumed in vocabulary
  // chunks of at most this many bytes (--logits-chunk-mib), never [batch *
  // seq, vocab] at once; smaller chunks save memory at the cost of more,
  // smaller head GEMMs (two per chunk but the last when there are several).
  int64_t logits_chunk_bytes = int64_t(64) << 20;
  // CUDA path: attention's float32 scores (and its dP and dscores) are made
  // for as many sequences of the batch at a time as fit this many bytes of
  // scores, at least one (--attention-chunk-mib); the results do not depend
  // on it, the scratch memory does (heads * seq^2 * 4 bytes per sequence).
  int64_t attention_chunk_bytes = int64_t(32) << 20;
  optimizer_hparams hparams;
};

// The optimizer settings of a session: its hyperparameters, with the
// per-tensor gradient check off for the two-pass update (two_pass_update
// below has checked every gradient at once).
inline optimizer_hparams optimizer_hparams_for(const session_options& o) {
  optimizer_hparams h = o.hparams;
  h.check_each_gradient = o.fused_update;
  return h;
}

// Refuses session options no session can run: gradient accumulation below
// one micro-batch, or with the fused backward-update.
inline void check_session_options(const session_options& o) {
  lowbit::require(o.grad_accum >= 1, lowbit::errc::invalid_argument,
                  "--grad-accum must be >= 1 (micro-batches per optimizer step), got " + std::to_string(o.grad_accum));
  lowbit::require(!(o.fused_update && o.grad_accum > 1), lowbit::errc::invalid_argument,
                  "--grad-accum " + std::to_string(o.grad_accum) +
                      " needs a whole gradient buffer to add the micro-batches' gradients in, which the fused "
                      "backward-update does not keep (it updates each tensor as soon as its gradient is ready): "
                      "drop --fused-update, or use one micro-batch");
}

// "f32" / "bf16" (the command line's --grad-dtype) as a dtype.
inline lowbit::dtype parse_grad_dtype(const std::string& s) {
  if (s == "f32") return lowbit::dtype::f32;
  if (s == "bf16") return lowbit::dtype::bf16;
  throw lowbit::error(lowbit::errc::invalid_argument, "--grad-dtype must be f32 or bf16, got '" + s + "'");
}

struct step_result {
  double loss = 0;
  double grad_norm = NAN;  // NAN with --fused-update or when skipped
  bool skipped = false;    // non-finite loss or gradient: no update
};

// The update of a two-pass step once the gradients and their statistics
// exist (CPU and CUDA sessions alike): a non-finite loss or gradient skips
// the update (the step count still moves, and with it the data order);
// otherwise every parameter is stepped with its gradient (grads + its
// offset, in the optimizer's memory), scaled so the global L2 norm is at
// most clip when clip > 0. grads: plan.size elements of dtype grad_type,
// the sum of `micro_batches` micro-batches' gradients (gradient
// accumulation), whose mean is stepped: the norm is the mean's and the
// optimizer's gradient scale carries the 1 / micro_batches (for one micro-
// batch the scale is the plain clipping factor, bit for bit).
inline void two_pass_update(trainer_optimizer& opt, const lowbit::optim::grad_stats& gs, const void* grads,
                            lowbit::dtype grad_type, const gradient_plan& plan, float clip, step_result& r,
                            int64_t micro_batches = 1) {
  opt.begin_step();
  if (!gs.finite || !std::isfinite(r.loss)) {
    r.skipped = true;
  } else {
    const double k = double(micro_batches);
    r.grad_norm = std::sqrt(gs.sumsq) / k;
    const double clip_factor = (clip > 0.0f && r.grad_norm > double(clip)) ? double(clip) / (r.grad_norm + 1e-6) : 1.0;
    const float scale = float(clip_factor / k);
    const char* base = static_cast<const char*>(grads);
    const int64_t esize = int64_t(lowbit::dtype_size(grad_type));
    for (size_t p = 0; p < plan.offset.size(); ++p)
      opt.step_param(int(p), base + plan.offset[p] * esize, grad_type, scale);
  }
  opt.end_step();
}

// Forward and backward of a step's micro-batches in turn (CPU and CUDA
// models alike): x and y hold o.grad_accum micro-batches of [o.batch,
// o.seq] tokens one after another; the first backward writes the gradient
// buffer grads and the others add to it. after_pass() runs after each
// forward and whenever the backward hands over gradients (a CUDA session
// samples its memory there). Returns the mean of the micro-batches' losses
// (the loss itself for one).
template <class Model, class Grad, class AfterPass>
double forward_backward_micro_batches(Model& model, const session_options& o, Grad* grads, const gradient_plan& plan,
                                      const int32_t* x, const int32_t* y, AfterPass&& after_pass) {
  const int64_t n = o.batch * o.seq;
  double sum = 0;
  for (int64_t i = 0; i < o.grad_accum; ++i) {
    sum += model.forward(x + i * n, y + i * n, o.batch, o.seq);
    after_pass();
    model.set_accumulate_gradients(i > 0);
    model.backward(grads, plan, [&](const std::vector<int>&) { after_pass(); });
  }
  model.set_accumulate_gradients(false);
  return sum / double(o.grad_accum);
}

// The summed gradients of `micro_batches` micro-batches, made their mean in
// place (what gradients() returns; nothing changes for one micro-batch).
inline void divide_by_micro_batches(std::vector<float>& grads, int64_t micro_batches) {
  if (micro_batches <= 1) return;
  const float mean = float(1.0 / double(micro_batches));
  for (float& v : grads) v *= mean;
}

// What the command line needs from a run, on the CPU (training_session
// below) or on CUDA (gpu::cuda_session, cuda/session.cuh). The host
// weight_store is where initialisation, Hugging Face loading and
// checkpoints read and write; a CUDA session copies it to the device in
// weights_changed() and back before saving.
class session_base {
 public:
  virtual ~session_base() = default;
  virtual const llama_config& config() const = 0;
  virtual const mode_info& mode() const = 0;
  virtual const session_options& options() const = 0;
  virtual const param_layout& layout() const = 0;
  virtual weight_store<float>& weights() = 0;
  virtual void weights_changed() {}
  // Makes weights() hold the trained weights (a CUDA session copies them
  // back from the device; the CPU session's are always there).
  virtual void weights_to_host() {}
  virtual trainer_optimizer& optimizer() = 0;
  // One optimizer step. x and y hold the step's grad_accum micro-batches of
  // [batch, seq] tokens one after another (batch * seq * grad_accum each).
  virtual step_result step(const int32_t* x, const int32_t* y, float lr, float clip) = 0;
  // Mean loss of one [batch, seq] batch (the session's shape), no update.
  virtual double loss(const int32_t* x, const int32_t* y) = 0;
  // Loss and every parameter's gradient of one step's grad_accum
  // micro-batches (laid out as step() takes them; their means), no update:
  // out gets the gradients in parameter order, each parameter's numel
  // floats after the previous one's (the two-pass gradient plan; refused
  // with the fused plan, in which the tensors share one region). For tests
  // and diagnostics.
  virtual double gradients(const int32_t* x, const int32_t* y, std::vector<float>& out) = 0;
  // Logits of the last position of tokens[0 .. len) (one sequence) into out[vocab].
  virtual void last_logits(const int32_t* tokens, int64_t len, float* out) = 0;
  virtual void save(const std::string& path, const train_state& st) = 0;
  virtual train_state load(const std::string& path) = 0;
  // Memory table rows: bytes of the weights as stored, of the gradient
  // buffer and of the activation buffers, where they live.
  virtual int64_t weight_bytes() const = 0;
  virtual int64_t gradient_bytes() const = 0;
  virtual int64_t activation_bytes() const = 0;
  virtual std::string device_description() const = 0;
  virtual bool on_cuda() const { return false; }  // the CUDA backend (CUDA-only options apply)
  // Peak device memory in use so far (CUDA only; < 0 on the CPU).
  virtual double peak_device_mib() const { return -1.0; }
  // Device memory in use before the run allocated anything (CUDA context,
  // other processes); -1 on the CPU.
  virtual double start_device_mib() const { return -1.0; }
  // --profile: the clock of this run's step phases (phase_profile.hpp),
  // created on the first call; from then on the model and the optimizer
  // steps mark their phases on it between its begin_step and end_step.
  virtual phase_recorder& phase_profile() = 0;

  // Mean loss over `batches` fixed validation batches of a step's size
  // (batch * grad_accum sequences each, run one micro-batch at a time), so
  // that --batch 16 and --batch 8 --grad-accum 2 are measured on the same
  // windows.
  template <class Data>
  double evaluate(const Data& data, int64_t batches) {
    const session_options& o = options();
    std::vector<int32_t> x(static_cast<size_t>(o.batch * o.seq)), y(x.size());
    double total = 0;
    batches *= o.grad_accum;
    for (int64_t b = 0; b < batches; ++b) {
      for (int64_t r = 0; r < o.batch; ++r)
        data.val_window(b * o.batch + r, o.seq, x.data() + r * o.seq, y.data() + r * o.seq);
      total += loss(x.data(), y.data());
    }
    return total / double(batches);
  }
};

class training_session final : public session_base {
 public:
  training_session(const llama_config& cfg, const mode_info& mode, const session_options& o)
      : cfg_(cfg), mode_(mode), opts_(o), layout_(cfg), weights_(layout_, mode.storage, mode.qspec),
        plan_(layout_, o.fused_update) {
    lowbit::require(!mode.gpu_only, lowbit::errc::unsupported,
                    "mode '" + mode.name + "' keeps optimizer states in CUDA memory: it runs on the trainer's CUDA "
                    "path only (--device cuda, in a build with CUDA on a machine with a GPU)");
    lowbit::require(o.grad_dtype == lowbit::dtype::f32, lowbit::errc::unsupported,
                    std::string("--grad-dtype ") + (o.grad_dtype == lowbit::dtype::bf16 ? "bf16" : "other than f32") +
                        " needs the CUDA backend (--device cuda, in a build with CUDA on a machine with a GPU): the "
                        "CPU trainer keeps float32 gradients");
    check_session_options(o);
    optimizer_ = make_optimizer(mode, weights_, optimizer_hparams_for(o));
    model_ = std::make_unique<llama_model<float>>(cfg, layout_, weights_, o.batch, o.seq, o.checkpointing);
    grads_.assign(size_t(plan_.size), 0.0f);
  }

  training_session(const training_session&) = delete;  // the parts point at each other
  training_session& operator=(const training_session&) = delete;

  const llama_config& config() const override { return cfg_; }
  const mode_info& mode() const override { return mode_; }
  const session_options& options() const override { return opts_; }
  const param_layout& layout() const override { return layout_; }
  weight_store<float>& weights() override { return weights_; }
  trainer_optimizer& optimizer() override { return *optimizer_; }
  llama_model<float>& model() { return *model_; }
  int64_t weight_bytes() const override { return weights_.bytes(); }
  int64_t gradient_bytes() const override { return int64_t(grads_.size() * sizeof(float)); }
  int64_t activation_bytes() const override { return model_->activation_bytes(); }
  std::string device_description() const override {
    return "cpu, " + std::to_string(lowbit::cpu::thread_count()) + " threads";
  }
  double loss(const int32_t* x, const int32_t* y) override { return model_->forward(x, y, opts_.batch, opts_.seq); }
  phase_recorder& phase_profile() override {
    if (!profile_) {
      profile_ = std::make_unique<host_phase_recorder>();
      model_->set_phase_recorder(profile_.get());
    }
    return *profile_;
  }
  double gradients(const int32_t* x, const int32_t* y, std::vector<float>& out) override {
    lowbit::require(!opts_.fused_update, lowbit::errc::invalid_argument,
                    "gradients(): the fused backward-update keeps no full gradient buffer");
    const double loss = forward_backward_micro_batches(*model_, opts_, grads_.data(), plan_, x, y, [] {});
    out = grads_;
    divide_by_micro_batches(out, opts_.grad_accum);
    return loss;
  }
  void last_logits(const int32_t* tokens, int64_t len, float* out) override {
    model_->forward(tokens, nullptr, 1, len);
    const float* l = model_->logits() + (len - 1) * cfg_.vocab_size;
    std::copy(l, l + cfg_.vocab_size, out);
  }

  // One optimizer step on x -> y ([batch, seq] each) at learning rate lr;
  // clip > 0 scales the gradients so their global L2 norm is at most clip.
  step_result step(const int32_t* x, const int32_t* y, float lr, float clip) override {
    lowbit::require(!(opts_.fused_update && clip > 0.0f), lowbit::errc::invalid_argument,
                    "global-norm clipping is unavailable with the fused backward-update");
    step_result r;
    optimizer_->set_lr(lr);
    if (opts_.fused_update) {
      r.loss = model_->forward(x, y, opts_.batch, opts_.seq);
      optimizer_->begin_step();
      model_->backward(grads_.data(), plan_, [&](const std::vector<int>& ready) {
        phase_scope ph(profile_.get(), phase::optimizer);
        for (int p : ready) optimizer_->step_param(p, grads_.data() + plan_.offset[size_t(p)], 1.0f);
      });
      phase_scope ph(profile_.get(), phase::optimizer);
      r.skipped = optimizer_->end_step().skipped > 0;
      return r;
    }
    r.loss = forward_backward_micro_batches(*model_, opts_, grads_.data(), plan_, x, y, [] {});
    phase_scope ph(profile_.get(), phase::gradient_check);
    const lowbit::optim::grad_stats gs = lowbit::optim::cpu_grad_stats(grads_.data(), lowbit::dtype::f32, plan_.size);
    ph.to(phase::optimizer);
    two_pass_update(*optimizer_, gs, grads_.data(), lowbit::dtype::f32, plan_, clip, r, opts_.grad_accum);
    return r;
  }

  void save(const std::string& path, const train_state& st) override {
    save_checkpoint(path, cfg_, mode_, weights_, *optimizer_, st);
  }
  train_state load(const std::string& path) override {
    return load_checkpoint(path, cfg_, mode_, weights_, *optimizer_);
  }

 private:
  llama_config cfg_;
  mode_info mode_;
  session_options opts_;
  param_layout layout_;
  weight_store<float> weights_;
  gradient_plan plan_;
  std::unique_ptr<trainer_optimizer> optimizer_;
  std::unique_ptr<llama_model<float>> model_;
  std::vector<float> grads_;
  std::unique_ptr<host_phase_recorder> profile_;  // --profile only
};

}  // namespace llama
