// optim/element_encode.hpp: the CUDA step's per-element re-encoding picks,
// for every input, the sorted entry that the CPU step's passes pick
// (sorted_floor_index, snap_onto_grid when snapping, then
// nearest_from_floor or stochastic_from_floor), for every format, both
// roundings, with and without snapping, through the bucketed search and
// through the binary search. Inputs: every codebook value and its float
// neighbours up to 3 ulps away, the midpoints of neighbouring values and
// their float neighbours, points just inside the snap tolerance, zeros,
// the ends, values outside [-1, 1], infinities and NaN, and 2^18 random
// values over magnitudes 2^-30 to 2; each with several random bit draws.
#include <doctest/doctest.h>

#include <lowbit/optim/element_encode.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace lowbit;
using namespace lowbit::optim;

namespace {

// The CPU step's choice for one element (cpu_step.hpp, store_tile).
int reference_entry(float u, const sorted_codebook& t, bool stochastic, bool snap, uint32_t r16) {
  int lo = sorted_floor_index(u, t.value, t.steps);
  if (snap) lo = snap_onto_grid(u, lo, t.value, t.size);
  uint8_t idx[256];
  for (int i = 0; i < 256; ++i) idx[i] = uint8_t(i);  // codes := entries, so the functions return the entry
  return stochastic ? stochastic_from_floor(u, lo, r16, t.value, idx, t.size)
                    : nearest_from_floor(u, lo, t.value, idx, t.size);
}

template <bool Stochastic, bool Snap>
int device_entry(float u, const neighbours& nb, const float* padded, int size, uint32_t r16) {
  return pick_entry<Stochastic, Snap>(u, nb, r16, padded[0], padded[size - 1], size);
}

int device_entry(float u, const neighbours& nb, const float* padded, int size, bool stochastic, bool snap,
                 uint32_t r16) {
  if (stochastic) return snap ? device_entry<true, true>(u, nb, padded, size, r16) : device_entry<true, false>(u, nb, padded, size, r16);
  return snap ? device_entry<false, true>(u, nb, padded, size, r16) : device_entry<false, false>(u, nb, padded, size, r16);
}

}  // namespace

TEST_CASE("the CUDA step's element encoding picks the CPU step's entry for every input") {
  for (int fi = 0; fi < format_count; ++fi) {
    const format f = format(fi);
    CAPTURE(format_name(f));
    const sorted_codebook t = make_sorted_codebook(f);
    const cpu::floor_index_table& ft = cpu::floor_index_for(f, t);
    REQUIRE(ft.usable);
    float padded[padded_codebook_size];
    for (int i = 0; i < padded_codebook_size; ++i) padded[i] = i < t.size ? t.value[i] : INFINITY;

    std::vector<float> u = {0.0f, -0.0f, 1e-45f, -1e-45f, 1e-30f, -1e-30f, 1.0f, -1.0f, 1.5f, -1.5f,
                            3e38f, -3e38f, INFINITY, -INFINITY, NAN, -NAN};
    const auto step = [](float x, int n) {
      for (int i = 0; i < std::abs(n); ++i) x = std::nextafter(x, n > 0 ? INFINITY : -INFINITY);
      return x;
    };
    for (int i = 0; i < t.size; ++i) {
      const float v = t.value[i];
      for (int d = -3; d <= 3; ++d) u.push_back(step(v, d));
      const float tol = 9.5367431640625e-07f * std::fabs(v);  // snap_direction's tolerance
      for (float x : {v - tol, v + tol, v - 2 * tol, v + 2 * tol}) u.push_back(x);
      if (i + 1 < t.size) {
        const float mid = 0.5f * (v + t.value[i + 1]);
        for (int d = -3; d <= 3; ++d) u.push_back(step(mid, d));
      }
    }
    std::mt19937 g(static_cast<unsigned>(fi) + 7u);
    std::uniform_real_distribution<float> e(-30.0f, 1.0f);
    for (int i = 0; i < (1 << 18); ++i) u.push_back((g() & 1 ? 1.0f : -1.0f) * std::exp2(e(g)));

    int mismatches = 0;
    for (float x : u)
      for (int draw = 0; draw < 3; ++draw) {
        const uint32_t r16 = draw == 0 ? 0u : (draw == 1 ? 0xFFFFu : (g() & 0xFFFFu));
        const neighbours bucketed = bucketed_neighbours(x, ft.start[cpu::floor_bucket(x)], padded);
        const neighbours binary = neighbours_at(sorted_floor_index(x, padded, t.steps), padded);
        for (int mode = 0; mode < 4; ++mode) {
          const bool stochastic = mode & 1, snap = mode & 2;
          const int want = reference_entry(x, t, stochastic, snap, r16);
          const int got = device_entry(x, bucketed, padded, t.size, stochastic, snap, r16);
          const int got_binary = device_entry(x, binary, padded, t.size, stochastic, snap, r16);
          if ((got != want || got_binary != want) && mismatches++ < 8)
            FAIL_CHECK("u = " << x << " (stochastic " << stochastic << ", snap " << snap << ", r16 " << r16
                              << "): CPU path " << want << ", bucketed " << got << ", binary " << got_binary);
        }
      }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("bucketed_neighbours gives the floor index and both neighbours of the CPU's search") {
  const sorted_codebook t = make_sorted_codebook(format::dynamic8);
  const cpu::floor_index_table& ft = cpu::floor_index_for(format::dynamic8, t);
  float padded[padded_codebook_size];
  for (int i = 0; i < padded_codebook_size; ++i) padded[i] = i < t.size ? t.value[i] : INFINITY;
  std::mt19937 g(3);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = d(g);
    int lo = 0;
    cpu::floor_indices(ft, t, &x, 1, &lo);
    const neighbours nb = bucketed_neighbours(x, ft.start[cpu::floor_bucket(x)], padded);
    REQUIRE(nb.lo == lo);
    REQUIRE(nb.below == t.value[lo]);
    REQUIRE(nb.above == padded[lo + 1]);
    if (x >= t.value[0]) REQUIRE(nb.below <= x);  // below the first value the floor index is 0
    REQUIRE(x < nb.above);
  }
}
