// lowbit/core/rng.hpp
// Counter-based random numbers for deterministic stochastic rounding:
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// The bits for element i of a tensor at a given step are a pure function of
// (seed, tensor id, purpose, step, i): never of thread ids or launch shape,
// so CPU and GPU, any grid, and a resumed run all draw the same numbers.
// One Philox call yields four 32-bit words. Stochastic rounding takes 16 bits
// per element (random16): one call serves eight consecutive elements, which
// halves the generator's share of an optimizer step.
#pragma once

#include <cstdint>

#include "config.hpp"

namespace lowbit {

struct philox_result {
  uint32_t w[4];
};

LOWBIT_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * uint64_t(b)) >> 32);
#endif
}

LOWBIT_HD philox_result philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u, w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(m0, c0), lo0 = m0 * c0;
    const uint32_t hi1 = mulhi32(m1, c2), lo1 = m1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += w0, k1 += w1;
  }
  return {{c0, c1, c2, c3}};
}

// What a random stream is used for; part of the counter so that the weight,
// the first and the second optimizer state never share bits.
enum class rng_purpose : uint32_t { weight = 0, state1 = 1, state2 = 2, user = 3 };

// Identifies one stream of random numbers: the run's seed, the tensor, the
// purpose and the optimizer step.
struct rng_stream {
  uint64_t seed = 0;
  uint32_t tensor_id = 0;
  rng_purpose purpose = rng_purpose::weight;
  uint32_t step = 0;
  // Added to every quad index: a stream for a part of a tensor that starts
  // at element 8 first_quad (random16's eight elements per quad) draws the
  // whole tensor's bits for its elements.
  uint64_t first_quad = 0;

  // Four words: 32 bits each for elements 4q .. 4q+3 (bits()), or 16 bits
  // each for elements 8q .. 8q+7 (random16()).
  LOWBIT_HD philox_result quad(uint64_t q) const {
    q += first_quad;
    return philox4x32_10(uint32_t(q), uint32_t(q >> 32), step, (tensor_id << 2) | uint32_t(purpose),
                         uint32_t(seed), uint32_t(seed >> 32));
  }
  // The 32 random bits of element i (one Philox call; prefer quad() in loops).
  LOWBIT_HD uint32_t bits(uint64_t i) const { return quad(i >> 2).w[i & 3]; }
  // The 16 random bits of element i that stochastic rounding uses (one Philox
  // call; loops take quad(i >> 3) once and random16(r, k) for its 8 elements).
  LOWBIT_HD uint32_t bits16(uint64_t i) const;
};

// Element k (0..7) of the eight that one quad serves: the low half of word
// k / 2 for even k, the high half for odd k.
LOWBIT_HD uint32_t random16(const philox_result& r, int k) { return (r.w[k >> 1] >> (16 * (k & 1))) & 0xFFFFu; }

LOWBIT_HD uint32_t rng_stream::bits16(uint64_t i) const { return random16(quad(i >> 3), int(i & 7)); }

// A uniform float in [0, 1) with 24 random bits.
LOWBIT_HD float uniform_from_bits(uint32_t r) { return float(r >> 8) * 5.9604644775390625e-8f; }

}  // namespace lowbit
