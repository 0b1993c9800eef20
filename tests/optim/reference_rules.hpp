// Float64 reference implementations of the update rules (written from the
// formulas in optim/rules.hpp's header comment, not from its code), used to
// check the float32 rules over many steps.
#pragma once

#include <cmath>
#include <vector>

namespace ref {

struct adam_state {
  std::vector<double> p, m, v;
};

inline void adam_step(adam_state& s, const std::vector<double>& g, double lr, double b1, double b2, double eps,
                      double wd, bool decoupled, int t) {
  const double c1 = 1 - std::pow(b1, t), c2 = std::sqrt(1 - std::pow(b2, t));
  for (size_t i = 0; i < s.p.size(); ++i) {
    double gi = g[i];
    if (!decoupled) gi += wd * s.p[i];
    s.m[i] = b1 * s.m[i] + (1 - b1) * gi;
    s.v[i] = b2 * s.v[i] + (1 - b2) * gi * gi;
    if (decoupled) s.p[i] *= 1 - lr * wd;
    s.p[i] -= lr * c2 / c1 * s.m[i] / (std::sqrt(s.v[i]) + eps * c2);
  }
}

inline void lion_step(adam_state& s, const std::vector<double>& g, double lr, double b1, double b2, double wd) {
  for (size_t i = 0; i < s.p.size(); ++i) {
    s.p[i] *= 1 - lr * wd;
    const double u = b1 * s.m[i] + (1 - b1) * g[i];
    s.p[i] -= lr * (u > 0 ? 1.0 : (u < 0 ? -1.0 : 0.0));
    s.m[i] = b2 * s.m[i] + (1 - b2) * g[i];
  }
}

inline void sgd_step(adam_state& s, const std::vector<double>& g, double lr, double mu, double wd) {
  for (size_t i = 0; i < s.p.size(); ++i) {
    const double gi = g[i] + wd * s.p[i];
    s.m[i] = mu * s.m[i] + gi;
    s.p[i] -= lr * s.m[i];
  }
}

}  // namespace ref
