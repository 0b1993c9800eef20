// Tests for formats/nested_scales.hpp: the deterministic mean, nested scale
// decode error bounds and the stored statistics.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>

#include <cmath>
#include <numeric>
#include <vector>

#include "format_reference.hpp"

using namespace lowbit;

TEST_CASE("deterministic mean matches a float64 mean") {
  for (int n : {1, 2, 255, 1024, 1025, 100000}) {
    std::vector<float> a = ref::normal(size_t(n), unsigned(n));
    for (auto& v : a) v = std::fabs(v) + 0.1f;
    long double s = 0;
    for (float v : a) s += v;
    const double mean = double(s / n);
    CHECK(std::fabs(double(deterministic_mean(a.data(), n)) - mean) <= 1e-7 * mean);
  }
  CHECK(deterministic_mean(nullptr, 0) == 0.0f);
}

TEST_CASE("double-quantized scales: offset, nested absmax and decode bound") {
  for (int bs : {32, 64, 256}) {
    const int64_t n = int64_t(bs) * 700 + 17;  // 701 blocks -> 3 nested blocks
    std::vector<float> x = ref::heavy_tailed(size_t(n), unsigned(bs));
    quantized_tensor q(make_layout(format::nf4, n, bs, true));
    cpu::quantize(make_flat_view(x.data(), n), q.view());
    quantized_tensor flat(make_layout(format::nf4, n, bs, false));
    cpu::quantize(make_flat_view(x.data(), n), flat.view());
    CHECK(q.codes == flat.codes);  // codes use the exact float32 absmax, as bitsandbytes
    const int64_t nb = q.layout.n_blocks();
    REQUIRE(q.nested_absmax.size() == size_t((nb + 255) / 256));
    double mean = 0;
    for (float a : flat.absmax) mean += a;
    mean /= double(nb);
    CHECK(std::fabs(double(q.nested_offset) - mean) <= 1e-6 * mean);
    const double map_err = ref::max_normalized_error(format::dynamic8);
    for (int64_t c = 0; c < int64_t(q.nested_absmax.size()); ++c) {
      double m = 0;
      for (int64_t b = c * 256; b < std::min(nb, (c + 1) * 256); ++b)
        m = std::max(m, std::fabs(double(flat.absmax[size_t(b)]) - double(q.nested_offset)));
      CHECK(std::fabs(double(q.nested_absmax[size_t(c)]) - m) <= 1e-6 * m);
    }
    const quantized_view v = q.view();
    for (int64_t b = 0; b < nb; ++b) {
      const double exact = flat.absmax[size_t(b)];
      const double nabs = q.nested_absmax[size_t(b / 256)];
      CHECK(std::fabs(double(cpu::block_scale(v, b)) - exact) <= map_err * nabs + 1e-6 * exact);
    }
  }
}
