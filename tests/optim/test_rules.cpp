// Update rules with float32 weights and states against float64 references
// over 300 steps, and quantized states against the float32-state trajectory
// within a derived bound.
#include <doctest/doctest.h>

#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "../formats/format_reference.hpp"
#include "reference_rules.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

constexpr int n = 5000;  // >= 4096 so quantized states really quantize

std::vector<float> gradient(int step, float scale = 1.0f) {
  std::mt19937 g(unsigned(1000 + step));
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> out(n);
  for (auto& v : out) v = d(g);
  return out;
}

std::vector<float> initial_weights() { return ref::normal(n, 99, 0.5f); }

template <class Opt, class RefStep>
void compare_with_reference(Opt& opt, RefStep ref_step, int steps, double tol) {
  std::vector<float> w = initial_weights();
  opt.add_param(make_flat_view(w.data(), n));
  ref::adam_state s;
  s.p.assign(w.begin(), w.end());
  s.m.assign(n, 0.0);
  s.v.assign(n, 0.0);
  double worst = 0;
  for (int t = 1; t <= steps; ++t) {
    std::vector<float> g = gradient(t);
    opt.step({make_flat_view(g.data(), n)});
    ref_step(s, std::vector<double>(g.begin(), g.end()), t);
    for (int i = 0; i < n; ++i) worst = std::max(worst, std::fabs(double(w[size_t(i)]) - s.p[size_t(i)]));
  }
  // float32 arithmetic: each step adds O(1e-7) relative rounding to |p| <~ 2
  // and to an update of size ~lr; the walk over 300 steps stays well below tol
  CHECK(worst <= tol);
}

}  // namespace

TEST_CASE("AdamW / Adam / Lion / SGD in float32 track float64 references") {
  {
    adamw::hparams h;
    h.lr = 1e-2f;
    h.weight_decay = 0.1f;
    optimizer<adamw> opt(h);
    compare_with_reference(opt, [&](ref::adam_state& s, const std::vector<double>& g, int t) {
      ref::adam_step(s, g, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, true, t);
    }, 300, 2e-5);
  }
  {
    adam::hparams h;
    h.lr = 1e-2f;
    h.weight_decay = 0.05f;
    optimizer<adam> opt(h);
    compare_with_reference(opt, [&](ref::adam_state& s, const std::vector<double>& g, int t) {
      ref::adam_step(s, g, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, false, t);
    }, 300, 2e-5);
  }
  {
    lion::hparams h;
    h.lr = 1e-3f;
    h.weight_decay = 0.1f;
    optimizer<lion> opt(h);
    compare_with_reference(opt, [&](ref::adam_state& s, const std::vector<double>& g, int) {
      ref::lion_step(s, g, h.lr, h.beta1, h.beta2, h.weight_decay);
    }, 300, 2e-5);
  }
  {
    sgd_momentum::hparams h;
    h.lr = 1e-3f;
    h.weight_decay = 0.01f;
    optimizer<sgd_momentum> opt(h);
    compare_with_reference(opt, [&](ref::adam_state& s, const std::vector<double>& g, int) {
      ref::sgd_step(s, g, h.lr, h.momentum, h.weight_decay);
    }, 300, 2e-5);
  }
}

// Quantized first moments (AdamW, beta1 = 0.9). Per step: stochastic
// re-encoding with a fresh block scale moves each value to one of its two
// neighbouring codes, so by at most one code gap <= 2 delta A, where delta is
// the map's worst half gap (normalized) and A the block's absmax before
// encoding. Over the run the errors are damped by beta1, so against the
// float32-state trajectory |m_q - m| <= 2 delta max(A) / (1 - beta1).
template <class States>
void check_quantized_momentum(format fmt) {
  adamw::hparams h;
  h.lr = 1e-3f;
  optimizer<adamw, states::fp32> exact(h);
  optimizer<adamw, States> quant(h);
  std::vector<float> w1 = initial_weights(), w2 = initial_weights();
  exact.add_param(make_flat_view(w1.data(), n));
  quant.add_param(make_flat_view(w2.data(), n));
  const double delta = ref::max_normalized_error(fmt);
  const int bs = quant.param(0).state1.q.layout.block_size;
  const size_t nb = size_t((n + bs - 1) / bs);
  std::vector<double> run_max(nb, 0.0);
  std::vector<float> m_q(n), prev(n, 0.0f);
  for (int t = 1; t <= 30; ++t) {
    std::vector<float> g = gradient(t);
    exact.step({make_flat_view(g.data(), n)});
    quant.step({make_flat_view(g.data(), n)});
    const float* m = static_cast<const float*>(exact.param(0).state1.data);
    cpu::dequantize(quant.param(0).state1.q, make_flat_view(m_q.data(), n));
    std::vector<double> expect(n), block_a(nb, 0.0);
    for (int i = 0; i < n; ++i) {
      expect[size_t(i)] = h.beta1 * double(prev[size_t(i)]) + (1 - double(h.beta1)) * g[size_t(i)];
      block_a[size_t(i / bs)] = std::max(block_a[size_t(i / bs)], std::fabs(expect[size_t(i)]));
      run_max[size_t(i / bs)] = std::max(run_max[size_t(i / bs)], std::fabs(double(m[i])));
    }
    for (int i = 0; i < n; ++i) {
      const double a = block_a[size_t(i / bs)];
      REQUIRE(std::fabs(double(m_q[size_t(i)]) - expect[size_t(i)]) <= 2 * delta * a * 1.0001 + 1e-6 * a);
      REQUIRE(std::fabs(double(m_q[size_t(i)]) - double(m[i])) <= 2 * delta * run_max[size_t(i / bs)] * 1.05 / (1 - 0.9));
    }
    prev = m_q;
  }
}

TEST_CASE("8-bit and 4-bit momentum stay within the derived bound") {
  check_quantized_momentum<states::int8>(format::dynamic8);
  check_quantized_momentum<states::int4>(format::dynamic4);
}

TEST_CASE("quantized states fall back to float32 below 4096 elements") {
  optimizer<adamw, states::int8> opt;
  std::vector<float> small(1000), big(8192);
  opt.add_param(make_flat_view(small.data(), 1000));
  opt.add_param(make_flat_view(big.data(), 8192));
  CHECK(opt.param(0).state1.kind == storage_kind::f32);
  CHECK(opt.param(1).state1.kind == storage_kind::blockwise);
  CHECK(opt.param(1).state1.q.layout.fmt == format::dynamic8);
  CHECK(opt.param(1).state2.q.layout.fmt == format::udynamic8);
  CHECK(opt.param(1).state1.q.layout.block_size == 256);
}
