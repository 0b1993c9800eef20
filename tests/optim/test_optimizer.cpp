// Behaviour of the composed optimizer: non-finite gradients leave everything
// untouched and are reported; global-norm clipping equals pre-scaled
// gradients; the per-tensor entry point equals step(); resuming from copied
// states continues bit for bit; memory accounting; argument errors.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>
#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "../formats/format_reference.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

std::vector<uint8_t> snapshot(const storage_view& s) {
  std::vector<uint8_t> out;
  auto add = [&](const void* p, size_t bytes) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + bytes);
  };
  if (s.kind == storage_kind::none) return out;
  if (!s.is_blockwise()) {
    add(s.data, size_t(s.bytes()));
    return out;
  }
  add(s.q.codes, size_t(s.q.layout.code_bytes()));
  if (s.q.layout.nested) {
    add(s.q.absmax_codes, size_t(s.q.layout.n_blocks()));
    add(s.q.nested_absmax, size_t(s.q.layout.n_nested_blocks()) * 4);
    add(s.q.nested_offset, 4);
  } else {
    add(s.q.absmax, size_t(s.q.layout.n_blocks()) * 4);
  }
  return out;
}

template <class Opt>
std::vector<uint8_t> snapshot_all(const Opt& o, int i) {
  std::vector<uint8_t> a = snapshot(o.param(i).weight), b = snapshot(o.param(i).state1),
                       c = snapshot(o.param(i).state2);
  a.insert(a.end(), b.begin(), b.end());
  a.insert(a.end(), c.begin(), c.end());
  return a;
}

}  // namespace

TEST_CASE("a non-finite gradient skips that tensor and leaves it untouched") {
  const int n = 6000;
  quantized_tensor q(make_layout(format::nf4, n, 64, true));
  std::vector<float> x = ref::normal(n, 4);
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  std::vector<float> w2 = ref::normal(n, 5);
  optimizer<adamw, states::int8, weights::quantized<format::nf4>> opt;
  opt.add_param(q.view(), 0, "a");
  optimizer<adamw, states::int8> opt2;
  opt2.add_param(make_flat_view(w2.data(), n), 0, "b");
  std::vector<float> g = ref::normal(n, 6);
  opt.step({make_flat_view(g.data(), n)});  // non-trivial states first
  opt2.step({make_flat_view(g.data(), n)});
  for (float bad : {NAN, INFINITY}) {
    const std::vector<uint8_t> before = snapshot_all(opt, 0), before2 = snapshot_all(opt2, 0);
    std::vector<float> gb = g;
    gb[4321] = bad;
    const step_report r = opt.step({make_flat_view(gb.data(), n)});
    CHECK(r.skipped == 1);
    CHECK(r.skipped_params == std::vector<int>{0});
    CHECK(snapshot_all(opt, 0) == before);
    opt2.begin_step();
    CHECK_FALSE(opt2.step_param(0, make_flat_view(gb.data(), n)));
    CHECK(opt2.end_step().skipped == 1);
    CHECK(snapshot_all(opt2, 0) == before2);
  }
  CHECK(opt.param(0).skipped == 2);
  CHECK(opt.param(0).steps == 1);
}

TEST_CASE("global-norm clipping equals stepping with pre-scaled gradients") {
  const int n = 5000;
  std::vector<float> a = ref::normal(n, 1), b = a, ga = ref::normal(n, 2, 3.0f), gb = ref::normal(300, 3, 3.0f);
  std::vector<float> a2(300, 0.5f), b2(300, 0.5f);
  optimizer_options clip;
  clip.max_grad_norm = 1.0f;
  optimizer<adamw, states::fp32> clipped({}, clip), manual;
  clipped.add_param(make_flat_view(a.data(), n));
  clipped.add_param(make_flat_view(a2.data(), 300));
  manual.add_param(make_flat_view(b.data(), n));
  manual.add_param(make_flat_view(b2.data(), 300));
  const step_report r = clipped.step({make_flat_view(ga.data(), n), make_flat_view(gb.data(), 300)});
  double norm = 0;
  for (float v : ga) norm += double(v) * v;
  for (float v : gb) norm += double(v) * v;
  norm = std::sqrt(norm);
  CHECK(r.grad_norm == doctest::Approx(norm).epsilon(1e-12));
  CHECK(r.grad_scale == doctest::Approx(1.0 / norm).epsilon(1e-6));
  manual.begin_step();
  manual.step_param(0, make_flat_view(ga.data(), n), r.grad_scale);
  manual.step_param(1, make_flat_view(gb.data(), 300), r.grad_scale);
  manual.end_step();
  CHECK(a == b);
  CHECK(a2 == b2);
}

TEST_CASE("a caller's grad_scale must be finite and >= 0; nothing moves when it is not") {
  const int n = 600;
  std::vector<float> w = ref::normal(n, 41), g = ref::normal(n, 42);
  optimizer<adamw, states::fp32> opt;
  opt.add_param(make_flat_view(w.data(), n), 0, "w");
  const std::vector<float> before = w;
  opt.begin_step();
  for (float bad : {std::nanf(""), INFINITY, -1.0f}) {
    CHECK_THROWS_WITH_AS(opt.step_param(0, make_flat_view(g.data(), n), bad),
                         doctest::Contains("optimizer.step_param of 'w': grad_scale must be finite and >= 0"),
                         lowbit::error);
    CHECK_THROWS_WITH_AS(opt.step_param_range(0, 0, make_flat_view(g.data(), n), bad),
                         doctest::Contains("optimizer.step_param_range of 'w': grad_scale must be finite and >= 0"),
                         lowbit::error);
  }
  CHECK(w == before);
  CHECK(opt.param(0).steps == 0);
  CHECK(opt.step_param(0, make_flat_view(g.data(), n), 0.0f));  // a zero factor is a zero gradient
  opt.end_step();
  CHECK(opt.param(0).steps == 1);
}

TEST_CASE("8-bit states whose block absmax is subnormal do not move weights whose gradient is zero") {
  // One tiny gradient leaves a momentum block of absmax ~1e-40 (subnormal):
  // its reciprocal is +infinity, which made the block's zeros NaN on
  // re-encoding, decoded as -absmax: Lion's sign then moved every weight of
  // the block by lr on a step whose gradient was exactly zero.
  const int n = 4096;
  std::vector<float> w(n, 0.5f), g(n, 0.0f);
  optimizer<lion, states::int8> opt(lion::hparams{});
  opt.add_param(make_flat_view(w.data(), n), 0, "w");
  g[1] = 1e-38f;
  opt.step({make_flat_view(g.data(), n)});
  const std::vector<float> after_first = w;
  g[1] = 0.0f;
  for (int s = 0; s < 3; ++s) opt.step({make_flat_view(g.data(), n)});
  int moved = 0;
  for (int i = 0; i < n; ++i) moved += w[size_t(i)] != after_first[size_t(i)] && i != 1;
  CHECK(moved == 0);
}

TEST_CASE("check_gradients = false: the same update without the gradient pass") {
  const int n = 7000;
  std::vector<float> a = ref::normal(n, 31), b = a;
  quantized_tensor qa(make_layout(format::nf4, n, 64, true));
  cpu::quantize(make_flat_view(a.data(), n), qa.view());
  quantized_tensor qb = qa;
  optimizer_options unchecked;
  unchecked.check_gradients = false;
  optimizer<adamw, states::int8> d1, d2({}, unchecked);
  optimizer<lion, states::int8, weights::quantized<format::nf4>> q1, q2({}, unchecked);
  d1.add_param(make_flat_view(a.data(), n));
  d2.add_param(make_flat_view(b.data(), n));
  q1.add_param(qa.view());
  q2.add_param(qb.view());
  for (int t = 0; t < 3; ++t) {
    std::vector<float> g = ref::normal(n, unsigned(40 + t));
    CHECK(d1.step({make_flat_view(g.data(), n)}).grad_norm > 0.0);
    CHECK(d2.step({make_flat_view(g.data(), n)}).grad_norm == -1.0);  // not computed
    q1.step({make_flat_view(g.data(), n)});
    q2.begin_step();
    CHECK(q2.step_param(0, make_flat_view(g.data(), n)));
    q2.end_step();
  }
  CHECK(a == b);
  CHECK(snapshot_all(d1, 0) == snapshot_all(d2, 0));
  CHECK(snapshot_all(q1, 0) == snapshot_all(q2, 0));
  // the documented price: a NaN is no longer caught
  std::vector<float> g = ref::normal(n, 50);
  g[17] = NAN;
  CHECK(d2.step({make_flat_view(g.data(), n)}).skipped == 0);
  CHECK(std::isnan(b[17]));
  // clipping needs the norm, so it needs the pass
  optimizer_options clip = unchecked;
  clip.max_grad_norm = 1.0f;
  CHECK_THROWS_WITH_AS((optimizer<adamw, states::fp32>({}, clip)), doctest::Contains("check_gradients"), error);
}

TEST_CASE("step_param equals step without clipping, for every weight policy") {
  const int n = 4500;
  std::vector<float> g = ref::normal(n, 8);
  std::vector<bf16> w1(n), w2(n);
  for (int i = 0; i < n; ++i) w1[size_t(i)] = w2[size_t(i)] = to_bf16(0.01f * float(i % 100));
  optimizer<lion, states::bf16, weights::bf16> o1, o2;
  o1.add_param(make_flat_view(w1.data(), n));
  o2.add_param(make_flat_view(w2.data(), n));
  for (int t = 0; t < 3; ++t) {
    o1.step({make_flat_view(g.data(), n)});
    o2.begin_step();
    o2.step_param(0, make_flat_view(g.data(), n));
    o2.end_step();
  }
  CHECK(std::memcmp(w1.data(), w2.data(), n * 2) == 0);
  CHECK(snapshot_all(o1, 0) == snapshot_all(o2, 0));
}

TEST_CASE("copying states into a fresh optimizer resumes bit for bit") {
  const int n = 9000;
  quantized_tensor qa(make_layout(format::int8, n, 256, false)), qb(qa.layout);
  std::vector<float> x = ref::normal(n, 12);
  cpu::quantize(make_flat_view(x.data(), n), qa.view());
  using opt_t = optimizer<lion, states::int8, weights::quantized<format::int8>>;
  optimizer_options o;
  o.seed = 77;
  opt_t a(lion::hparams{}, o);
  a.add_param(qa.view());
  for (int t = 0; t < 5; ++t) {
    std::vector<float> g = ref::normal(n, unsigned(100 + t));
    a.step({make_flat_view(g.data(), n)});
  }
  // a fresh optimizer with the same weights, states and counters
  qb = qa;
  opt_t b(lion::hparams{}, o);
  b.add_param(qb.view());
  const storage_view &sa = a.param(0).state1, &sb = b.param(0).state1;
  std::memcpy(sb.q.codes, sa.q.codes, size_t(sa.q.layout.code_bytes()));
  std::memcpy(sb.q.absmax, sa.q.absmax, size_t(sa.q.layout.n_blocks()) * 4);
  b.set_step_count(a.step_count());
  b.param_mutable(0).steps = a.param(0).steps;
  for (int t = 5; t < 10; ++t) {
    std::vector<float> g = ref::normal(n, unsigned(100 + t));
    a.step({make_flat_view(g.data(), n)});
    b.step({make_flat_view(g.data(), n)});
  }
  CHECK(qa.codes == qb.codes);
  CHECK(qa.absmax == qb.absmax);
}

TEST_CASE("memory accounting: bytes per parameter of each combination") {
  const int n = 64 * 256 * 4;
  std::vector<float> w(n);
  std::vector<bf16> wb(n);
  quantized_tensor q(make_layout(format::nf4, n, 64, true)), q8(make_layout(format::int8, n, 256, false));
  optimizer<adamw> fp;
  fp.add_param(make_flat_view(w.data(), n));
  CHECK(fp.memory().bytes_per_param() == doctest::Approx(12.0));
  optimizer<adamw, states::int8, weights::bf16> bf;
  bf.add_param(make_flat_view(wb.data(), n));
  CHECK(bf.memory().bytes_per_param() == doctest::Approx(2.0 + 2 * (1.0 + 4.0 / 256)));
  optimizer<lion, states::int8, weights::quantized<format::int8>> qft;
  qft.add_param(q8.view());
  CHECK(qft.memory().bytes_per_param() == doctest::Approx(1.0 + 4.0 / 256 + 1.0 + 4.0 / 256));
  optimizer<lion, states::int8, weights::quantized<format::nf4>> nf;
  nf.add_param(q.view());
  CHECK(nf.memory().bytes_per_param() == doctest::Approx(4.127 / 8 + 1.0 + 4.0 / 256).epsilon(1e-3));
  optimizer<adamw, states::int4, weights::fp32_master_bf16> m4;
  m4.add_param(make_flat_view(wb.data(), n));
  CHECK(m4.memory().master_bytes == int64_t(n) * 4);
  CHECK(m4.memory().bytes_per_param() == doctest::Approx(2.0 + 4.0 + 2 * (0.5 + 4.0 / 128)));
  CHECK((optimizer<adamw, states::int8>::state_bytes_for(n)) == 2 * (n + n / 256 * 4));
  CHECK((optimizer<adamw, states::int8>::state_bytes_for(100)) == 800);
  // allocated_bytes_for: each array rounded up to 256 bytes (a slab piece)
  // codes 70001 -> 70144, absmax 274 blocks x 4 = 1096 -> 1280, two states
  CHECK((optimizer<adamw, states::int8>::allocated_bytes_for(70001)) == 2 * (70144 + 1280));
  CHECK((optimizer<adamw, states::int8>::allocated_bytes_for(100)) == 2 * 512);  // float32 states under 4096
  CHECK((optimizer<sgd_momentum, states::fp32, weights::fp32_master_bf16>::allocated_bytes_for(1000)) ==
        4096 + 4096);  // float32 master + one float32 state
  CHECK((optimizer<sgd_momentum, states::fp32, weights::fp32_master_bf16>::allocated_bytes_for(1000, false)) == 4096);
}

TEST_CASE("fp32 master with a bf16 working copy") {
  const int n = 4096;
  std::vector<bf16> w(n, to_bf16(1.0f));
  sgd_momentum::hparams h;
  h.lr = 1e-4f;
  h.momentum = 0.0f;
  optimizer<sgd_momentum, states::fp32, weights::fp32_master_bf16> opt(h);
  opt.add_param(make_flat_view(w.data(), n));
  std::vector<float> g(n, -1.0f);
  for (int t = 0; t < 100; ++t) opt.step({make_flat_view(g.data(), n)});
  const float* master = static_cast<const float*>(opt.param(0).weight.data);
  CHECK(master[0] == doctest::Approx(1.01).epsilon(1e-5));  // 100 steps of +1e-4 kept in fp32
  CHECK(to_float(w[0]) == to_float(to_bf16(master[0])));    // working copy = nearest bf16 of the master
}

TEST_CASE("argument errors name what is wrong") {
  std::vector<float> w(100);
  std::vector<bf16> wb(100);
  optimizer<adamw> opt;
  CHECK_THROWS_AS(opt.add_param(make_flat_view(wb.data(), 100)), error);
  CHECK_THROWS_AS(opt.add_param(make_flat_view(w.data(), 100), 3), error);
  CHECK_THROWS_AS(opt.add_param(make_flat_view(w.data(), 100, device::cuda())), error);
  opt.add_param(make_flat_view(w.data(), 100), 0, "layer.weight");
  std::vector<float> g(99);
  try {
    opt.step({make_flat_view(g.data(), 99)});
    FAIL("expected an error");
  } catch (const error& e) {
    CHECK(std::string(e.what()).find("layer.weight") != std::string::npos);
  }
  CHECK_THROWS_AS(opt.step({}), error);
  // registering a tensor inside a begin_step / end_step pair is refused
  opt.begin_step();
  std::vector<float> w2(8);
  try {
    opt.add_param(make_flat_view(w2.data(), 8));
    FAIL("expected an error");
  } catch (const error& e) {
    CHECK(std::string(e.what()).find("step is in progress") != std::string::npos);
  }
  opt.end_step();
  CHECK(opt.size() == 1);
  adamw::hparams bad;
  bad.beta1 = 1.0f;
  CHECK_THROWS_AS((optimizer<adamw>(bad)), error);
  quantized_tensor q(make_layout(format::int4, 100, 64, false));
  optimizer<lion, states::fp32, weights::quantized<format::nf4>> qopt;
  CHECK_THROWS_AS(qopt.add_param(q.view()), error);
}

namespace {

// One optimizer steps each tensor whole (step_param), the other in ranges
// cut at `cuts` (step_param_range); after several steps with different
// gradients, weights (the caller's storage, or the fp32 master), working
// copies and states must be equal bit for bit.
template <class Opt>
void check_ranges_equal_whole(Opt& whole, Opt& ranged, int64_t n, std::vector<int64_t> cuts) {
  cuts.push_back(n);
  for (int t = 0; t < 3; ++t) {
    const std::vector<float> g = ref::normal(size_t(n), uint64_t(40 + t));
    whole.begin_step();
    whole.step_param(0, make_flat_view(const_cast<float*>(g.data()), n));
    whole.end_step();
    ranged.begin_step();
    for (size_t c = 0; c + 1 < cuts.size(); ++c)
      CHECK(ranged.step_param_range(0, cuts[c], make_flat_view(const_cast<float*>(g.data()) + cuts[c],
                                                                cuts[c + 1] - cuts[c])));
    ranged.end_step();
  }
  CHECK(whole.param(0).steps == ranged.param(0).steps);
  CHECK(snapshot_all(whole, 0) == snapshot_all(ranged, 0));
  CHECK(snapshot(whole.param(0).weight_copy) == snapshot(ranged.param(0).weight_copy));
}

}  // namespace

TEST_CASE("step_param_range: ranges covering a tensor equal one whole step, bit for bit") {
  SUBCASE("QFT: int8 weights in place (stochastic rounding), Lion int8 momentum") {
    const int64_t n = 1000;  // the last range ends mid-block
    const std::vector<float> x = ref::normal(size_t(n), 3);
    quantized_tensor q1(make_layout(format::int8, n, 256, false));
    cpu::quantize(make_flat_view(const_cast<float*>(x.data()), n), q1.view());
    quantized_tensor q2 = q1;
    optimizer<lion, states::int8, weights::quantized<format::int8>> o1, o2;
    o1.add_param(q1.view());
    o2.add_param(q2.view());
    CHECK(o2.range_alignment(0) == 256);
    check_ranges_equal_whole(o1, o2, n, {0, 256, 768});
    CHECK(q1.codes == q2.codes);
  }
  SUBCASE("AdamW int8 states, bf16 weights (stochastic rounding): bias correction counted once per step") {
    const int64_t n = 4500;
    std::vector<bf16> w1(static_cast<size_t>(n)), w2;
    for (int64_t i = 0; i < n; ++i) w1[size_t(i)] = to_bf16(0.01f * float(i % 100));
    w2 = w1;
    optimizer<adamw, states::int8, weights::bf16> o1, o2;
    o1.add_param(make_flat_view(w1.data(), n));
    o2.add_param(make_flat_view(w2.data(), n));
    check_ranges_equal_whole(o1, o2, n, {0, 256, 2048, 4352});
    CHECK(std::memcmp(w1.data(), w2.data(), size_t(n) * 2) == 0);
    CHECK(o2.param(0).steps == 3);
  }
  SUBCASE("AdamW 4-bit states, fp32 master with a bf16 working copy") {
    const int64_t n = 1100;
    std::vector<bf16> w1(static_cast<size_t>(n)), w2;
    for (int64_t i = 0; i < n; ++i) w1[size_t(i)] = to_bf16(0.02f * float(i % 37) - 0.3f);
    w2 = w1;
    optimizer<adamw, states::int4, weights::fp32_master_bf16> o1, o2;
    o1.add_param(make_flat_view(w1.data(), n));
    o2.add_param(make_flat_view(w2.data(), n));
    check_ranges_equal_whole(o1, o2, n, {0, 512});
    CHECK(std::memcmp(w1.data(), w2.data(), size_t(n) * 2) == 0);
  }
}

TEST_CASE("step_param_range: a non-finite range is skipped alone; bad ranges are refused") {
  const int64_t n = 1024;
  std::vector<float> w(static_cast<size_t>(n), 0.5f), g = ref::normal(size_t(n), 9);
  optimizer<lion, states::int8, weights::fp32> o;
  o.add_param(make_flat_view(w.data(), n), 0, "embed");
  const std::vector<float> before = w;
  g[600] = std::nanf("");
  o.begin_step();
  CHECK(o.step_param_range(0, 0, make_flat_view(g.data(), 512)));
  CHECK_FALSE(o.step_param_range(0, 512, make_flat_view(g.data() + 512, 256)));
  CHECK_FALSE(o.step_param_range(0, 512, make_flat_view(g.data() + 512, 256)));  // the NaN's range again
  CHECK(o.step_param_range(0, 768, make_flat_view(g.data() + 768, 256)));
  const step_report r = o.end_step();
  CHECK(r.skipped == 1);
  CHECK(o.param(0).steps == 1);
  CHECK(o.param(0).skipped == 1);  // one tensor skipped once, however many of its ranges were
  CHECK(std::memcmp(w.data() + 512, before.data() + 512, 256 * sizeof(float)) == 0);
  CHECK(std::memcmp(w.data(), before.data(), 512 * sizeof(float)) != 0);
  CHECK(std::memcmp(w.data() + 768, before.data() + 768, 256 * sizeof(float)) != 0);

  o.begin_step();
  CHECK_THROWS_WITH_AS(o.step_param_range(0, 100, make_flat_view(g.data(), 256)),
                       doctest::Contains("must start at a multiple of 256"), error);
  CHECK_THROWS_WITH_AS(o.step_param_range(0, 0, make_flat_view(g.data(), 300)),
                       doctest::Contains("end at one or at the tensor's end"), error);
  CHECK_THROWS_WITH_AS(o.step_param_range(0, 768, make_flat_view(g.data(), 512)),
                       doctest::Contains("outside the tensor's 1024"), error);
  o.end_step();
  CHECK_THROWS_WITH_AS(o.step_param_range(0, 0, make_flat_view(g.data(), 256)), doctest::Contains("begin_step"),
                       error);

  quantized_tensor q(make_layout(format::nf4, 512, 64, true));
  optimizer<lion, states::int8, weights::quantized<format::nf4>> on;
  on.add_param(q.view());
  on.begin_step();
  CHECK_THROWS_WITH_AS(on.step_param_range(0, 0, make_flat_view(g.data(), 256)), doctest::Contains("nested scales"),
                       error);
  on.end_step();
}
