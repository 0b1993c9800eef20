// lowbit/optim/rules.hpp
// Optimizer update rules as host/device functors: Lion, Adam, AdamW and SGD
// with momentum. Each rule has a `hparams` struct (per parameter group), a
// `consts` struct of per-step float constants computed once on the host (bias
// corrections in double, then rounded), and `apply`, the per-element update
// in float32 used unchanged by the CPU and CUDA steps. Products feeding sums
// use mul_rn / add_rn so both backends round identically (no FMA).
//
// Formulas (bitsandbytes / PyTorch conventions):
//   Adam(W): m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//            p -= lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps sqrt(1-b2^t))
//            AdamW: p *= 1 - lr wd first (decoupled); Adam: g += wd p (L2).
//   Lion:    p *= 1 - lr wd;  p -= lr sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g
//   SGD:     g += wd p;  m = mu m + g;  p -= lr m
#pragma once

#include <cmath>
#include <cstdint>

#include "../core/config.hpp"
#include "../core/error.hpp"

namespace lowbit {
namespace optim {

namespace detail {
inline void check_rate(float v, const char* name, bool allow_zero = true) {
  require(std::isfinite(v) && (allow_zero ? v >= 0.0f : v > 0.0f), errc::invalid_argument,
          std::string("optimizer hyperparameter ") + name + " must be finite and " +
              (allow_zero ? ">= 0" : "> 0") + ", got " + std::to_string(v));
}
inline void check_beta(float v, const char* name) {
  require(v >= 0.0f && v < 1.0f, errc::invalid_argument,
          std::string("optimizer hyperparameter ") + name + " must be in [0, 1), got " + std::to_string(v));
}
}  // namespace detail

struct adam_consts {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float step_size;     // lr sqrt(1-b2^t) / (1-b1^t)
  float eps_hat;       // eps sqrt(1-b2^t)
  float decay_factor;  // 1 - lr wd (decoupled) or 1
  float l2;            // wd (coupled) or 0
};

template <bool Decoupled>
struct adam_rule {
  static constexpr int n_states = 2;
  static constexpr bool decoupled = Decoupled;
  static constexpr const char* name = Decoupled ? "adamw" : "adam";
  struct hparams {
    float lr = 1e-3f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = Decoupled ? 1e-2f : 0.0f;
    void validate() const {
      detail::check_rate(lr, "lr");
      detail::check_beta(beta1, "beta1");
      detail::check_beta(beta2, "beta2");
      detail::check_rate(eps, "eps", false);
      detail::check_rate(weight_decay, "weight_decay");
    }
  };
  using consts = adam_consts;
  // t is the 1-based step number.
  static consts make_consts(const hparams& h, int64_t t) {
    const double c1 = 1.0 - std::pow(double(h.beta1), double(t));
    const double c2 = std::sqrt(1.0 - std::pow(double(h.beta2), double(t)));
    consts c;
    c.beta1 = h.beta1;
    c.beta2 = h.beta2;
    c.one_minus_beta1 = 1.0f - h.beta1;
    c.one_minus_beta2 = 1.0f - h.beta2;
    c.step_size = float(double(h.lr) * c2 / c1);
    c.eps_hat = float(double(h.eps) * c2);
    c.decay_factor = Decoupled ? 1.0f - h.lr * h.weight_decay : 1.0f;
    c.l2 = Decoupled ? 0.0f : h.weight_decay;
    return c;
  }
  LOWBIT_HD static float apply(float p, float g, float& m, float& v, const consts& c) {
    if (!Decoupled) g = add_rn(g, mul_rn(c.l2, p));
    m = add_rn(mul_rn(c.beta1, m), mul_rn(c.one_minus_beta1, g));
    v = add_rn(mul_rn(c.beta2, v), mul_rn(mul_rn(c.one_minus_beta2, g), g));
    p = mul_rn(p, c.decay_factor);
    return add_rn(p, -mul_rn(c.step_size, div_rn(m, add_rn(sqrt_rn(v), c.eps_hat))));
  }
};

using adam = adam_rule<false>;
using adamw = adam_rule<true>;

struct lion {
  static constexpr int n_states = 1;
  static constexpr const char* name = "lion";
  struct hparams {
    float lr = 1e-4f;
    float beta1 = 0.9f;
    float beta2 = 0.99f;
    float weight_decay = 0.0f;
    void validate() const {
      detail::check_rate(lr, "lr");
      detail::check_beta(beta1, "beta1");
      detail::check_beta(beta2, "beta2");
      detail::check_rate(weight_decay, "weight_decay");
    }
  };
  struct consts {
    float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, decay_factor;
  };
  static consts make_consts(const hparams& h, int64_t) {
    return {h.lr, h.beta1, h.beta2, 1.0f - h.beta1, 1.0f - h.beta2, 1.0f - h.lr * h.weight_decay};
  }
  LOWBIT_HD static float apply(float p, float g, float& m, float&, const consts& c) {
    p = mul_rn(p, c.decay_factor);
    const float u = add_rn(mul_rn(c.beta1, m), mul_rn(c.one_minus_beta1, g));
    const float s = float(u > 0.0f) - float(u < 0.0f);  // sign, 0 for 0 and NaN; vectorizes without blends
    m = add_rn(mul_rn(c.beta2, m), mul_rn(c.one_minus_beta2, g));
    return add_rn(p, -mul_rn(c.lr, s));
  }
};

struct sgd_momentum {
  static constexpr int n_states = 1;
  static constexpr const char* name = "sgd_momentum";
  struct hparams {
    float lr = 1e-2f;
    float momentum = 0.9f;
    float weight_decay = 0.0f;
    void validate() const {
      detail::check_rate(lr, "lr");
      detail::check_beta(momentum, "momentum");
      detail::check_rate(weight_decay, "weight_decay");
    }
  };
  struct consts {
    float lr, momentum, weight_decay;
  };
  static consts make_consts(const hparams& h, int64_t) { return {h.lr, h.momentum, h.weight_decay}; }
  LOWBIT_HD static float apply(float p, float g, float& m, float&, const consts& c) {
    g = add_rn(g, mul_rn(c.weight_decay, p));
    m = add_rn(mul_rn(c.momentum, m), g);
    return add_rn(p, -mul_rn(c.lr, m));
  }
};

}  // namespace optim
}  // namespace lowbit
