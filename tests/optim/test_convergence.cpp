// Convergence of every composed optimizer on two small problems, against the
// fp32-weights / fp32-states run of the same rule after the same number of
// steps, plus the stall of quantized weights under round-to-nearest.
//
// Margin. Progress is measured as the fraction of the fp32 run's loss
// reduction a combination achieves: r = (L0 - L) / (L0 - L_fp32). Required:
// r >= 0.97 when weights are fp32, bf16 or int8, and r >= 0.85 for 4-bit
// weights, whose grid spacing (block absmax / 7 for int4, similar for NF4)
// keeps stochastically rounded weights a random walk of about half a grid
// step around the optimum (Lion moves every weight every step, so it feels
// this most).
#include <doctest/doctest.h>

#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../formats/format_reference.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

// Least squares: minimize 0.5/B * ||X W^T - Y||^2 over W (rows x cols).
struct least_squares {
  static constexpr int rows = 64, cols = 64, batch = 96;
  std::vector<float> x, y, w_star;
  least_squares() {
    x = ref::normal(size_t(batch) * cols, 1);
    w_star = ref::normal(size_t(rows) * cols, 2, 0.1f);
    y.assign(size_t(batch) * rows, 0.0f);
    std::vector<float> noise = ref::normal(y.size(), 3, 0.01f);
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < rows; ++r) {
        double s = 0;
        for (int c = 0; c < cols; ++c) s += double(x[size_t(b * cols + c)]) * w_star[size_t(r * cols + c)];
        y[size_t(b * rows + r)] = float(s) + noise[size_t(b * rows + r)];
      }
  }
  // loss and (optionally) gradient at w
  double loss(const std::vector<float>& w, std::vector<float>* grad) const {
    std::vector<double> resid(size_t(batch) * rows);
    double l = 0;
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < rows; ++r) {
        double s = -double(y[size_t(b * rows + r)]);
        for (int c = 0; c < cols; ++c) s += double(x[size_t(b * cols + c)]) * w[size_t(r * cols + c)];
        resid[size_t(b * rows + r)] = s;
        l += 0.5 * s * s / batch;
      }
    if (grad) {
      grad->assign(w.size(), 0.0f);
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
          double s = 0;
          for (int b = 0; b < batch; ++b) s += resid[size_t(b * rows + r)] * x[size_t(b * cols + c)];
          (*grad)[size_t(r * cols + c)] = float(s / batch);
        }
    }
    return l;
  }
};

const least_squares& problem() {
  static const least_squares p;
  return p;
}

constexpr int steps = 300;
constexpr int n = least_squares::rows * least_squares::cols;

std::vector<float> initial() { return ref::normal(n, 4, 0.1f); }

// Runs `steps` of an optimizer whose weights are presented to the loss as
// float32 via `read(weights)`; returns the final loss.
template <class Opt, class Weights, class Read>
double train(Opt& opt, Weights& storage, Read read) {
  std::vector<float> w = read(storage), g;
  for (int t = 0; t < steps; ++t) {
    problem().loss(w, &g);
    opt.step({make_flat_view(g.data(), n)});
    w = read(storage);
  }
  return problem().loss(w, nullptr);
}

template <class Rule, class States>
double run_fp32(const typename Rule::hparams& h) {
  optimizer<Rule, States> opt(h);
  std::vector<float> w = initial();
  opt.add_param(make_flat_view(w.data(), n));
  return train(opt, w, [](std::vector<float>& s) { return s; });
}

template <class Rule, class States, class WeightPolicy>
double run_bf16(const typename Rule::hparams& h) {
  optimizer_options o;
  o.seed = 5;
  optimizer<Rule, States, WeightPolicy> opt(h, o);
  std::vector<float> init = initial();
  std::vector<bf16> w(n);
  for (int i = 0; i < n; ++i) w[size_t(i)] = to_bf16(init[size_t(i)]);
  opt.add_param(make_flat_view(w.data(), n));
  return train(opt, w, [](std::vector<bf16>& s) {
    std::vector<float> out(s.size());
    for (size_t i = 0; i < s.size(); ++i) out[i] = to_float(s[i]);
    return out;
  });
}

template <class Rule, class States, format F, rounding R = rounding::stochastic>
double run_quantized(const typename Rule::hparams& h, int bs, bool nested) {
  optimizer_options o;
  o.seed = 5;
  optimizer<Rule, States, weights::quantized<F, R>> opt(h, o);
  std::vector<float> init = initial();
  quantized_tensor q(make_layout(F, n, bs, nested));
  cpu::quantize(make_flat_view(init.data(), n), q.view());
  opt.add_param(q.view());
  return train(opt, q, [](quantized_tensor& s) {
    std::vector<float> out(n);
    cpu::dequantize(s.view(), make_flat_view(out.data(), n));
    return out;
  });
}

// Loss at the optimum rounded to nearest in a format.
double format_floor(format f, int bs, bool nested) {
  const auto& p = problem();
  quantized_tensor q(make_layout(f, n, bs, nested));
  cpu::quantize(make_flat_view(p.w_star.data(), n), q.view());
  std::vector<float> w(n);
  cpu::dequantize(q.view(), make_flat_view(w.data(), n));
  return p.loss(w, nullptr);
}

double bf16_floor() {
  std::vector<float> w = problem().w_star;
  for (auto& v : w) v = to_float(to_bf16(v));
  return problem().loss(w, nullptr);
}

template <class Rule, class States>
void check_all_weights(const char* rule_name, const typename Rule::hparams& h, double baseline, double initial_loss) {
  struct result {
    std::string name;
    double loss, floor;
  };
  std::vector<result> results = {
      {"fp32", run_fp32<Rule, States>(h), 0.0},
      {"bf16+sr", run_bf16<Rule, States, weights::bf16>(h), bf16_floor()},
      {"fp32 master+bf16", run_bf16<Rule, States, weights::fp32_master_bf16>(h), bf16_floor()},
      {"int8+sr (256)", run_quantized<Rule, States, format::int8>(h, 256, false), format_floor(format::int8, 256, false)},
      {"int4+sr (64)", run_quantized<Rule, States, format::int4>(h, 64, false), format_floor(format::int4, 64, false)},
      {"nf4+sr (64, nested)", run_quantized<Rule, States, format::nf4>(h, 64, true), format_floor(format::nf4, 64, true)},
  };
  for (const result& r : results) {
    const bool four_bit = r.name.rfind("int4", 0) == 0 || r.name.rfind("nf4", 0) == 0;
    const double progress = (initial_loss - r.loss) / (initial_loss - baseline);
    std::printf("  %-6s states=%-5s weights=%-20s loss %.5f (fp32 %.5f, nearest-rounded optimum %.5f) progress %.3f\n",
                rule_name, States::name, r.name.c_str(), r.loss, baseline, r.floor, progress);
    CAPTURE(r.name);
    CHECK(progress >= (four_bit ? 0.85 : 0.97));
  }
}

}  // namespace

TEST_CASE("every AdamW and Lion combination converges on least squares") {
  const double initial_loss = problem().loss(initial(), nullptr);
  adamw::hparams ah;
  ah.lr = 1e-2f;
  ah.weight_decay = 0.0f;
  lion::hparams lh;
  lh.lr = 1e-3f;
  const double base_adamw = run_fp32<adamw, states::fp32>(ah);
  const double base_lion = run_fp32<lion, states::fp32>(lh);
  std::printf("least squares: initial loss %.4f, fp32 AdamW %.5f, fp32 Lion %.5f after %d steps\n", initial_loss,
              base_adamw, base_lion, steps);
  CHECK(base_adamw < 0.05 * initial_loss);
  CHECK(base_lion < 0.05 * initial_loss);
  check_all_weights<adamw, states::fp32>("adamw", ah, base_adamw, initial_loss);
  check_all_weights<adamw, states::bf16>("adamw", ah, base_adamw, initial_loss);
  check_all_weights<adamw, states::int8>("adamw", ah, base_adamw, initial_loss);
  check_all_weights<adamw, states::int4>("adamw", ah, base_adamw, initial_loss);
  check_all_weights<lion, states::fp32>("lion", lh, base_lion, initial_loss);
  check_all_weights<lion, states::bf16>("lion", lh, base_lion, initial_loss);
  check_all_weights<lion, states::int8>("lion", lh, base_lion, initial_loss);
  check_all_weights<lion, states::int4>("lion", lh, base_lion, initial_loss);
}

TEST_CASE("quantized momentum needs stochastic re-encoding: Lion with nearest-rounded int8 states lags") {
  lion::hparams h;
  h.lr = 1e-3f;
  const double initial_loss = problem().loss(initial(), nullptr);
  const double fp = run_fp32<lion, states::fp32>(h);
  const double sr = run_fp32<lion, states::int8>(h);
  const double rn = run_fp32<lion, states::int8_nearest>(h);
  std::printf("lion momentum: fp32 states %.4f, int8 stochastic %.4f, int8 nearest %.4f (initial %.4f)\n", fp, sr,
              rn, initial_loss);
  CHECK((initial_loss - sr) >= 0.97 * (initial_loss - fp));
  CHECK(rn > 1.5 * sr);  // nearest re-encoding loses small momentum increments
}

TEST_CASE("quantized weights stall under round-to-nearest where stochastic rounding converges") {
  // int8 blocks of 256 have a grid step of absmax/127 ~ 2.4e-3 here; AdamW's
  // per-step update of ~lr = 5e-4 is below half a step, so nearest rounding
  // writes back the same codes forever.
  adamw::hparams h;
  h.lr = 5e-4f;
  h.weight_decay = 0.0f;
  const double start = [] {
    std::vector<float> w = initial();
    quantized_tensor q(make_layout(format::int8, n, 256, false));
    cpu::quantize(make_flat_view(w.data(), n), q.view());
    cpu::dequantize(q.view(), make_flat_view(w.data(), n));
    return problem().loss(w, nullptr);
  }();
  const double rn = run_quantized<adamw, states::fp32, format::int8, rounding::nearest>(h, 256, false);
  const double sr = run_quantized<adamw, states::fp32, format::int8, rounding::stochastic>(h, 256, false);
  const double fp = run_fp32<adamw, states::fp32>(h);
  std::printf("stall: start %.4f, int8 nearest %.4f, int8 stochastic %.4f, fp32 %.4f\n", start, rn, sr, fp);
  // stochastic rounding makes nearly all of the fp32 progress; nearest
  // rounding makes a small fraction of it (only elements whose update
  // exceeds half a grid step, e.g. in the first Adam steps, ever move)
  CHECK((start - sr) >= 0.97 * (start - fp));
  CHECK((start - rn) <= 0.3 * (start - sr));
}
