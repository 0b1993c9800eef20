// examples/llama/tests/test_phase_profile.cpp
// llama_train --profile (phase_profile.hpp): the recorder's accounting on a
// scripted clock (each interval goes to the phase that ran, scopes give the
// time back to the enclosing phase, marks outside a step and uncounted steps
// add nothing), and the CPU session's marks on a real run: the phases add up
// to the step's host time, the phases a run has take time and the ones it
// lacks take none, and profiling changes no result.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "../dataset.hpp"
#include "../session.hpp"
#include "fixtures.hpp"

using namespace llama;

namespace {

// A clock the test moves by hand.
class scripted_recorder final : public phase_recorder {
 public:
  double now = 0;

 protected:
  void stamp(size_t index) override {
    if (times_.size() <= index) times_.resize(index + 1);
    times_[index] = now;
  }
  void intervals_ms(size_t n, double* out) override {
    for (size_t i = 0; i + 1 < n; ++i) out[i] = times_[i + 1] - times_[i];
  }

 private:
  std::vector<double> times_;
};

llama_config tiny_config() { return small_test_config(); }
const dataset& corpus() { return test_corpus(); }

// Runs `steps` steps, profiled when `profile`; returns the losses and, in
// host_ms, the host time of the steps (begin_step to end_step).
std::vector<double> run_steps(training_session& s, int steps, bool profile, double* host_ms = nullptr) {
  std::vector<int32_t> x(8 * 64), y(8 * 64);
  std::vector<double> losses;
  phase_recorder* p = profile ? &s.phase_profile() : nullptr;
  double total = 0;
  for (int step = 0; step < steps; ++step) {
    corpus().train_batch(7, step, 8, 64, x.data(), y.data());
    const auto t0 = std::chrono::steady_clock::now();
    if (p) p->begin_step();
    const step_result r = s.step(x.data(), y.data(), 1e-3f, s.options().fused_update ? 0.0f : 1.0f);
    if (p) p->end_step(true);
    total += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    losses.push_back(r.loss);
  }
  if (host_ms) *host_ms = total;
  return losses;
}

}  // namespace

TEST_CASE("phase_recorder: each interval goes to the phase that ran; scopes nest") {
  scripted_recorder r;
  r.enter(phase::optimizer);  // outside a step: no mark, no time
  r.begin_step();
  CHECK(r.marks_in_step() == 1);
  r.now = 1;
  r.enter(phase::layers_forward);
  r.now = 3;
  {
    phase_scope attention(&r, phase::attention_forward);
    r.now = 4;
    {
      phase_scope inner(&r, phase::attention_forward);  // the same phase: no new mark
      CHECK(r.marks_in_step() == 3);
      r.now = 4.5;
    }
    CHECK(r.marks_in_step() == 3);
  }  // back to layers_forward at 4.5
  r.now = 6;
  {
    phase_scope head(&r, phase::head_loss);
    r.now = 7;
    head.to(phase::head_backward);
    r.now = 9.5;
    head.close();  // back to layers_forward at 9.5
    r.now = 10;
  }  // a closed scope gives nothing back again
  r.end_step(true);
  CHECK(r.counted_steps() == 1);
  CHECK(r.total_ms(phase::other) == doctest::Approx(1.0));
  CHECK(r.total_ms(phase::attention_forward) == doctest::Approx(1.5));
  CHECK(r.total_ms(phase::layers_forward) == doctest::Approx(2.0 + 1.5 + 0.5));
  CHECK(r.total_ms(phase::head_loss) == doctest::Approx(1.0));
  CHECK(r.total_ms(phase::head_backward) == doctest::Approx(2.5));
  CHECK(r.step_total_ms() == doctest::Approx(10.0));

  // an uncounted step (the trainer's --timing-warmup) shows in last_step_ms only
  r.begin_step();
  r.now = 11;
  r.enter(phase::optimizer);
  r.now = 15;
  r.end_step(false);
  CHECK(r.last_step_ms()[size_t(phase::optimizer)] == doctest::Approx(4.0));
  CHECK(r.last_step_ms()[size_t(phase::other)] == doctest::Approx(1.0));
  CHECK(r.total_ms(phase::optimizer) == 0.0);
  CHECK(r.counted_steps() == 1);

  // a second counted step averages with the first
  r.begin_step();
  r.enter(phase::attention_forward);
  r.now = 18.5;
  r.end_step(true);
  CHECK(r.counted_steps() == 2);
  CHECK(r.ms_per_step(phase::attention_forward) == doctest::Approx((1.5 + 3.5) / 2));
  CHECK(r.step_total_ms() == doctest::Approx((10.0 + 3.5) / 2));
  r.end_step(true);  // no step open: nothing happens
  CHECK(r.counted_steps() == 2);

  // a null recorder: scopes do nothing
  phase_scope none(nullptr, phase::optimizer);
  none.to(phase::recompute);
  none.close();
}

TEST_CASE("CPU --profile: the phases add up to the step, each where the run has it, and change no result") {
  const mode_info& m = find_mode("qft");
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    session_options o;
    o.batch = 8, o.seq = 64;
    o.hparams.lr = 1e-3f, o.hparams.seed = 3;
    o.checkpointing = variant == 1;  // variant 1: checkpointing and the fused update
    o.fused_update = variant == 1;
    training_session plain(tiny_config(), m, o), profiled(tiny_config(), m, o);
    const std::vector<double> expected = run_steps(plain, 3, false);
    double host_ms = 0;
    const std::vector<double> got = run_steps(profiled, 3, true, &host_ms);
    CHECK(got == expected);  // bit for bit: marks read clocks only

    const phase_recorder& p = profiled.phase_profile();
    CHECK(p.counted_steps() == 3);
    // the marks span each step from begin to end: the phases' sum is the
    // host time of the steps, less only the few microseconds before the
    // first and after the last mark
    const double sum = p.step_total_ms() * 3;
    CHECK(sum <= host_ms);
    CHECK(sum >= 0.98 * host_ms - 0.2);
    for (phase ph : {phase::embedding, phase::layers_forward, phase::attention_forward, phase::head_loss,
                     phase::head_backward, phase::layers_backward, phase::attention_backward,
                     phase::embedding_backward, phase::optimizer}) {
      CAPTURE(phase_name(ph));
      CHECK(p.total_ms(ph) > 0.0);
    }
    CHECK((p.total_ms(phase::recompute) > 0.0) == o.checkpointing);
    CHECK((p.total_ms(phase::gradient_check) > 0.0) == !o.fused_update);
    CHECK(p.total_ms(phase::tied_head_chunks) == 0.0);  // the CUDA path's only
  }
}
