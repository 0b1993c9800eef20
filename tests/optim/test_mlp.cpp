// Convergence on a small MLP (32 -> 128 tanh -> 1, fitting a random teacher
// MLP of the same shape), for AdamW and Lion with fp32 / int8 / int4 states
// and fp32 / bf16 / int8 / NF4 weights (the first layer has 4096 weights, so
// quantized states really quantize). Criterion as in test_convergence.cpp:
// the fraction of the fp32 run's loss reduction r = (L0 - L) / (L0 - L_fp32)
// must be >= 0.97 (>= 0.95 for NF4 weights, whose 16-level grid bounds how
// close stochastically rounded weights stay to the optimum). Also checks
// that bf16 / fp16 gradients give the same update as their float32 values.
#include <doctest/doctest.h>

#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../formats/format_reference.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

constexpr int in = 32, hidden = 128, batch = 128, steps = 300;
constexpr int n1 = hidden * in, n2 = hidden;

struct data_set {
  std::vector<float> x, y;
  data_set() {
    x = ref::normal(size_t(batch) * in, 21);
    const std::vector<float> t1 = ref::normal(n1, 22, 0.3f), t2 = ref::normal(n2, 23, 0.3f);
    y.resize(batch);
    for (int b = 0; b < batch; ++b) {
      double out = 0;
      for (int h = 0; h < hidden; ++h) {
        double a = 0;
        for (int i = 0; i < in; ++i) a += double(t1[size_t(h * in + i)]) * x[size_t(b * in + i)];
        out += double(t2[size_t(h)]) * std::tanh(a);
      }
      y[size_t(b)] = float(out);
    }
  }
};

const data_set& data() {
  static const data_set d;
  return d;
}

// Mean squared error and gradients (float64 inside).
double loss_and_grad(const std::vector<float>& w1, const std::vector<float>& w2, std::vector<float>* g1,
                     std::vector<float>* g2) {
  const data_set& d = data();
  std::vector<double> G1(n1, 0.0), G2(n2, 0.0);
  double l = 0;
  std::vector<double> act(hidden);
  for (int b = 0; b < batch; ++b) {
    double out = 0;
    for (int h = 0; h < hidden; ++h) {
      double a = 0;
      for (int i = 0; i < in; ++i) a += double(w1[size_t(h * in + i)]) * d.x[size_t(b * in + i)];
      act[size_t(h)] = std::tanh(a);
      out += double(w2[size_t(h)]) * act[size_t(h)];
    }
    const double e = out - d.y[size_t(b)];
    l += e * e / batch;
    const double de = 2 * e / batch;
    for (int h = 0; h < hidden; ++h) {
      G2[size_t(h)] += de * act[size_t(h)];
      const double da = de * w2[size_t(h)] * (1 - act[size_t(h)] * act[size_t(h)]);
      for (int i = 0; i < in; ++i) G1[size_t(h * in + i)] += da * d.x[size_t(b * in + i)];
    }
  }
  if (g1) g1->assign(G1.begin(), G1.end());
  if (g2) g2->assign(G2.begin(), G2.end());
  return l;
}

// A weight as the optimizer stores it, read back as float32.
template <class Weights>
struct weight_store;

template <>
struct weight_store<weights::fp32> {
  std::vector<float> w;
  explicit weight_store(const std::vector<float>& init) : w(init) {}
  tensor_view view() { return make_flat_view(w.data(), int64_t(w.size())); }
  std::vector<float> read() const { return w; }
};

template <>
struct weight_store<weights::bf16> {
  std::vector<bf16> w;
  explicit weight_store(const std::vector<float>& init) : w(init.size()) {
    for (size_t i = 0; i < init.size(); ++i) w[i] = to_bf16(init[i]);
  }
  tensor_view view() { return make_flat_view(w.data(), int64_t(w.size())); }
  std::vector<float> read() const {
    std::vector<float> out(w.size());
    for (size_t i = 0; i < w.size(); ++i) out[i] = to_float(w[i]);
    return out;
  }
};

template <format F>
struct weight_store<weights::quantized<F>> {
  quantized_tensor q;
  explicit weight_store(const std::vector<float>& init)
      : q(make_layout(F, int64_t(init.size()), F == format::int8 ? 256 : 64, F == format::nf4)) {
    cpu::quantize(make_flat_view(init.data(), int64_t(init.size())), q.view());
  }
  quantized_view view() { return q.view(); }
  std::vector<float> read() {
    std::vector<float> out(size_t(q.layout.n));
    cpu::dequantize(q.view(), make_flat_view(out.data(), q.layout.n));
    return out;
  }
};

const std::vector<float>& init1() {
  static const std::vector<float> v = ref::normal(n1, 31, 0.2f);
  return v;
}
const std::vector<float>& init2() {
  static const std::vector<float> v = ref::normal(n2, 32, 0.2f);
  return v;
}

template <class Rule, class States, class Weights>
double train(const typename Rule::hparams& h) {
  optimizer_options o;
  o.seed = 3;
  optimizer<Rule, States, Weights> opt(h, o);
  weight_store<Weights> w1(init1()), w2(init2());
  opt.add_param(w1.view(), 0, "w1");
  opt.add_param(w2.view(), 0, "w2");
  std::vector<float> g1, g2;
  for (int t = 0; t < steps; ++t) {
    loss_and_grad(w1.read(), w2.read(), &g1, &g2);
    opt.step({make_flat_view(g1.data(), n1), make_flat_view(g2.data(), n2)});
  }
  return loss_and_grad(w1.read(), w2.read(), nullptr, nullptr);
}

template <class Rule, class States>
void check_weights(const char* rule, const typename Rule::hparams& h, double l0, double base) {
  struct row {
    const char* name;
    double loss;
    double need;
  };
  const row rows[] = {
      {"fp32", train<Rule, States, weights::fp32>(h), 0.97},
      {"bf16+sr", train<Rule, States, weights::bf16>(h), 0.97},
      {"int8+sr", train<Rule, States, weights::quantized<format::int8>>(h), 0.97},
      {"nf4+sr", train<Rule, States, weights::quantized<format::nf4>>(h), 0.95},
  };
  for (const row& r : rows) {
    const double progress = (l0 - r.loss) / (l0 - base);
    std::printf("  mlp %-5s states=%-5s weights=%-8s loss %.5f progress %.3f\n", rule, States::name, r.name, r.loss,
                progress);
    CAPTURE(r.name);
    CHECK(progress >= r.need);
  }
}

}  // namespace

TEST_CASE("small MLP: every AdamW and Lion combination converges") {
  const double l0 = loss_and_grad(init1(), init2(), nullptr, nullptr);
  adamw::hparams ah;
  ah.lr = 3e-3f;
  ah.weight_decay = 0.0f;
  lion::hparams lh;
  lh.lr = 3e-4f;
  const double base_a = train<adamw, states::fp32, weights::fp32>(ah);
  const double base_l = train<lion, states::fp32, weights::fp32>(lh);
  std::printf("mlp: initial loss %.4f, fp32 AdamW %.5f, fp32 Lion %.5f after %d steps\n", l0, base_a, base_l, steps);
  CHECK(base_a < 0.2 * l0);
  CHECK(base_l < 0.2 * l0);
  check_weights<adamw, states::fp32>("adamw", ah, l0, base_a);
  check_weights<adamw, states::int8>("adamw", ah, l0, base_a);
  check_weights<adamw, states::int4>("adamw", ah, l0, base_a);
  check_weights<lion, states::fp32>("lion", lh, l0, base_l);
  check_weights<lion, states::int8>("lion", lh, l0, base_l);
  check_weights<lion, states::int4>("lion", lh, l0, base_l);
}

TEST_CASE("bf16 and fp16 gradients update like their float32 values") {
  const int n = 6000;
  std::vector<float> g32 = ref::normal(n, 41);
  std::vector<bf16> gb(n);
  std::vector<fp16> gh(n);
  std::vector<float> gb32(n), gh32(n);
  for (int i = 0; i < n; ++i) {
    gb[size_t(i)] = to_bf16(g32[size_t(i)]);
    gh[size_t(i)] = to_fp16(g32[size_t(i)]);
    gb32[size_t(i)] = to_float(gb[size_t(i)]);
    gh32[size_t(i)] = to_float(gh[size_t(i)]);
  }
  auto run = [&](const tensor_view& g) {
    std::vector<float> w = ref::normal(n, 42);
    optimizer<adamw, states::int8> opt;
    opt.add_param(make_flat_view(w.data(), n));
    for (int t = 0; t < 3; ++t) opt.step({g});
    return w;
  };
  CHECK(run(make_flat_view(gb.data(), n)) == run(make_flat_view(gb32.data(), n)));
  CHECK(run(make_flat_view(gh.data(), n)) == run(make_flat_view(gh32.data(), n)));
}
