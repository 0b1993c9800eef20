// examples/llama/init.hpp
// Random initialisation for training from scratch: matrices drawn from
// N(0, 0.02^2) (GPT-2 / LLaMA practice), the two projections that write into
// the residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * n_layers) so
// the stream's variance does not grow with depth, RMSNorm gains 1. Values
// are drawn in float from a seeded mt19937_64 in parameter order (models of
// 64 Mi parameters and more: from Philox keyed by seed and tensor, in
// parallel), then stored in the run's format (rounded or quantized).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "config.hpp"
#include "parameters.hpp"

namespace llama {

// Models above this size are drawn in parallel from Philox (same
// distribution, other draws): one mt19937_64 stream would take minutes for
// a 7B model.
constexpr int64_t parallel_init_min_params = int64_t(64) << 20;

// n draws of N(0, stddev^2) from the counter-based stream (seed, tensor p):
// Box-Muller on two 32-bit words per pair of values, in parallel, the same
// values for any thread count.
inline void philox_normal(float* out, int64_t n, float stddev, uint64_t seed, uint32_t p) {
  lowbit::rng_stream rs;
  rs.seed = seed;
  rs.tensor_id = p;
  rs.purpose = lowbit::rng_purpose::user;
  lowbit::cpu::parallel_for((n + 3) / 4, 1 << 14, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const lowbit::philox_result r = rs.quad(uint64_t(q));
      for (int k = 0; k < 2; ++k) {
        // u1 in (0, 1], u2 in [0, 1)
        const double u1 = (double(r.w[2 * k]) + 1.0) * (1.0 / 4294967296.0);
        const double u2 = double(r.w[2 * k + 1]) * (1.0 / 4294967296.0);
        const double radius = std::sqrt(-2.0 * std::log(u1)) * double(stddev);
        const int64_t e = 4 * q + 2 * k;
        if (e < n) out[e] = float(radius * std::cos(6.283185307179586 * u2));
        if (e + 1 < n) out[e + 1] = float(radius * std::sin(6.283185307179586 * u2));
      }
    }
  });
}

template <class T>
void init_random(weight_store<T>& w, const llama_config& c, uint64_t seed) {
  const bool parallel = c.n_params() >= parallel_init_min_params;
  std::mt19937_64 gen(seed);
  const param_layout& L = *w.layout;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (!i.matrix) {
      T* v = w.vector(int(p));
      for (int64_t e = 0; e < i.numel; ++e) v[e] = T(1);
      continue;
    }
    const bool residual_out = i.name.find("o_proj") != std::string::npos || i.name.find("down_proj") != std::string::npos;
    const float stddev = residual_out ? 0.02f / std::sqrt(2.0f * float(c.n_layers)) : 0.02f;
    std::vector<float> values(static_cast<size_t>(i.numel));
    if (parallel) {
      philox_normal(values.data(), i.numel, stddev, seed, uint32_t(p));
    } else {
      std::normal_distribution<float> d(0.0f, stddev);
      for (float& v : values) v = d(gen);
    }
    w.set_matrix(int(p), values.data());
  }
}

}  // namespace llama
