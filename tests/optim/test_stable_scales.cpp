// optimizer_options::stable_weight_scales on the CPU step: blockwise weights
// keep each block's decoded scale unless the block's absmax grows, so
//  * a step that changes no weight leaves the stored bytes identical (codes,
//    scales and nested parameters; FP4 may turn a -0 code into +0), for
//    every format and scale kind;
//  * a step that pushes values past their block's scale grows it, and the
//    decoded weights stay within one quantization level of the exact update;
//  * the re-encoding stays unbiased: the mean error of a small update over
//    2^20 elements is within 5 standard deviations of zero;
//  * the CPU step's binary search for a grown nested block's scale code
//    chooses what the CUDA kernel's full search chooses.
#include <doctest/doctest.h>

#include <lowbit/optim/optimizer.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

using namespace lowbit;
using namespace lowbit::optim;

namespace {

template <format F>
using lion_q = optimizer<lion, states::fp32, weights::quantized<F>>;

quantized_tensor random_weights(format f, int64_t n, bool nested, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(g);
  quantized_tensor q(make_layout(f, n, 64, nested));
  cpu::quantize(make_flat_view(v.data(), n), q.view());
  return q;
}

std::vector<float> decoded(quantized_tensor& q) {
  std::vector<float> out(static_cast<size_t>(q.layout.n));
  cpu::dequantize(q.view(), make_flat_view(out.data(), q.layout.n));
  return out;
}

// Largest gap between adjacent values of a format's decode table.
float max_gap(format f) {
  const code_table t = make_code_table(f);
  std::vector<float> v(t.value, t.value + (is_4bit(f) ? 16 : 256));
  std::sort(v.begin(), v.end());
  float gap = 0;
  for (size_t i = 1; i < v.size(); ++i) gap = std::max(gap, v[i] - v[i - 1]);
  return gap;
}

template <format F>
void check_unchanged_without_update(bool nested) {
  INFO("format " << int(F) << (nested ? ", nested scales" : ", float32 scales"));
  const int64_t n = 64 * 300;
  quantized_tensor q = random_weights(F, n, nested, 1);
  const quantized_tensor before = q;
  optimizer_options o;
  o.stable_weight_scales = true;
  lion::hparams h;
  h.lr = 1e-3f;
  lion_q<F> opt(h, o);
  opt.add_param(q.view());
  std::vector<float> zero(static_cast<size_t>(n), 0.0f);  // Lion: sign(0) = 0, no update
  for (int s = 0; s < 3; ++s) opt.step({make_flat_view(zero.data(), n)});
  // FP4 has two zero codes (+0 and -0); both decode to zero and come back
  // as +0, so for it the decoded values are compared, not the codes.
  quantized_tensor b = before;
  if (F == format::fp4) CHECK(decoded(q) == decoded(b));
  else CHECK(q.codes == before.codes);
  CHECK(q.absmax == before.absmax);
  CHECK(q.absmax_codes == before.absmax_codes);
  CHECK(q.nested_absmax == before.nested_absmax);
  CHECK(q.nested_offset == before.nested_offset);
}

template <format F>
void check_growth(bool nested) {
  const int64_t n = 64 * 256;
  quantized_tensor q = random_weights(F, n, nested, 2);
  const std::vector<float> w0 = decoded(q);
  optimizer_options o;
  o.stable_weight_scales = true;
  lion::hparams h;
  h.lr = 0.05f;  // larger than most weights: every block must grow
  lion_q<F> opt(h, o);
  opt.add_param(q.view());
  std::vector<float> g(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) g[size_t(i)] = (i % 3 == 0) ? 1.0f : -1.0f;
  opt.step({make_flat_view(g.data(), n)});
  const std::vector<float> w1 = decoded(q);
  const float gap = max_gap(F);
  for (int64_t b = 0; b < n / 64; ++b) {
    const float scale = cpu::block_scale(q.view(), b);
    for (int64_t i = b * 64; i < b * 64 + 64; ++i) {
      const float exact = w0[size_t(i)] - h.lr * (g[size_t(i)] > 0 ? 1.0f : -1.0f);
      // Values are clamped to +-scale, then rounded within one level. Float32
      // scales grow to cover the block exactly; nested scales are themselves
      // quantized when a block outgrows its group, which may clip a little.
      const float clamped = std::max(-scale, std::min(scale, exact));
      if (!nested) REQUIRE(scale >= std::fabs(exact) * (1.0f - 1e-6f));
      REQUIRE(std::fabs(w1[size_t(i)] - clamped) <= gap * scale * (1.0f + 1e-5f));
      REQUIRE(std::fabs(clamped - exact) <= 0.02f * std::fabs(exact));
    }
  }
}

}  // namespace

TEST_CASE("stable scales: a step that changes no weight leaves every stored byte as it was") {
  check_unchanged_without_update<format::nf4>(true);
  check_unchanged_without_update<format::nf4>(false);
  check_unchanged_without_update<format::int8>(false);
  check_unchanged_without_update<format::int8>(true);
  check_unchanged_without_update<format::fp4>(true);
}

TEST_CASE("stable scales: blocks grow when the update pushes values past their scale") {
  check_growth<format::nf4>(true);
  check_growth<format::nf4>(false);
  check_growth<format::int8>(false);
}

TEST_CASE("stable scales: stochastic re-encoding of a small update is unbiased") {
  const int64_t n = int64_t(1) << 20;
  quantized_tensor q = random_weights(format::nf4, n, true, 3);
  const std::vector<float> w0 = decoded(q);
  optimizer_options o;
  o.stable_weight_scales = true;
  o.seed = 9;
  lion::hparams h;
  h.lr = 2e-4f;  // far below an NF4 step (about 0.003 here): almost every element rounds back
  lion_q<format::nf4> opt(h, o);
  opt.add_param(q.view());
  std::vector<float> g(static_cast<size_t>(n), -1.0f);  // every weight should rise by lr
  opt.step({make_flat_view(g.data(), n)});
  const std::vector<float> w1 = decoded(q);
  const float gap = max_gap(format::nf4);
  double err = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double exact = double(w0[size_t(i)]) + double(h.lr);
    err += double(w1[size_t(i)]) - exact;
    const double level = double(gap) * double(cpu::block_scale(q.view(), i / 64));
    var += level * level / 4.0;  // stochastic rounding variance <= level^2 / 4
  }
  const double mean = err / double(n), sigma = std::sqrt(var) / double(n);
  INFO("mean error " << mean << ", sigma " << sigma);
  CHECK(std::fabs(mean) < 5.0 * sigma);
  CHECK(mean > -0.5 * double(h.lr));  // the update is not lost (round-to-nearest would lose it all)
}

// The CPU step's binary search over the sorted map (choose_stable_scale with a sorted_scale_map)
// against the full search the CUDA kernel runs: the same value, code and
// renest flag on random groups, including a zero group absmax (every code
// decodes to the offset: a 256-way tie) and tiny ones (many ties), with m at,
// just above and just below decoded scales as well as anywhere. The signed
// dynamic map is ascending in code order, so its ties resolve to the first
// covering code by themselves; the same map shuffled checks that ties go to
// the lowest code for any map.
TEST_CASE("choose_stable_scale: the sorted map's binary search equals the full search") {
  std::array<float, 256> shuffled = signed_dynamic_map();
  std::mt19937 g(11);
  std::shuffle(shuffled.begin(), shuffled.end(), g);
  for (const float* map : {signed_dynamic_map().data(), static_cast<const float*>(shuffled.data())}) {
    const sorted_scale_map sorted = sort_scale_map(map);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    int grown = 0, renested = 0, tied = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      const int kind = trial % 5;
      const float group_absmax = kind == 0 ? 0.0f : kind == 1 ? 1e-40f * float(1 + g() % 50) : 0.001f + 0.01f * u(g);
      const float offset = trial % 7 == 0 ? 0.0f : 0.02f * u(g);
      const float old_scale = decode_nested_scale(uint8_t(g() % 256), group_absmax, offset, map);
      const float at = decode_nested_scale(uint8_t(g() % 256), group_absmax, offset, map);
      const float choices[4] = {at, std::nextafter(at, INFINITY), std::nextafter(at, -INFINITY),
                                old_scale * (0.5f + 1.5f * u(g)) + (trial % 9 == 0 ? 0.05f : 0.0f)};
      for (float m : choices) {
        const stable_scale full = choose_stable_scale(old_scale, m, true, group_absmax, offset, map);
        const stable_scale fast = choose_stable_scale(old_scale, m, true, group_absmax, offset, map, &sorted);
        CAPTURE(trial);
        CAPTURE(m);
        REQUIRE(fast.code == full.code);
        REQUIRE(fast.renest == full.renest);
        REQUIRE(std::memcmp(&fast.value, &full.value, sizeof(float)) == 0);
        grown += full.code >= 0;
        renested += full.renest;
        tied += full.code >= 0 && kind <= 1;
      }
      const stable_scale flat = choose_stable_scale(old_scale, old_scale * 2 + 1, false, 0, 0, map, &sorted);
      CHECK(flat.value == old_scale * 2 + 1);  // float32 scales: the absmax itself
    }
    CHECK(grown > 1000);  // every branch was exercised
    CHECK(renested > 100);
    CHECK(tied > 100);
  }
}

TEST_CASE("stable scales are refused with round-to-nearest weights") {
  optimizer_options o;
  o.stable_weight_scales = true;
  using rn = optimizer<lion, states::fp32, weights::quantized<format::nf4, rounding::nearest>>;
  CHECK_THROWS_WITH_AS(rn(lion::hparams{}, o), doctest::Contains("needs stochastic rounding of the weights"), error);
}

// The shared decision function itself (stable_scales.hpp), on random
// nested-scale groups: a block that fits keeps its scale; one that grows
// takes a scale >= its absmax, and no code of the group decodes to a value
// in [absmax, chosen) (the choice is the smallest covering one); renest is
// asked for exactly when no code covers the absmax.
TEST_CASE("choose_stable_scale keeps, grows to the smallest covering code, or asks to renest") {
  const float* map = signed_dynamic_map().data();
  std::mt19937 g(5);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  int grown = 0, renested = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const float group_absmax = 0.001f + 0.01f * u(g), offset = 0.02f * u(g);
    const float old_scale = decode_nested_scale(uint8_t(g() % 256), group_absmax, offset, map);
    const float m = old_scale * (0.5f + 1.2f * u(g)) + (trial % 10 == 0 ? 0.05f : 0.0f);
    const stable_scale c = choose_stable_scale(old_scale, m, true, group_absmax, offset, map);
    if (m <= old_scale) {
      CHECK(c.value == old_scale);
      CHECK(c.code == -1);
      CHECK_FALSE(c.renest);
      continue;
    }
    float smallest_cover = INFINITY;
    for (int k = 0; k < 256; ++k) {
      const float d = decode_nested_scale(uint8_t(k), group_absmax, offset, map);
      if (d >= m) smallest_cover = std::min(smallest_cover, d);
    }
    if (std::isinf(smallest_cover)) {
      CHECK(c.renest);
      CHECK(c.value == m);
      ++renested;
    } else {
      REQUIRE(c.code >= 0);
      CHECK_FALSE(c.renest);
      CHECK(c.value == smallest_cover);
      CHECK(decode_nested_scale(uint8_t(c.code), group_absmax, offset, map) == c.value);
      ++grown;
    }
  }
  CHECK(grown > 100);  // both branches were exercised
  CHECK(renested > 10);
  // float32 scales: a grown block takes its absmax exactly
  const stable_scale f = choose_stable_scale(0.5f, 0.75f, false, 0.0f, 0.0f, map);
  CHECK(f.value == 0.75f);
  CHECK(f.code == -1);
}

TEST_CASE("snap_direction snaps only round-trip error, never a real move") {
  // table[c] * s * (1/s) lands within a few ulps of table[c]: snapped
  const float v = 0.7229568362236023f;  // an NF4 grid value
  CHECK(snap_direction(std::nextafter(v, 0.0f), 0.5626170039176941f, v) == 1);
  CHECK(snap_direction(std::nextafter(v, 1.0f), v, 1.0f) == -1);
  // a move of 1e-4 of the grid gap is kept for stochastic rounding
  const float moved = v + 1e-4f * (1.0f - v);
  CHECK(snap_direction(moved, v, 1.0f) == 0);
}
