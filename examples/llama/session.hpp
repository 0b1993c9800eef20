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

namespace llama {

struct session_options {
  int64_t batch = 16, seq = 128;
  bool checkpointing = false;
  bool fused_update = false;  // no full gradient buffer; no global-norm clipping
  optimizer_hparams hparams;
};

struct step_result {
  double loss = 0;
  double grad_norm = NAN;  // NAN with --fused-update or when skipped
  bool skipped = false;    // non-finite loss or gradient: no update
};

class training_session {
 public:
  training_session(const llama_config& cfg, const mode_info& mode, const session_options& o)
      : cfg_(cfg), mode_(mode), opts_(o), layout_(cfg), weights_(layout_, mode.storage, mode.qspec),
        plan_(layout_, o.fused_update) {
    lowbit::require(!mode.gpu_only, lowbit::errc::unsupported,
                    "mode '" + mode.name + "' keeps optimizer states in CUDA memory and needs the trainer's CUDA "
                    "path, which is not implemented yet; the CPU trainer runs the other modes");
    optimizer_ = make_optimizer(mode, weights_, o.hparams);
    model_ = std::make_unique<llama_model<float>>(cfg, layout_, weights_, o.batch, o.seq, o.checkpointing);
    grads_.assign(size_t(plan_.size), 0.0f);
  }

  training_session(const training_session&) = delete;  // the parts point at each other
  training_session& operator=(const training_session&) = delete;

  const llama_config& config() const { return cfg_; }
  const mode_info& mode() const { return mode_; }
  const param_layout& layout() const { return layout_; }
  weight_store<float>& weights() { return weights_; }
  trainer_optimizer& optimizer() { return *optimizer_; }
  llama_model<float>& model() { return *model_; }
  int64_t gradient_bytes() const { return int64_t(grads_.size() * sizeof(float)); }

  // One optimizer step on x -> y ([batch, seq] each) at learning rate lr;
  // clip > 0 scales the gradients so their global L2 norm is at most clip.
  step_result step(const int32_t* x, const int32_t* y, float lr, float clip) {
    lowbit::require(!(opts_.fused_update && clip > 0.0f), lowbit::errc::invalid_argument,
                    "global-norm clipping is unavailable with the fused backward-update");
    step_result r;
    optimizer_->set_lr(lr);
    r.loss = model_->forward(x, y, opts_.batch, opts_.seq);
    if (opts_.fused_update) {
      optimizer_->begin_step();
      model_->backward(grads_.data(), plan_, [&](const std::vector<int>& ready) {
        for (int p : ready) optimizer_->step_param(p, grads_.data() + plan_.offset[size_t(p)], 1.0f);
      });
      r.skipped = optimizer_->end_step().skipped > 0;
      return r;
    }
    model_->backward(grads_.data(), plan_, [](const std::vector<int>&) {});
    const lowbit::optim::grad_stats gs = lowbit::optim::cpu_grad_stats(grads_.data(), lowbit::dtype::f32, plan_.size);
    optimizer_->begin_step();
    if (!gs.finite || !std::isfinite(r.loss)) {
      r.skipped = true;  // keep the step count (and so the data order) moving
    } else {
      r.grad_norm = std::sqrt(gs.sumsq);
      const float scale = (clip > 0.0f && r.grad_norm > double(clip)) ? float(double(clip) / (r.grad_norm + 1e-6)) : 1.0f;
      for (size_t p = 0; p < layout_.params.size(); ++p)
        optimizer_->step_param(int(p), grads_.data() + plan_.offset[p], scale);
    }
    optimizer_->end_step();
    return r;
  }

  // Mean loss over `batches` fixed validation batches.
  template <class Data>
  double evaluate(const Data& data, int64_t batches) {
    std::vector<int32_t> x(static_cast<size_t>(opts_.batch * opts_.seq)), y(x.size());
    double total = 0;
    for (int64_t b = 0; b < batches; ++b) {
      for (int64_t r = 0; r < opts_.batch; ++r)
        data.val_window(b * opts_.batch + r, opts_.seq, x.data() + r * opts_.seq, y.data() + r * opts_.seq);
      total += model_->forward(x.data(), y.data(), opts_.batch, opts_.seq);
    }
    return total / double(batches);
  }

  void save(const std::string& path, const train_state& st) const {
    save_checkpoint(path, cfg_, mode_, weights_, *optimizer_, st);
  }
  train_state load(const std::string& path) { return load_checkpoint(path, cfg_, mode_, weights_, *optimizer_); }

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
};

}  // namespace llama
