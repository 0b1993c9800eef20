// cpu/floor_index.hpp: the bucketed floor search equals the binary search
// (sorted_floor_index) for every finite input, for every format: all
// codebook values, their float neighbours on both sides, zeros of both
// signs, subnormals, values outside [-1, 1], and 2^20 random values spread
// over magnitudes 2^-30 to 2^2. Its tables must be usable for every lowbit
// format (otherwise the CPU step silently falls back to the slower search).
#include <doctest/doctest.h>

#include <lowbit/cpu/floor_index.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace lowbit;

TEST_CASE("bucketed floor index equals the binary search for every finite input and format") {
  for (int fi = 0; fi < format_count; ++fi) {
    const format f = format(fi);
    CAPTURE(format_name(f));
    const sorted_codebook t = make_sorted_codebook(f);
    const cpu::floor_index_table& ft = cpu::floor_index_for(f, t);
    REQUIRE(ft.usable);
    std::vector<float> u = {0.0f, -0.0f, 1e-45f, -1e-45f, 1e-30f, -1e-30f, 1.0f, -1.0f, 1.5f, -1.5f, 3.9f, -3.9f,
                            1e30f, -1e30f, 3.4e38f, -3.4e38f};
    for (int i = 0; i < t.size; ++i)
      for (float v : {t.value[i], std::nextafter(t.value[i], -INFINITY), std::nextafter(t.value[i], INFINITY)})
        u.push_back(v);
    std::mt19937 g(static_cast<unsigned>(fi));
    std::uniform_real_distribution<float> e(-30.0f, 2.0f);
    for (int i = 0; i < (1 << 20); ++i) u.push_back((g() & 1 ? 1.0f : -1.0f) * std::exp2(e(g)));
    std::vector<int> lo(u.size());
    int mismatches = 0;
    for (size_t s = 0; s < u.size(); s += 256) {
      const int len = int(std::min<size_t>(256, u.size() - s));
      cpu::floor_indices(ft, t, u.data() + s, len, lo.data() + s);
    }
    for (size_t i = 0; i < u.size(); ++i)
      if (lo[i] != sorted_floor_index(u[i], t.value, t.steps) && mismatches++ < 5)
        FAIL_CHECK("u = " << u[i] << ": bucketed " << lo[i] << ", binary " << sorted_floor_index(u[i], t.value, t.steps));
    CHECK(mismatches == 0);
  }
}
