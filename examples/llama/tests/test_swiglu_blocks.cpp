// examples/llama/tests/test_swiglu_blocks.cpp
// ops::swiglu_forward / swiglu_backward take the exps of a block of
// elements first and the divisions and products after, in a vectorized
// loop; every value must equal the one-element scalar form bit for bit, so
// that the CPU trainer's results (docs/RESULTS.md) do not move. The scalar
// form is written out below as the reference. Sizes: below, at and past one
// block of 256 elements, and past the parallel grain (2^15), so that
// threads' ranges end mid-block; float and double; inputs that include
// zeros of both signs and gates whose exp overflows or underflows.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "../ops.hpp"
#include "bitwise.hpp"

using namespace llama;
using bitwise::normal;
using bitwise::same_bits;

namespace {

template <class T>
T scalar_sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <class T>
void check_size(int64_t n, uint64_t seed) {
  std::vector<T> gate = normal<T>(size_t(n), seed), up = normal<T>(size_t(n), seed + 1),
                 dh = normal<T>(size_t(n), seed + 2);
  const T special[] = {T(0), -T(0), T(100), T(-100), T(1000), T(-1000), T(1e-3), T(-20)};
  for (size_t i = 0; i < gate.size(); i += 7) gate[i] = special[(i / 7) % 8];
  for (auto& g : gate) g *= T(3);
  const size_t count = static_cast<size_t>(n);
  std::vector<T> h(count), dgate(count), dup(count);
  std::vector<T> h_ref(count), dgate_ref(count), dup_ref(count);
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[size_t(i)], s = scalar_sigmoid(g), silu = g * s;
    h_ref[size_t(i)] = g * s * up[size_t(i)];
    dup_ref[size_t(i)] = dh[size_t(i)] * silu;
    dgate_ref[size_t(i)] = dh[size_t(i)] * up[size_t(i)] * (s * (T(1) + g * (T(1) - s)));
  }
  ops::swiglu_forward(gate.data(), up.data(), h.data(), n);
  ops::swiglu_backward(dh.data(), gate.data(), up.data(), dgate.data(), dup.data(), n);
  CHECK(same_bits(h, h_ref));
  CHECK(same_bits(dup, dup_ref));
  CHECK(same_bits(dgate, dgate_ref));
}

}  // namespace

TEST_CASE("swiglu by blocks equals the one-element form, bit for bit") {
  for (const int64_t n : {1, 5, 255, 256, 257, 1000, 70001}) {
    CAPTURE(n);
    check_size<float>(n, 11);
    check_size<double>(n, 12);
  }
}
