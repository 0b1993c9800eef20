// examples/llama/phase_profile.hpp
// Where a training step's time goes (llama_train --profile): the step is
// cut into named phases (the forward's layers, attention, the head and
// loss, the backward's recompute, the optimizer steps, ...) by marks the
// model and the session set as they go, and a phase_recorder sums the time
// between consecutive marks into the phase that was running. Only the
// marks are placed here; the clock is the recorder's: the host clock on
// the CPU (host_phase_recorder below, where the work is synchronous), CUDA
// events on the stream on a GPU (cuda/phase_events.cuh), where an
// interval is the GPU's time between two points of the queue (kernels, and
// any idle gap while the GPU waited for the host). Phases nest: a
// phase_scope enters a phase and gives the time back to the enclosing one
// when it closes (attention inside a layer's forward, an optimizer step
// inside the backward). Marks outside begin_step / end_step (evaluation,
// sampling) are ignored, and a model without a recorder pays one null test
// per mark.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace llama {

enum class phase : int {
  other,               // between the marks below: learning rate, batch upload, bookkeeping
  embedding,           // token embedding (forward)
  layers_forward,      // the layers' forward, attention excepted
  attention_forward,   // attention's forward, in the forward and in checkpointing recomputes
  head_loss,           // final norm, output head, cross-entropy (and the wait for the loss)
  head_backward,       // the head's and final norm's backward
  recompute,           // checkpointing: a layer's forward again, attention excepted
  layers_backward,     // the layers' backward, attention excepted
  attention_backward,  // attention's backward
  embedding_backward,  // the embedding's gradient (scatter)
  tied_head_chunks,    // fused update with a tied head: its gradient made per vocabulary chunk
  gradient_check,      // two-pass update: the whole gradient's finiteness and norm
  optimizer,           // the optimizer's steps (every tensor's, fused or two-pass)
  count_
};
constexpr int phase_count = int(phase::count_);

// Each phase's name for the table and its JSON key (snake case), in the
// enum's order.
struct phase_label {
  const char* name;
  const char* key;
};
inline const phase_label& phase_label_of(phase p) {
  static constexpr phase_label labels[phase_count] = {
      {"other", "other"},
      {"embedding", "embedding"},
      {"layers forward", "layers_forward"},
      {"attention forward", "attention_forward"},
      {"head and loss", "head_loss"},
      {"head backward", "head_backward"},
      {"recompute", "recompute"},
      {"layers backward", "layers_backward"},
      {"attention backward", "attention_backward"},
      {"embedding backward", "embedding_backward"},
      {"tied head chunks", "tied_head_chunks"},
      {"gradient check", "gradient_check"},
      {"optimizer", "optimizer"},
  };
  static constexpr phase_label unknown{"?", "?"};
  return int(p) >= 0 && int(p) < phase_count ? labels[int(p)] : unknown;
}
inline const char* phase_name(phase p) { return phase_label_of(p).name; }
inline const char* phase_key(phase p) { return phase_label_of(p).key; }

// Sums the time of each phase over the counted steps. A subclass supplies
// the clock: stamp(i) records the time of the step's i-th mark;
// intervals_ms(n, out) gives out[i] = time(mark i + 1) - time(mark i) in
// milliseconds for i < n - 1 (it may wait for the device).
class phase_recorder {
 public:
  virtual ~phase_recorder() = default;

  // Starts a step: marks from here on count (in phase `other` until the
  // first one).
  void begin_step() {
    marks_.clear();
    in_step_ = true;
    current_ = phase::other;
    add_mark(phase::other);
  }
  // Enters phase p and returns the phase it leaves (for phase_scope).
  phase enter(phase p) {
    const phase left = current_;
    if (in_step_ && p != current_) add_mark(p);
    current_ = p;
    return left;
  }
  // Ends the step; its times are added to the totals when `counted` (the
  // trainer leaves out its --timing-warmup steps).
  void end_step(bool counted) {
    if (!in_step_) return;
    add_mark(phase::other);
    in_step_ = false;
    current_ = phase::other;
    std::vector<double> ms(marks_.size() - 1);
    intervals_ms(marks_.size(), ms.data());
    std::array<double, phase_count> step{};
    for (size_t i = 0; i + 1 < marks_.size(); ++i) step[size_t(marks_[i])] += ms[i];
    last_step_ = step;
    if (!counted) return;
    for (int p = 0; p < phase_count; ++p) total_ms_[size_t(p)] += step[size_t(p)];
    ++steps_;
  }

  // Milliseconds in phase p summed over the counted steps, and per step.
  double total_ms(phase p) const { return total_ms_[size_t(p)]; }
  double ms_per_step(phase p) const { return steps_ > 0 ? total_ms_[size_t(p)] / double(steps_) : 0.0; }
  double step_total_ms() const {
    double t = 0;
    for (double v : total_ms_) t += v;
    return steps_ > 0 ? t / double(steps_) : 0.0;
  }
  int64_t counted_steps() const { return steps_; }
  // The last ended step's milliseconds per phase (counted or not).
  const std::array<double, phase_count>& last_step_ms() const { return last_step_; }
  // Marks of the last (or current) step, for tests.
  size_t marks_in_step() const { return marks_.size(); }

 protected:
  virtual void stamp(size_t index) = 0;
  virtual void intervals_ms(size_t n, double* out) = 0;

 private:
  void add_mark(phase p) {
    stamp(marks_.size());
    marks_.push_back(p);
  }

  std::vector<phase> marks_;  // the phase that starts at each mark
  bool in_step_ = false;
  phase current_ = phase::other;
  std::array<double, phase_count> total_ms_{};
  std::array<double, phase_count> last_step_{};
  int64_t steps_ = 0;
};

// Enters a phase for the scope's life and gives the time back to the
// enclosing phase at its end (or at close(), if earlier); to() moves on to
// another phase within the same scope. A null recorder makes every call a
// no-op.
class phase_scope {
 public:
  phase_scope(phase_recorder* r, phase p) : r_(r), outer_(r ? r->enter(p) : phase::other) {}
  ~phase_scope() { close(); }
  void to(phase p) {
    if (r_) r_->enter(p);
  }
  void close() {
    if (r_) r_->enter(outer_);
    r_ = nullptr;
  }
  phase_scope(const phase_scope&) = delete;
  phase_scope& operator=(const phase_scope&) = delete;

 private:
  phase_recorder* r_;
  phase outer_;
};

// The host clock: right where the work runs on the calling thread (the
// CPU trainer, whose threads join before each call returns).
class host_phase_recorder final : public phase_recorder {
 protected:
  void stamp(size_t index) override {
    if (times_.size() <= index) times_.resize(index + 1);
    times_[index] = std::chrono::steady_clock::now();
  }
  void intervals_ms(size_t n, double* out) override {
    for (size_t i = 0; i + 1 < n; ++i)
      out[i] = std::chrono::duration<double, std::milli>(times_[i + 1] - times_[i]).count();
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> times_;
};

}  // namespace llama
