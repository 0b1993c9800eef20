// qft_regression: quantized full-parameter tuning in miniature, using only
// lowbit's public API. A linear layer's weight W (out x in) lives as int8
// blockwise codes (no fp32 master); Lion with 8-bit momentum updates it in
// place with stochastic rounding, so weights plus optimizer states cost about
// 2 bytes per parameter. The task is regression onto a random teacher layer.
// Prints the loss as training goes, the memory table against fp32 AdamW, and
// saves / reloads the optimizer state to show an exact resume.
//
//   qft_regression [--steps N] [--lr X] [--check]
//   --check: exit 1 unless the final loss is below 5% of the initial loss and
//            the resumed run matches the uninterrupted one bit for bit.
#include <lowbit/lowbit.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace lowbit;
using namespace lowbit::optim;

namespace {

constexpr int in_features = 128, out_features = 128, batch = 256;

struct task {
  std::vector<float> x, y;  // x: [batch, in], y: [batch, out]
  task() {
    std::mt19937 g(1);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> teacher(size_t(out_features) * in_features);
    for (auto& v : teacher) v = 0.1f * d(g);
    x.resize(size_t(batch) * in_features);
    for (auto& v : x) v = d(g);
    y.assign(size_t(batch) * out_features, 0.0f);
    for (int b = 0; b < batch; ++b)
      for (int o = 0; o < out_features; ++o) {
        float s = 0;
        for (int i = 0; i < in_features; ++i) s += teacher[size_t(o * in_features + i)] * x[size_t(b * in_features + i)];
        y[size_t(b * out_features + o)] = s;
      }
  }
  // mean squared error of W and its gradient dL/dW
  double loss(const std::vector<float>& w, std::vector<float>* grad) const {
    std::vector<float> r(size_t(batch) * out_features);
    double l = 0;
    for (int b = 0; b < batch; ++b)
      for (int o = 0; o < out_features; ++o) {
        float s = -y[size_t(b * out_features + o)];
        for (int i = 0; i < in_features; ++i) s += w[size_t(o * in_features + i)] * x[size_t(b * in_features + i)];
        r[size_t(b * out_features + o)] = s;
        l += double(s) * s / (double(batch) * out_features);
      }
    if (grad) {
      grad->assign(w.size(), 0.0f);
      for (int b = 0; b < batch; ++b)
        for (int o = 0; o < out_features; ++o) {
          const float c = 2.0f * r[size_t(b * out_features + o)] / float(batch * out_features);
          for (int i = 0; i < in_features; ++i) (*grad)[size_t(o * in_features + i)] += c * x[size_t(b * in_features + i)];
        }
    }
    return l;
  }
};

using qft_optimizer = optimizer<lion, states::int8, weights::quantized<format::int8>>;

std::vector<float> read(quantized_tensor& w) {
  std::vector<float> out(size_t(w.layout.n));
  cpu::dequantize(w.view(), make_flat_view(out.data(), w.layout.n));
  return out;
}

double train(const task& t, quantized_tensor& w, qft_optimizer& opt, int first_step, int steps, bool verbose) {
  std::vector<float> g;
  double l = 0;
  for (int s = 0; s < steps; ++s) {
    l = t.loss(read(w), &g);
    opt.step({make_flat_view(g.data(), int64_t(g.size()))});
    if (verbose && ((first_step + s) % 50 == 0)) std::printf("step %4d  loss %.5f\n", first_step + s, l);
  }
  return t.loss(read(w), nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 300;
  float lr = 3e-3f;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--lr" && i + 1 < argc) lr = float(std::atof(argv[++i]));
    else if (a == "--check") check = true;
    else if (a == "--help" || a == "-h") {
      std::printf("usage: qft_regression [--steps N] [--lr X] [--check]\n");
      return 0;
    } else {
      std::fprintf(stderr, "qft_regression: unknown argument '%s' (try --help)\n", a.c_str());
      return 2;
    }
  }
  try {
    const task t;
    const int64_t n = int64_t(out_features) * in_features;
    // start from small random weights, stored as int8 blocks of 256
    std::vector<float> init(static_cast<size_t>(n));
    std::mt19937 g(2);
    std::normal_distribution<float> d(0.0f, 0.05f);
    for (auto& v : init) v = d(g);
    quantized_tensor w(make_layout(format::int8, n, 256), {out_features, in_features});
    cpu::quantize(make_flat_view(init.data(), n), w.view());

    optimizer_options o;
    o.seed = 42;
    lion::hparams h;
    h.lr = lr;
    qft_optimizer opt(h, o);
    opt.add_param(w.view(), 0, "layer.weight");

    const double initial = t.loss(read(w), nullptr);
    const memory_report m = opt.memory();
    std::printf("QFT: int8 weights + Lion with int8 momentum, %lld parameters\n", static_cast<long long>(n));
    std::printf("memory: weights %.3f + states %.3f = %.3f bytes/param (fp32 weights + fp32 AdamW: 12; %.1f%%)\n",
                double(m.weight_bytes) / double(n), double(m.state_bytes) / double(n), m.bytes_per_param(),
                100.0 * m.bytes_per_param() / 12.0);
    const int first = steps / 2;
    double loss = train(t, w, opt, 0, first, true);

    // save the state, continue in a fresh optimizer, compare with this one
    const std::string path = "qft_regression_state.safetensors";
    save_optimizer_state(opt, path);
    quantized_tensor w2 = w;
    qft_optimizer resumed(h, o);
    resumed.add_param(w2.view(), 0, "layer.weight");
    load_optimizer_state(resumed, path);
    std::remove(path.c_str());
    loss = train(t, w, opt, first, steps - first, true);
    const double loss2 = train(t, w2, resumed, first, steps - first, false);
    const bool same = w.codes == w2.codes && w.absmax == w2.absmax;
    std::printf("final loss %.5f (initial %.5f); resumed run %s the uninterrupted one\n", loss, initial,
                same ? "matches" : "DIFFERS FROM");
    (void)loss2;
    if (check && (!(loss < 0.05 * initial) || !same)) {
      std::fprintf(stderr, "qft_regression: check failed\n");
      return 1;
    }
    return 0;
  } catch (const error& e) {
    std::fprintf(stderr, "qft_regression: %s\n", e.what());
    return 1;
  }
}
