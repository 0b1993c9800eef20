// examples/llama/init.hpp
// Random initialisation for training from scratch: matrices drawn from
// N(0, 0.02^2) (GPT-2 / LLaMA practice), the two projections that write into
// the residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * n_layers) so
// the stream's variance does not grow with depth, RMSNorm gains 1. Values
// are drawn in float from a seeded mt19937_64 in parameter order, then
// stored in the run's format (rounded or quantized).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "config.hpp"
#include "parameters.hpp"

namespace llama {

template <class T>
void init_random(weight_store<T>& w, const llama_config& c, uint64_t seed) {
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
    std::normal_distribution<float> d(0.0f, stddev);
    std::vector<float> values(static_cast<size_t>(i.numel));
    for (float& v : values) v = d(gen);
    w.set_matrix(int(p), values.data());
  }
}

}  // namespace llama
