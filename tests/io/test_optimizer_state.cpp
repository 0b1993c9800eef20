// Optimizer checkpoints through safetensors (io/optimizer_state.hpp): a run
// saved after a few steps (one of them skipped for a NaN gradient), reloaded
// into a fresh optimizer together with the caller's weights and continued,
// matches an uninterrupted run bit for bit, for int8 states with fp32
// weights, int4 states with NF4 weights, bf16 states with an fp32 master and
// plain SGD; the file uses bitsandbytes' per-parameter key names; a file from
// a differently composed optimizer, with other parameters, or with a missing,
// truncated, retyped or corrupted key is rejected with the right error code
// and leaves the target optimizer's states and counters unchanged byte for
// byte; device-resident memory policies go through copy_to_host /
// copy_from_host, and are refused when they have none.
#include <doctest/doctest.h>

#include <lowbit/io/optimizer_state.hpp>
#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../formats/format_reference.hpp"
#include "io_test_util.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

// Host bytes of one stored tensor (codes, then scales, for blockwise ones).
void append_storage(std::vector<uint8_t>& out, const storage_view& s) {
  auto put = [&](const void* p, int64_t bytes) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + bytes);
  };
  out.push_back(uint8_t(s.kind));
  if (s.kind == storage_kind::none) return;
  if (!s.is_blockwise()) {
    put(s.data, s.bytes());
    return;
  }
  const blockwise_layout& l = s.q.layout;
  put(s.q.codes, l.code_bytes());
  if (l.nested) {
    put(s.q.absmax_codes, l.n_blocks());
    put(s.q.nested_absmax, 4 * l.n_nested_blocks());
    put(s.q.nested_offset, 4);
  } else {
    put(s.q.absmax, 4 * l.n_blocks());
  }
}

// Everything a resumed run depends on: weights (or master), working copies,
// states, per-parameter counters and the global step count.
template <class Opt>
std::vector<uint8_t> fingerprint(const Opt& o) {
  std::vector<uint8_t> out;
  auto put_int = [&](int64_t v) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), b, b + 8);
  };
  put_int(o.step_count());
  for (int i = 0; i < o.size(); ++i) {
    const param_record& p = o.param(i);
    append_storage(out, p.weight);
    append_storage(out, p.weight_copy);
    append_storage(out, p.state1);
    append_storage(out, p.state2);
    put_int(p.steps);
    put_int(p.skipped);
  }
  return out;
}

// States and counters only (what load_optimizer_state may write).
template <class Opt>
std::vector<uint8_t> state_fingerprint(const Opt& o) {
  std::vector<uint8_t> out;
  for (int i = 0; i < o.size(); ++i) {
    append_storage(out, o.param(i).state1);
    append_storage(out, o.param(i).state2);
    out.push_back(uint8_t(o.param(i).steps));
    out.push_back(uint8_t(o.param(i).skipped));
  }
  out.push_back(uint8_t(o.step_count()));
  return out;
}

// Steps [t0, t1) with deterministic gradients; at step 2 parameter 0 gets a
// NaN (skipped: its steps and the global step count then differ).
template <class Opt>
void run_steps(Opt& o, int t0, int t1) {
  for (int t = t0; t < t1; ++t) {
    std::vector<std::vector<float>> g;
    std::vector<tensor_view> views;
    for (int i = 0; i < o.size(); ++i) g.push_back(ref::normal(size_t(o.param(i).weight.n), unsigned(1000 * t + i), 0.5f));
    if (t == 2) g[0][7] = NAN;
    for (auto& v : g) views.push_back(make_flat_view(v.data(), int64_t(v.size())));
    o.step(views);
  }
}

optimizer_options seeded() {
  optimizer_options o;
  o.seed = 0x5eed;
  return o;
}

// Runs `a` 4 steps, saves the optimizer plus whatever `save_weights` adds
// (the caller's weights) into one file, builds a fresh optimizer from that
// file with `resume`, then runs both 5 more steps: they must agree bit for
// bit right after loading and at the end.
template <class Opt, class SaveWeights, class Resume>
void check_resume(Opt& a, SaveWeights&& save_weights, Resume&& resume, bool via_file = false) {
  run_steps(a, 0, 4);
  REQUIRE(a.step_count() == 4);
  REQUIRE(a.param(0).steps == 3);
  REQUIRE(a.param(0).skipped == 1);
  safetensors_writer w;
  save_weights(w);
  save_optimizer_state(a, w);
  io_test::scratch_dir dir;
  std::vector<uint8_t> bytes;
  safetensors_reader r;
  if (via_file) {
    w.write(dir.file("ckpt.safetensors"));
    r = safetensors_reader::open(dir.file("ckpt.safetensors"));
  } else {
    bytes = w.to_bytes();
    r = safetensors_reader::parse(bytes.data(), bytes.size());
  }
  std::unique_ptr<Opt> b = resume(r);
  CHECK(fingerprint(*b) == fingerprint(a));
  CHECK(b->step_count() == 4);
  const std::vector<uint8_t> at_save = fingerprint(a);
  run_steps(a, 4, 9);
  run_steps(*b, 4, 9);
  CHECK(fingerprint(a) != at_save);
  CHECK(fingerprint(*b) == fingerprint(a));
  CHECK(b->step_count() == 9);
  CHECK(b->param(0).steps == 8);
}

// An editable copy of a safetensors file, for corrupting one key at a time.
struct file_image {
  struct entry {
    std::string name;
    dtype type;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<entry> tensors;
  std::map<std::string, std::string> metadata;

  explicit file_image(const std::vector<uint8_t>& file) {
    const safetensors_reader r = safetensors_reader::parse(file.data(), file.size());
    for (const safetensors_tensor& t : r.tensors())
      tensors.push_back({t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    metadata = r.metadata();
  }
  entry& at(const std::string& name) {
    for (entry& e : tensors)
      if (e.name == name) return e;
    throw std::runtime_error("test: no key " + name);
  }
  void erase(const std::string& name) {
    for (size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].name == name) {
        tensors.erase(tensors.begin() + long(i));
        return;
      }
    throw std::runtime_error("test: no key " + name);
  }
  std::vector<uint8_t> bytes() const {
    safetensors_writer w;
    for (const entry& e : tensors) w.add_owned(e.name, e.type, e.shape, e.bytes);
    for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
    return w.to_bytes();
  }
};

template <class Opt>
std::vector<uint8_t> saved(const Opt& o, const std::string& prefix = "optimizer.") {
  safetensors_writer w;
  save_optimizer_state(o, w, prefix);
  return w.to_bytes();
}

// Loading `file` into `o` must throw `code` with `part` in the message and
// leave o exactly as it was.
template <class Opt>
void check_rejected(Opt& o, const std::vector<uint8_t>& file, errc code, const std::string& part) {
  const std::vector<uint8_t> before = fingerprint(o);
  const io_test::thrown t = io_test::catch_error([&] {
    const safetensors_reader r = safetensors_reader::parse(file.data(), file.size(), "ckpt");
    load_optimizer_state(o, r);
  });
  CHECK(t.threw);
  CHECK(t.lowbit);
  CHECK_MESSAGE(t.code == code, t.message);
  CHECK_MESSAGE(io_test::contains(t.message, part), t.message);
  CHECK(fingerprint(o) == before);
}

using adamw8 = optimizer<adamw, states::int8>;

// The optimizer the mismatch tests load into: "w" (5000, int8 states) and
// "b" (1000, float32 states), stepped so its states are not zero.
struct target {
  std::vector<float> w = ref::normal(5000, 1), b = ref::normal(1000, 2);
  adamw8 opt{adamw::hparams{}, seeded()};
  target() {
    opt.add_param(make_flat_view(w.data(), 5000), 0, "w");
    opt.add_param(make_flat_view(b.data(), 1000), 0, "b");
    for (int t = 0; t < 2; ++t) {
      std::vector<float> gw = ref::normal(5000, unsigned(50 + t)), gb = ref::normal(1000, unsigned(60 + t));
      opt.step({make_flat_view(gw.data(), 5000), make_flat_view(gb.data(), 1000)});
    }
  }
};

// A source of files: same names and sizes as target, three steps taken.
template <class Opt>
std::vector<uint8_t> file_from(std::vector<std::pair<std::string, int>> params) {
  std::vector<std::vector<float>> ws;
  for (auto& p : params) ws.push_back(ref::normal(size_t(p.second), 9));
  Opt o(typename Opt::hparams{}, seeded());
  for (size_t i = 0; i < params.size(); ++i)
    o.add_param(make_flat_view(ws[i].data(), params[i].second), 0, params[i].first);
  run_steps(o, 0, 3);
  return saved(o);
}

}  // namespace

TEST_CASE("optimizer state: adamw + int8 states, fp32 weights resume bit for bit") {
  std::vector<float> w1 = ref::normal(5000, 11), w2 = ref::normal(1000, 12), r1, r2;
  adamw8 a(adamw::hparams{}, seeded());
  a.add_param(make_flat_view(w1.data(), 5000), 0, "layer.weight");
  a.add_param(make_flat_view(w2.data(), 1000), 0, "layer.bias");
  REQUIRE(a.param(0).state1.is_blockwise());
  REQUIRE(!a.param(1).state1.is_blockwise());
  check_resume(
      a,
      [&](safetensors_writer& w) {
        w.add("model.layer.weight", make_flat_view(w1.data(), 5000));
        w.add("model.layer.bias", make_flat_view(w2.data(), 1000));
      },
      [&](const safetensors_reader& r) {
        r1 = r.at("model.layer.weight").to_vector<float>();
        r2 = r.at("model.layer.bias").to_vector<float>();
        auto b = std::make_unique<adamw8>(adamw::hparams{}, seeded());
        b->add_param(make_flat_view(r1.data(), 5000), 0, "layer.weight");
        b->add_param(make_flat_view(r2.data(), 1000), 0, "layer.bias");
        load_optimizer_state(*b, r);
        return b;
      });
  CHECK(w1 == r1);
  CHECK(w2 == r2);
}

TEST_CASE("optimizer state: lion + int4 states, NF4 weights saved with save_quantized resume bit for bit") {
  using opt_t = optimizer<lion, states::int4, weights::quantized<format::nf4>>;
  quantized_tensor qa(make_layout(format::nf4, 6000, 64, true), {60, 100}), qs(make_layout(format::nf4, 1000, 64, false));
  std::vector<float> x = ref::normal(6000, 21), y = ref::normal(1000, 22);
  cpu::quantize(make_flat_view(x.data(), 6000), qa.view());
  cpu::quantize(make_flat_view(y.data(), 1000), qs.view());
  quantized_tensor qa2, qs2;
  opt_t a(lion::hparams{}, seeded());
  a.add_param(qa.view(), 0, "big");
  a.add_param(qs.view(), 0, "small");
  REQUIRE(a.param(0).state1.is_blockwise());
  REQUIRE(is_4bit(a.param(0).state1.q.layout.fmt));
  check_resume(
      a,
      [&](safetensors_writer& w) {
        save_quantized(w, "model.big.weight", qa, dtype::f32);
        save_quantized(w, "model.small.weight", qs, dtype::f32);
      },
      [&](const safetensors_reader& r) {
        qa2 = load_quantized(r, "model.big.weight").tensor;
        qs2 = load_quantized(r, "model.small.weight").tensor;
        auto b = std::make_unique<opt_t>(lion::hparams{}, seeded());
        b->add_param(qa2.view(), 0, "big");
        b->add_param(qs2.view(), 0, "small");
        load_optimizer_state(*b, r);
        return b;
      },
      /*via_file=*/true);
  CHECK(qa.codes == qa2.codes);
  CHECK(qa.absmax_codes == qa2.absmax_codes);
  CHECK(qs.absmax == qs2.absmax);
}

TEST_CASE("optimizer state: adamw + bf16 states with an fp32 master resume bit for bit") {
  using opt_t = optimizer<adamw, states::bf16, weights::fp32_master_bf16>;
  std::vector<bf16> w1(4500), w2(300), r1, r2;
  const std::vector<float> x1 = ref::normal(4500, 31), x2 = ref::normal(300, 32);
  for (size_t i = 0; i < w1.size(); ++i) w1[i] = to_bf16(x1[i]);
  for (size_t i = 0; i < w2.size(); ++i) w2[i] = to_bf16(x2[i]);
  adamw::hparams h;
  h.lr = 1e-4f;  // updates far below a bf16 step: only the master keeps them
  opt_t a(h, seeded());
  a.add_param(make_flat_view(w1.data(), 4500), 0, "w1");
  a.add_param(make_flat_view(w2.data(), 300), 0, "w2");
  check_resume(
      a,
      [&](safetensors_writer& w) {
        w.add("model.w1", make_flat_view(w1.data(), 4500));
        w.add("model.w2", make_flat_view(w2.data(), 300));
      },
      [&](const safetensors_reader& r) {
        CHECK(r.at("optimizer.w1.master").type == dtype::f32);
        r1 = r.at("model.w1").to_vector<bf16>();
        r2 = r.at("model.w2").to_vector<bf16>();
        auto b = std::make_unique<opt_t>(h, seeded());
        b->add_param(make_flat_view(r1.data(), 4500), 0, "w1");
        b->add_param(make_flat_view(r2.data(), 300), 0, "w2");
        // The master rebuilt from bf16 is not the saved one: loading must fix that.
        CHECK(std::memcmp(b->param(0).weight.data, a.param(0).weight.data, 4500 * 4) != 0);
        load_optimizer_state(*b, r);
        return b;
      });
  CHECK(std::memcmp(w1.data(), r1.data(), w1.size() * 2) == 0);
}

TEST_CASE("optimizer state: sgd_momentum, fp32 states, resumes bit for bit through the path overloads") {
  using opt_t = optimizer<sgd_momentum>;
  std::vector<float> w1 = ref::normal(3000, 41), w2 = ref::normal(64, 42), r1, r2;
  opt_t a(sgd_momentum::hparams{}, seeded());
  a.add_param(make_flat_view(w1.data(), 3000), 0, "w1");
  a.add_param(make_flat_view(w2.data(), 64), 0, "w2");
  run_steps(a, 0, 4);
  io_test::scratch_dir dir;
  const std::string path = dir.file("optim.safetensors");
  save_optimizer_state(a, path);
  CHECK(dir.entries() == 1);  // no temporary left behind
  r1 = w1;
  r2 = w2;
  opt_t b(sgd_momentum::hparams{}, seeded());
  b.add_param(make_flat_view(r1.data(), 3000), 0, "w1");
  b.add_param(make_flat_view(r2.data(), 64), 0, "w2");
  load_optimizer_state(b, path);
  CHECK(fingerprint(b) == fingerprint(a));
  run_steps(a, 4, 9);
  run_steps(b, 4, 9);
  CHECK(fingerprint(b) == fingerprint(a));
  CHECK(w1 == r1);
  // Overwriting an existing checkpoint goes through the same atomic path.
  save_optimizer_state(b, path);
  CHECK(dir.entries() == 1);
  const safetensors_reader r = safetensors_reader::open(path);
  int64_t sc = 0;
  std::memcpy(&sc, r.at("optimizer.step_count").data, 8);
  CHECK(sc == 9);
}

TEST_CASE("optimizer state: keys follow bitsandbytes' state_dict names") {
  std::vector<float> w = ref::normal(5000, 1), b = ref::normal(1000, 2);
  adamw8 o(adamw::hparams{}, seeded());
  o.add_param(make_flat_view(w.data(), 5000), 0, "w");
  o.add_param(make_flat_view(b.data(), 1000), 0, "b");
  run_steps(o, 0, 3);
  safetensors_writer sw;
  save_optimizer_state(o, sw);
  const std::string header = sw.header();
  for (const char* k : {"\"optimizer.w.state1\"", "\"optimizer.w.state2\"", "\"optimizer.w.qmap1\"",
                        "\"optimizer.w.qmap2\"", "\"optimizer.w.absmax1\"", "\"optimizer.w.absmax2\"",
                        "\"optimizer.w.step\"", "\"optimizer.b.state1\"", "\"optimizer.step_count\""})
    CHECK_MESSAGE(io_test::contains(header, k), k);
  const std::vector<uint8_t> file = sw.to_bytes();
  const safetensors_reader r = safetensors_reader::parse(file.data(), file.size());
  const safetensors_tensor& s1 = r.at("optimizer.w.state1");
  CHECK(s1.type == dtype::u8);
  CHECK(s1.shape == std::vector<int64_t>{5000});
  CHECK(r.at("optimizer.w.absmax1").shape == std::vector<int64_t>{20});  // ceil(5000 / 256)
  CHECK(r.at("optimizer.w.absmax2").type == dtype::f32);
  CHECK(r.at("optimizer.w.step").type == dtype::i64);
  CHECK(r.at("optimizer.w.step").shape == std::vector<int64_t>{1});
  int64_t step = 0;
  std::memcpy(&step, r.at("optimizer.w.step").data, 8);
  CHECK(step == 2);  // three steps, one skipped
  std::memcpy(&step, r.at("optimizer.w.skipped").data, 8);
  CHECK(step == 1);
  // qmaps are the decode tables: signed dynamic map for m, unsigned for v
  const std::vector<float> q1 = r.at("optimizer.w.qmap1").to_vector<float>();
  const std::vector<float> q2 = r.at("optimizer.w.qmap2").to_vector<float>();
  const code_table t1 = make_code_table(format::dynamic8), t2 = make_code_table(format::udynamic8);
  REQUIRE(q1.size() == 256);
  REQUIRE(q2.size() == 256);
  for (int c = 0; c < 256; ++c) {
    CHECK(q1[size_t(c)] == t1.value[c]);
    CHECK(q2[size_t(c)] == t2.value[c]);
  }
  // the small tensor keeps float32 states and has no quantization keys
  CHECK(r.at("optimizer.b.state1").type == dtype::f32);
  CHECK(r.at("optimizer.b.state1").shape == std::vector<int64_t>{1000});
  CHECK_FALSE(r.contains("optimizer.b.qmap1"));
  CHECK_FALSE(r.contains("optimizer.b.absmax2"));
  CHECK_FALSE(r.contains("optimizer.w.master"));
  CHECK(r.metadata().at("optimizer.rule") == "adamw");
  CHECK(r.metadata().at("optimizer.state_policy") == "int8");
  CHECK(r.metadata().at("optimizer.weight_policy") == "fp32");
  CHECK(io_test::contains(r.metadata().at("optimizer.params"), "\"dynamic8\""));

  // 4-bit states store 16-entry maps; one-state rules have no state2
  quantized_tensor q(make_layout(format::nf4, 4096, 64, false));
  optimizer<lion, states::int4, weights::quantized<format::nf4>> l;
  l.add_param(q.view(), 0, "q");
  const std::vector<uint8_t> lf = saved(l, "opt/");
  const safetensors_reader lr = safetensors_reader::parse(lf.data(), lf.size());
  CHECK(lr.at("opt/q.qmap1").shape == std::vector<int64_t>{16});
  CHECK(lr.at("opt/q.state1").shape == std::vector<int64_t>{2048});
  CHECK(lr.at("opt/q.absmax1").shape == std::vector<int64_t>{32});
  CHECK_FALSE(lr.contains("opt/q.state2"));
  CHECK(lr.metadata().at("opt/weight_policy") == "quantized+sr:nf4");
}

TEST_CASE("optimizer state: two optimizers share one file under different prefixes") {
  target t;
  std::vector<float> x = ref::normal(500, 3), x2 = x;
  optimizer<sgd_momentum> s(sgd_momentum::hparams{}, seeded()), s2;
  s.add_param(make_flat_view(x.data(), 500), 0, "w");
  s2.add_param(make_flat_view(x2.data(), 500), 0, "w");
  run_steps(s, 0, 4);
  safetensors_writer w;
  save_optimizer_state(t.opt, w, "adam/");
  save_optimizer_state(s, w, "sgd/");
  // the same prefix twice is refused without touching the writer
  const size_t n = w.size();
  CHECK_THROWS_AS(save_optimizer_state(s, w, "sgd/"), error);
  CHECK(w.size() == n);
  const std::vector<uint8_t> file = w.to_bytes();
  const safetensors_reader r = safetensors_reader::parse(file.data(), file.size());
  load_optimizer_state(s2, r, "sgd/");
  CHECK(state_fingerprint(s2) == state_fingerprint(s));
  target t2;
  run_steps(t2.opt, 0, 1);
  REQUIRE(state_fingerprint(t2.opt) != state_fingerprint(t.opt));
  load_optimizer_state(t2.opt, r, "adam/");
  CHECK(state_fingerprint(t2.opt) == state_fingerprint(t.opt));
  // and the default prefix is not there
  CHECK(io_test::catch_error([&] { load_optimizer_state(s2, r); }).code == errc::malformed_file);
}

TEST_CASE("optimizer state: a differently composed optimizer is refused, states untouched") {
  target t;
  const std::vector<std::pair<std::string, int>> same{{"w", 5000}, {"b", 1000}};
  check_rejected(t.opt, file_from<optimizer<lion, states::int8>>(same), errc::invalid_argument,
                 "rule lion in file, optimizer uses adamw");
  check_rejected(t.opt, file_from<optimizer<adamw, states::int4>>(same), errc::invalid_argument,
                 "state policy int4 in file, optimizer uses int8");
  check_rejected(t.opt, file_from<optimizer<adamw, states::fp32>>(same), errc::invalid_argument,
                 "state policy fp32 in file, optimizer uses int8");
  {  // weight policy
    std::vector<bf16> a(5000), b(1000);
    optimizer<adamw, states::int8, weights::bf16> o;
    o.add_param(make_flat_view(a.data(), 5000), 0, "w");
    o.add_param(make_flat_view(b.data(), 1000), 0, "b");
    check_rejected(t.opt, saved(o), errc::invalid_argument, "weight policy bf16+sr in file, optimizer uses fp32");
  }
  check_rejected(t.opt, file_from<adamw8>({{"w", 5000}}), errc::invalid_argument,
                 "file holds 1 parameters under 'optimizer.', optimizer has 2");
  check_rejected(t.opt, file_from<adamw8>({{"w", 5000}, {"b", 1000}, {"c", 10}}), errc::invalid_argument,
                 "file holds 3 parameters");
  check_rejected(t.opt, file_from<adamw8>({{"w", 5000}, {"c", 1000}}), errc::invalid_argument,
                 "parameter 1 is 'c' in file, optimizer has 'b'");
  check_rejected(t.opt, file_from<adamw8>({{"b", 1000}, {"w", 5000}}), errc::invalid_argument,
                 "parameter 0 is 'b' in file, optimizer has 'w'");
  check_rejected(t.opt, file_from<adamw8>({{"w", 5000}, {"b", 1001}}), errc::invalid_argument,
                 "parameter 'b' has 1001 elements in file, optimizer has 1000");
  check_rejected(t.opt, file_from<adamw8>({{"w", 4000}, {"b", 1000}}), errc::invalid_argument,
                 "parameter 'w' has 4000 elements");
  // a one-state rule's file into a two-state optimizer and the other way round
  {
    std::vector<float> a = ref::normal(5000, 1), b = ref::normal(1000, 2);
    optimizer<lion, states::int8> l(lion::hparams{}, seeded());
    l.add_param(make_flat_view(a.data(), 5000), 0, "w");
    l.add_param(make_flat_view(b.data(), 1000), 0, "b");
    check_rejected(l, saved(t.opt), errc::invalid_argument, "rule adamw in file, optimizer uses lion");
  }
}

TEST_CASE("optimizer state: broken files are refused, states untouched") {
  target t;
  const std::vector<uint8_t> good = file_from<adamw8>({{"w", 5000}, {"b", 1000}});
  {  // the good file loads (the control for everything below)
    target u;
    const safetensors_reader r = safetensors_reader::parse(good.data(), good.size());
    load_optimizer_state(u.opt, r);
    CHECK(u.opt.step_count() == 3);
    CHECK(u.opt.param(1).skipped == 0);
    CHECK(u.opt.param(0).skipped == 1);
  }
  auto edited = [&](const std::function<void(file_image&)>& edit) {
    file_image im(good);
    edit(im);
    return im.bytes();
  };
  // Corruptions in the last parameter's keys: nothing of the first may be written either.
  check_rejected(t.opt, edited([](file_image& f) { f.erase("optimizer.b.state2"); }), errc::malformed_file,
                 "missing key 'optimizer.b.state2'");
  check_rejected(t.opt, edited([](file_image& f) {
                   auto& e = f.at("optimizer.b.state1");
                   e.shape = {999};
                   e.bytes.resize(999 * 4);
                 }),
                 errc::malformed_file, "'optimizer.b.state1' has shape [999]");
  check_rejected(t.opt, edited([](file_image& f) {
                   auto& e = f.at("optimizer.b.state1");
                   e.type = dtype::bf16;
                   e.bytes.resize(1000 * 2);
                 }),
                 errc::malformed_file, "'optimizer.b.state1' has dtype BF16, expected F32");
  check_rejected(t.opt, edited([](file_image& f) {
                   int64_t v = -1;
                   std::memcpy(f.at("optimizer.b.step").bytes.data(), &v, 8);
                 }),
                 errc::malformed_file, "'optimizer.b.step' holds -1");
  check_rejected(t.opt, edited([](file_image& f) {
                   auto& e = f.at("optimizer.b.skipped");
                   e.shape = {2};
                   e.bytes.resize(16);
                 }),
                 errc::malformed_file, "'optimizer.b.skipped' has shape [2]");
  check_rejected(t.opt, edited([](file_image& f) {
                   f.tensors.push_back({"optimizer.b.absmax1", dtype::f32, {4}, std::vector<uint8_t>(16)});
                 }),
                 errc::malformed_file, "unexpected key 'optimizer.b.absmax1'");
  check_rejected(t.opt, edited([](file_image& f) { f.erase("optimizer.step_count"); }), errc::malformed_file,
                 "missing key 'optimizer.step_count'");
  // Blockwise keys of the first parameter.
  check_rejected(t.opt, edited([](file_image& f) {
                   auto& e = f.at("optimizer.w.state1");
                   e.shape = {4999};
                   e.bytes.resize(4999);
                 }),
                 errc::malformed_file, "'optimizer.w.state1' has shape [4999]");
  check_rejected(t.opt, edited([](file_image& f) { f.erase("optimizer.w.absmax2"); }), errc::malformed_file,
                 "missing key 'optimizer.w.absmax2'");
  check_rejected(t.opt, edited([](file_image& f) {
                   float nan = NAN;
                   std::memcpy(f.at("optimizer.w.absmax1").bytes.data() + 8, &nan, 4);
                 }),
                 errc::malformed_file, "'optimizer.w.absmax1' block 2");
  check_rejected(t.opt, edited([](file_image& f) {
                   float v = 0.5f;
                   std::memcpy(f.at("optimizer.w.qmap2").bytes.data() + 4 * 10, &v, 4);
                 }),
                 errc::invalid_argument, "'optimizer.w.qmap2' differs from lowbit's udynamic8 table at entry 10");
  // bitsandbytes' qmaps differ from lowbit's by up to 2 float32 ulps with
  // the CPU that built them (torch.linspace's vectorized kernels); such a
  // file loads and continues as the exact one, 5 ulps off is another table.
  auto nudged = [&](int ulps) {
    return edited([ulps](file_image& f) {
      for (const char* key : {"optimizer.w.qmap1", "optimizer.w.qmap2"}) {
        std::vector<uint8_t>& bytes = f.at(key).bytes;
        for (size_t e = 1; e + 1 < bytes.size() / 4; e += 3) {  // every third entry, either way
          int32_t bits;
          std::memcpy(&bits, bytes.data() + 4 * e, 4);
          bits += (e % 2 ? ulps : -ulps);
          std::memcpy(bytes.data() + 4 * e, &bits, 4);
        }
      }
    });
  };
  {
    target u, v;
    const std::vector<uint8_t> close = nudged(2);
    load_optimizer_state(u.opt, safetensors_reader::parse(close.data(), close.size()));
    load_optimizer_state(v.opt, safetensors_reader::parse(good.data(), good.size()));
    run_steps(u.opt, 10, 12);
    run_steps(v.opt, 10, 12);
    CHECK(fingerprint(u.opt) == fingerprint(v.opt));
    CHECK(u.w == v.w);
  }
  check_rejected(t.opt, nudged(5), errc::invalid_argument, "'optimizer.w.qmap1' differs from lowbit's dynamic8 table");
  check_rejected(t.opt, edited([](file_image& f) {
                   auto& e = f.at("optimizer.w.qmap1");
                   e.shape = {16};
                   e.bytes.resize(64);
                 }),
                 errc::malformed_file, "'optimizer.w.qmap1' has shape [16]");
  // Metadata.
  check_rejected(t.opt, edited([](file_image& f) { f.metadata.clear(); }), errc::malformed_file,
                 "no lowbit optimizer state under prefix 'optimizer.'");
  check_rejected(t.opt, edited([](file_image& f) { f.metadata["optimizer.params"] = "[{\"name\": "; }),
                 errc::malformed_file, "'optimizer.params' is not valid JSON");
  check_rejected(t.opt, edited([](file_image& f) { f.metadata.erase("optimizer.state_policy"); }),
                 errc::malformed_file, "lacks 'optimizer.state_policy'");
  check_rejected(t.opt, edited([](file_image& f) { f.metadata["optimizer.lowbit_optimizer_state"] = "2"; }),
                 errc::unsupported, "version '2'");
  check_rejected(t.opt, edited([](file_image& f) {
                   std::string& p = f.metadata["optimizer.params"];
                   p.replace(p.find("\"block_size\":256"), 16, "\"block_size\":128");
                 }),
                 errc::invalid_argument, "state1 of parameter 'w' is dynamic8 blocks of 128 in file");
  check_rejected(t.opt, edited([](file_image& f) {
                   std::string& p = f.metadata["optimizer.params"];
                   p.replace(p.find("[1000]"), 6, "[999]");
                 }),
                 errc::malformed_file, "has shape [999] but numel 1000");

  // A truncated file on disk: the reader refuses it; a failed load of a
  // missing file is an I/O error. Neither touches the optimizer.
  io_test::scratch_dir dir;
  std::vector<uint8_t> cut = good;
  cut.resize(cut.size() - 100);
  io_test::write_file(dir.file("cut.safetensors"), cut);
  const std::vector<uint8_t> before = fingerprint(t.opt);
  const io_test::thrown tc = io_test::catch_error([&] { load_optimizer_state(t.opt, dir.file("cut.safetensors")); });
  CHECK(tc.code == errc::malformed_file);
  const io_test::thrown tm = io_test::catch_error([&] { load_optimizer_state(t.opt, dir.file("none.safetensors")); });
  CHECK(tm.code == errc::io);
  CHECK(fingerprint(t.opt) == before);
}

TEST_CASE("optimizer state: duplicate parameter names are refused when added, not when saved") {
  std::vector<float> a(10), b(10);
  optimizer<sgd_momentum> o;
  o.add_param(make_flat_view(a.data(), 10), 0, "x");
  const io_test::thrown t = io_test::catch_error([&] { o.add_param(make_flat_view(b.data(), 10), 0, "x"); });
  CHECK(t.code == errc::invalid_argument);
  CHECK(io_test::contains(t.message, "a parameter is already named 'x'"));
  CHECK(o.size() == 1);
  o.add_param(make_flat_view(b.data(), 10), 0, "y");
  safetensors_writer w;
  save_optimizer_state(o, w);
  CHECK(w.size() > 0);
}

namespace {

// Host memory posing as a device: states must go through the copies.
struct fake_device : memory::host {
  static constexpr const char* name = "fake_device";
  static constexpr bool runs_on_device = true;
  mutable int to_host = 0;
  int from_host = 0;
  void copy_to_host(void* dst, const void* src, size_t bytes) const {
    ++to_host;
    std::memcpy(dst, src, bytes);
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) {
    ++from_host;
    std::memcpy(dst, src, bytes);
  }
};

// A device-resident policy with no way to reach its memory from the host.
struct opaque_device : memory::host {
  static constexpr const char* name = "opaque_device";
  static constexpr bool runs_on_device = true;
  void copy_to_host(void*, const void*, size_t) const = delete;
  void copy_from_host(void*, const void*, size_t) const = delete;
};

}  // namespace

TEST_CASE("optimizer state: device-resident states go through copy_to_host / copy_from_host") {
  using dev_t = optimizer<adamw, states::int8, weights::fp32_master_bf16, fake_device>;
  std::vector<bf16> w(5000, to_bf16(0.25f)), w2 = w;
  dev_t a(adamw::hparams{}, seeded()), b(adamw::hparams{}, seeded());
  a.add_param(make_flat_view(w.data(), 5000), 0, "w");
  b.add_param(make_flat_view(w2.data(), 5000), 0, "w");
  run_steps(a, 0, 3);
  w2 = w;
  const std::vector<uint8_t> file = saved(a);
  CHECK(a.memory_policy().to_host == 5);  // state1 codes + absmax, state2 codes + absmax, master
  const safetensors_reader r = safetensors_reader::parse(file.data(), file.size());
  load_optimizer_state(b, r);
  CHECK(b.memory_policy().from_host == 5);
  CHECK(fingerprint(b) == fingerprint(a));
  // the file is the same one a host optimizer writes and reads
  optimizer<adamw, states::int8, weights::fp32_master_bf16> h(adamw::hparams{}, seeded());
  std::vector<bf16> w3 = w;
  h.add_param(make_flat_view(w3.data(), 5000), 0, "w");
  load_optimizer_state(h, r);
  CHECK(state_fingerprint(h) == state_fingerprint(a));
  CHECK(std::memcmp(h.param(0).weight.data, a.param(0).weight.data, 5000 * 4) == 0);

  optimizer<sgd_momentum, states::fp32, weights::fp32, opaque_device> o;
  std::vector<float> x(100);
  o.add_param(make_flat_view(x.data(), 100), 0, "x");
  safetensors_writer sw;
  const io_test::thrown ts = io_test::catch_error([&] { save_optimizer_state(o, sw); });
  CHECK(ts.code == errc::unsupported);
  CHECK(io_test::contains(ts.message, "saving device-resident optimizer states is not supported yet"));
  const io_test::thrown tl = io_test::catch_error([&] { load_optimizer_state(o, r); });
  CHECK(tl.code == errc::unsupported);
  CHECK(io_test::contains(tl.message, "loading device-resident optimizer states is not supported yet"));
}

// Rolling back: an optimizer that stepped past a checkpoint and loads it
// again must continue as a fresh optimizer loaded from that file. The step
// numbers at which a parameter's `steps` and `skipped` were last counted are
// not saved; left from the abandoned step, they made the replayed step
// count neither (Adam's bias correction then used the wrong t).
TEST_CASE("optimizer state: loading into an optimizer that stepped past the checkpoint continues like a fresh load") {
  target a;
  const std::vector<float> w_at_save = a.w, b_at_save = a.b;
  const std::vector<uint8_t> file = saved(a.opt);  // after 2 steps
  run_steps(a.opt, 2, 3);                          // step 3, parameter 0's gradient NaN: skipped
  REQUIRE(a.opt.step_count() == 3);
  REQUIRE(a.opt.param(0).skipped == 1);
  REQUIRE(a.opt.param(1).steps == 3);
  const safetensors_reader r = safetensors_reader::parse(file.data(), file.size());
  load_optimizer_state(a.opt, r);
  a.w = w_at_save;  // the caller restores its weights
  a.b = b_at_save;

  target fresh;
  fresh.w = w_at_save;
  fresh.b = b_at_save;
  load_optimizer_state(fresh.opt, r);
  CHECK(fingerprint(a.opt) == fingerprint(fresh.opt));
  run_steps(a.opt, 2, 5);  // the rolled-back step 3 again (NaN again), then two more
  run_steps(fresh.opt, 2, 5);
  CHECK(a.opt.param(0).skipped == 1);
  CHECK(a.opt.param(0).steps == 4);
  CHECK(a.opt.param(1).steps == 5);
  CHECK(fingerprint(a.opt) == fingerprint(fresh.opt));
  CHECK(a.w == fresh.w);
  CHECK(a.b == fresh.b);
}

TEST_CASE("optimizer state: the file's parameter shape must be the parameter's, not just its element count") {
  std::vector<float> w(32, 0.5f), g(32, 0.1f);
  optimizer<adamw> saver;
  saver.add_param(make_view(w.data(), {4, 8}), 0, "w");
  saver.step({make_view(g.data(), {4, 8})});
  const std::vector<uint8_t> file = saved(saver);

  std::vector<float> w2(32, 0.5f);
  optimizer<adamw> loader;
  loader.add_param(make_view(w2.data(), {8, 4}), 0, "w");
  loader.step({make_view(g.data(), {8, 4})});
  check_rejected(loader, file, errc::invalid_argument, "parameter 'w' has shape [4, 8] in file, optimizer has [8, 4]");

  std::vector<float> w3(32, 0.5f);  // the same shape loads
  optimizer<adamw> same;
  same.add_param(make_view(w3.data(), {4, 8}), 0, "w");
  load_optimizer_state(same, safetensors_reader::parse(file.data(), file.size()));
  CHECK(state_fingerprint(same) == state_fingerprint(saver));
  CHECK(same.param(0).steps == 1);
}

// nlohmann's dump() recurses once per nesting level: a params entry nested
// a million deep used to overflow the stack when it went into a message.
TEST_CASE("optimizer state: deeply nested params metadata gives a short error") {
  target t;
  const std::vector<uint8_t> good = file_from<adamw8>({{"w", 5000}, {"b", 1000}});
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  auto with_params = [&](const std::function<void(std::string&)>& edit) {
    file_image im(good);
    edit(im.metadata["optimizer.params"]);
    return im.bytes();
  };
  const std::vector<uint8_t> deep_state = with_params([&](std::string& p) {
    const std::size_t at = p.find("\"state1\":{") + 9;
    p.replace(at, p.find('}', at) + 1 - at, deep);
  });
  check_rejected(t.opt, deep_state, errc::invalid_argument,
                 "state1 of parameter 'w' is an array of 1 element in file, optimizer uses dynamic8 blocks of 256");
  const std::vector<uint8_t> deep_shape = with_params([&](std::string& p) {
    const std::size_t at = p.find("\"shape\":[5000]") + 8;
    p.replace(at, 6, "[" + deep + "]");
  });
  check_rejected(t.opt, deep_shape, errc::malformed_file, "invalid shape (entry 0 is an array of 1 element)");
  const std::vector<uint8_t> long_storage = with_params([&](std::string& p) {
    const std::size_t at = p.find("\"storage\":\"float32\"") + 11;
    p.replace(at, 7, std::string(1 << 20, 's'));
  });
  const io_test::thrown tl = io_test::catch_error([&] {
    load_optimizer_state(t.opt, safetensors_reader::parse(long_storage.data(), long_storage.size()));
  });
  CHECK(tl.code == errc::invalid_argument);
  CHECK(io_test::contains(tl.message, "\"ssss"));
  CHECK(tl.message.size() < 400);
}
