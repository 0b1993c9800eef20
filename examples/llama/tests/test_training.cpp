// Tests of training through lowbit's optimizers: the loss falls in every
// CPU mode on tinyshakespeare; the fused backward-update gives the same
// weights as the two-pass step; save, resume and continue equals the
// uninterrupted run bit for bit (checkpoint files compared byte for byte);
// corrupted or mismatched checkpoints give clear errors and leave the
// session's weights untouched; --grad-dtype parses, bf16 is refused by the
// CPU trainer, and the gradient buffer's bytes follow its dtype; qft keeps
// its int8 block scales stable (none shrinks) while qft-reencode does not;
// the rounding seed changes only stochastically rounded modes, and a
// checkpoint resumes only with the rounding seed it was trained with;
// gradient accumulation over micro-batches gives the loss, gradients and
// training steps of one larger batch, and is refused with the fused update.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../dataset.hpp"
#include "../init.hpp"
#include "../session.hpp"
#include "fixtures.hpp"
#include "weight_bytes.hpp"

using namespace llama;

namespace {

llama_config small_config() { return small_test_config(); }
const dataset& corpus() { return test_corpus(); }

session_options small_options(const mode_info& m) {
  session_options o;
  o.batch = 8;
  o.seq = 64;
  o.hparams.lr = m.rule == rule_kind::adamw ? 2e-3f : 1e-3f;
  o.hparams.seed = 99;
  return o;
}

// Runs steps [from, to) of the schedule used by these tests (a step's
// batch * grad_accum sequences of 64 tokens); returns their losses.
std::vector<double> train(training_session& s, int64_t from, int64_t to, float clip) {
  const int64_t sequences = s.options().batch * s.options().grad_accum;
  std::vector<int32_t> x(size_t(sequences * 64)), y(x.size());
  std::vector<double> losses;
  for (int64_t step = from; step < to; ++step) {
    corpus().train_batch(99, step, sequences, 64, x.data(), y.data());
    const step_result r = s.step(x.data(), y.data(), s.optimizer().step_count() < 5 ? 2e-4f : 1e-3f, clip);
    REQUIRE(!r.skipped);
    losses.push_back(r.loss);
  }
  return losses;
}

// max |a - b| over max |b|, over elements [off, off + n).
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b, int64_t off, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = off; i < off + n; ++i) {
    diff = std::max(diff, std::abs(double(a[size_t(i)]) - double(b[size_t(i)])));
    scale = std::max(scale, std::abs(double(b[size_t(i)])));
  }
  return diff / std::max(scale, 1e-30);
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string weight_bytes(training_session& s) { return store_bytes(s.weights()); }

}  // namespace

TEST_CASE("the validation loss falls in every CPU training mode") {
  for (const mode_info& m : training_modes()) {
    if (m.gpu_only) continue;
    INFO("mode " << m.name);
    training_session s(small_config(), m, small_options(m));
    init_random(s.weights(), s.config(), 5);
    const double before = s.evaluate(corpus(), 2);
    train(s, 0, 40, 1.0f);
    const double after = s.evaluate(corpus(), 2);
    MESSAGE(m.name << ": validation loss " << before << " -> " << after);
    CHECK(before > 5.3);  // ln(256) = 5.55 at init
    // Byte-level text falls to about 3.3 (unigram statistics) within 40
    // steps; round-to-nearest quantized weights stall well above that.
    if (m.stochastic || m.storage != matrix_storage::quantized) CHECK(after < 3.6);
    else CHECK(after < before);
  }
}

// qft keeps each int8 block's scale unless the block's values outgrow it
// (lowbit stable_weight_scales), so across steps no scale ever shrinks and
// many stay exactly as they were; qft-reencode recomputes every scale from
// the block's absmax, so scales move both ways.
TEST_CASE("qft keeps its block scales stable; qft-reencode re-encodes them; qft-stable is a retired name") {
  for (const char* name : {"qft", "qft-reencode"}) {
    INFO("mode " << name);
    const mode_info& m = find_mode(name);
    training_session s(small_config(), m, small_options(m));
    init_random(s.weights(), s.config(), 5);
    int64_t blocks = 0, shrunk = 0, kept = 0;
    for (int64_t step = 0; step < 8; ++step) {
      std::vector<std::vector<float>> before;
      for (const auto& q : s.weights().mq) before.push_back(q.absmax);
      train(s, step, step + 1, 1.0f);
      for (size_t t = 0; t < before.size(); ++t)
        for (size_t b = 0; b < before[t].size(); ++b) {
          const float now = s.weights().mq[t].absmax[b];
          blocks += 1;
          shrunk += now < before[t][b];
          kept += now == before[t][b];
        }
    }
    REQUIRE(blocks > 1000);
    MESSAGE(std::string(name) << ": of " << blocks << " block-steps, " << shrunk << " shrank, " << kept << " kept their scale");
    if (m.stable_scales) {
      CHECK(shrunk == 0);
      CHECK(kept * 3 > blocks);  // 49 % here; the growing ones are early steps' large updates
    } else {
      CHECK(shrunk * 10 > blocks);  // re-encoding moves scales down as well as up
    }
  }
  CHECK_THROWS_WITH_AS(find_mode("qft-stable"), doctest::Contains("is now 'qft'"), lowbit::error);
}

TEST_CASE("the fused backward-update equals the two-pass step") {
  for (const char* name : {"fp32-adamw", "qft"}) {
    INFO("mode " << name);
    const mode_info& m = find_mode(name);
    session_options o = small_options(m), of = o;
    of.fused_update = true;
    training_session a(small_config(), m, o), b(small_config(), m, of);
    init_random(a.weights(), a.config(), 5);
    init_random(b.weights(), b.config(), 5);
    train(a, 0, 6, 0.0f);
    train(b, 0, 6, 0.0f);
    CHECK(weight_bytes(a) == weight_bytes(b));
    CHECK(b.gradient_bytes() < a.gradient_bytes());
    CHECK_THROWS_AS(train(b, 6, 7, 1.0f), lowbit::error);  // clipping needs the full gradient
  }
}

// Gradient accumulation (--grad-accum K): K micro-batches of B sequences
// make one step on the data of a K*B batch. The loss is the mean of the
// micro-batches' means, the gradient the sum of theirs times 1/K; both
// equal the large batch's up to float32 summation order. Tolerances: the
// loss 1e-6 relative (a mean of 8 x 64 terms regrouped); each gradient
// tensor 1e-5 of its largest element (each element a float32 sum of 512
// products regrouped into 4 sums of 128 or 2 of 256, a few ulps of the
// sum of magnitudes); a missing 1/K gives a relative difference of K - 1,
// a micro-batch written instead of added one of order 1. Stepped from the
// same weights, the two runs stay together: training losses within 1e-3
// relative over 8 steps (fp32-adamw has no random draws; qft's stochastic
// rounding draws the same bits, and the tiny gradient differences move a
// few roundings only).
TEST_CASE("gradient accumulation: micro-batches give one larger batch's loss, gradients and steps") {
  for (const bool tied : {false, true}) {
    for (const char* name : {"fp32-adamw", "qft"}) {
      llama_config c = small_config();
      c.tied_embeddings = tied;  // tied: the embedding's scatter adds onto the head's accumulated gradient
      CAPTURE(tied);
      CAPTURE(name);
      const mode_info& m = find_mode(name);
      const session_options whole = small_options(m);  // 8 sequences at once
      for (const int64_t k : {2, 4}) {
        CAPTURE(k);
        session_options micro = whole;
        micro.batch = whole.batch / k;
        micro.grad_accum = k;
        micro.checkpointing = k == 4;  // the recompute path accumulates too
        training_session a(c, m, whole), b(c, m, micro);
        init_random(a.weights(), c, 5);
        init_random(b.weights(), c, 5);
        std::vector<int32_t> x(8 * 64), y(8 * 64);
        corpus().train_batch(99, 3, 8, 64, x.data(), y.data());
        std::vector<float> ga, gb;
        const double la = a.gradients(x.data(), y.data(), ga), lb = b.gradients(x.data(), y.data(), gb);
        CHECK(std::abs(lb - la) <= 1e-6 * la);
        REQUIRE(ga.size() == gb.size());
        int64_t off = 0;
        for (const param_info& p : a.layout().params) {
          CAPTURE(p.name);
          CHECK(max_rel_diff(gb, ga, off, p.numel) <= 1e-5);
          off += p.numel;
        }
        CHECK(b.activation_bytes() * k <= a.activation_bytes());  // activations of one micro-batch
        const std::vector<double> ta = train(a, 0, 8, 1.0f), tb = train(b, 0, 8, 1.0f);
        for (size_t i = 0; i < ta.size(); ++i) CHECK(std::abs(tb[i] - ta[i]) <= 1e-3 * ta[i]);
        CHECK(std::abs(b.evaluate(corpus(), 1) - a.evaluate(corpus(), 1)) <= 1e-3 * a.evaluate(corpus(), 1));
      }
    }
  }
  // refused: no micro-batch, or accumulation with the fused update
  const mode_info& m = find_mode("qft");
  session_options none = small_options(m), fused = small_options(m);
  none.grad_accum = 0;
  fused.grad_accum = 2;
  fused.fused_update = true;
  auto make = [&](const session_options& o) { training_session s(small_config(), m, o); };
  CHECK_THROWS_WITH_AS(make(none), doctest::Contains("--grad-accum must be >= 1"), lowbit::error);
  CHECK_THROWS_WITH_AS(make(fused), doctest::Contains("--grad-accum 2 needs a whole gradient buffer"), lowbit::error);
}

TEST_CASE("--grad-dtype: f32 or bf16, bf16 on the CUDA path only; gradient bytes by dtype") {
  CHECK(parse_grad_dtype("f32") == lowbit::dtype::f32);
  CHECK(parse_grad_dtype("bf16") == lowbit::dtype::bf16);
  CHECK_THROWS_WITH_AS(parse_grad_dtype("fp16"), doctest::Contains("--grad-dtype must be f32 or bf16, got 'fp16'"),
                       lowbit::error);
  const mode_info& m = find_mode("qft");
  session_options o = small_options(m);
  o.grad_dtype = lowbit::dtype::bf16;
  auto make_bf16 = [&] { training_session s(small_config(), m, o); };
  CHECK_THROWS_WITH_AS(make_bf16(), doctest::Contains("--grad-dtype bf16 needs the CUDA backend"), lowbit::error);

  // the CPU session's gradient buffer: float32, as the plan says
  for (bool fused : {false, true}) {
    session_options of = small_options(m);
    of.fused_update = fused;
    training_session s(small_config(), m, of);
    CHECK(s.gradient_bytes() == gradient_plan(s.layout(), fused).bytes(lowbit::dtype::f32));
  }

  // LLaMA-2-7B with the fused update: the final norm's gain (its own
  // place, reported with the head) and one region as large as the largest
  // tensor, the untied 32000 x 4096 head / embedding (the layers' norm
  // gains take the region in turn); bf16 halves it
  const llama_config c7 = llama_config::preset("llama2-7b");
  const param_layout L7(c7);
  const gradient_plan p7(L7, true);
  const int64_t own = c7.dim, region = int64_t(c7.vocab_size) * c7.dim;
  CHECK(p7.size == own + region);
  CHECK(p7.bytes(lowbit::dtype::f32) == 4 * (own + region));
  CHECK(p7.bytes(lowbit::dtype::bf16) == 2 * (own + region));
  MESSAGE("llama2-7b fused gradient buffer: " << double(p7.bytes(lowbit::dtype::f32)) / 1048576.0 << " MiB f32 ("
          << double(p7.bytes(lowbit::dtype::f32)) / double(L7.total()) << " B/param), "
          << double(p7.bytes(lowbit::dtype::bf16)) / 1048576.0 << " MiB bf16 ("
          << double(p7.bytes(lowbit::dtype::bf16)) / double(L7.total()) << " B/param)");
}

TEST_CASE("save, resume and continue equals the uninterrupted run, bit for bit") {
  for (const char* name : {"fp32-adamw", "bf16-adamw8", "qft", "nf4"}) {
    INFO("mode " << name);
    const mode_info& m = find_mode(name);
    const std::string path_a = std::string("resume_a_") + name + ".safetensors";
    const std::string path_b = std::string("resume_b_") + name + ".safetensors";
    training_session a(small_config(), m, small_options(m));
    init_random(a.weights(), a.config(), 5);
    train(a, 0, 12, 1.0f);
    a.save(path_a, {12, 99, 12 * 512});

    training_session b(small_config(), m, small_options(m));
    init_random(b.weights(), b.config(), 5);
    train(b, 0, 6, 1.0f);
    b.save(path_b, {6, 99, 6 * 512});
    training_session c(small_config(), m, small_options(m));  // fresh process, different init
    init_random(c.weights(), c.config(), 1234);
    const train_state st = c.load(path_b);
    CHECK(st.step == 6);
    CHECK(st.tokens == 6 * 512);
    CHECK(c.optimizer().step_count() == 6);
    train(c, st.step, 12, 1.0f);
    CHECK(weight_bytes(c) == weight_bytes(a));
    c.save(path_b, {12, 99, 12 * 512});
    CHECK(file_bytes(path_a) == file_bytes(path_b));  // weights, every optimizer state and counter
    std::remove(path_a.c_str());
    std::remove(path_b.c_str());
  }
}

TEST_CASE("the rounding seed moves only stochastically rounded modes; checkpoints record it") {
  // Same data and initial weights, rounding seeds 99 and 5: qft (int8
  // weights rounded stochastically) takes other steps, fp32-adamw (no
  // random draws) the same ones bit for bit.
  for (const char* name : {"qft", "fp32-adamw"}) {
    INFO("mode " << name);
    const mode_info& m = find_mode(name);
    session_options other = small_options(m);
    other.hparams.seed = 5;
    training_session a(small_config(), m, small_options(m)), b(small_config(), m, other);
    CHECK(a.optimizer().rounding_seed() == 99);
    CHECK(b.optimizer().rounding_seed() == 5);
    init_random(a.weights(), a.config(), 5);
    init_random(b.weights(), b.config(), 5);
    train(a, 0, 3, 1.0f);
    train(b, 0, 3, 1.0f);
    if (std::string(name) == "qft") CHECK(weight_bytes(a) != weight_bytes(b));
    else CHECK(weight_bytes(a) == weight_bytes(b));
  }

  const mode_info& qft = find_mode("qft");
  training_session s(small_config(), qft, small_options(qft));
  init_random(s.weights(), s.config(), 5);
  train(s, 0, 2, 1.0f);
  const std::string path = "rounding_seed_test.safetensors";
  s.save(path, {2, 99, 1024});
  {
    const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
    CHECK(r.metadata().at("rounding_seed") == "99");
  }
  session_options other = small_options(qft);
  other.hparams.seed = 5;
  training_session t(small_config(), qft, other);
  init_random(t.weights(), t.config(), 77);
  const std::string before = weight_bytes(t);
  CHECK_THROWS_WITH_AS(t.load(path), doctest::Contains("trained with rounding seed 99, this run uses 5"),
                       lowbit::error);
  CHECK(weight_bytes(t) == before);

  // A checkpoint from before the key existed rounded with its --seed.
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
  lowbit::safetensors_writer w;
  for (const auto& tensor : r.tensors()) w.add(tensor.name, tensor.type, tensor.shape, tensor.data);
  for (const auto& kv : r.metadata())
    if (kv.first != "rounding_seed") w.set_metadata(kv.first, kv.second);
  w.write(path);
  CHECK_THROWS_WITH_AS(t.load(path), doctest::Contains("trained with rounding seed 99, this run uses 5"),
                       lowbit::error);
  training_session u(small_config(), qft, small_options(qft));
  CHECK(u.load(path).seed == 99);
  CHECK(weight_bytes(u) == weight_bytes(s));
  std::remove(path.c_str());
}

TEST_CASE("corrupted or mismatched checkpoints give clear errors and change nothing") {
  const mode_info& qft = find_mode("qft");
  training_session s(small_config(), qft, small_options(qft));
  init_random(s.weights(), s.config(), 5);
  train(s, 0, 2, 1.0f);
  const std::string path = "corrupt_test.safetensors";
  s.save(path, {2, 99, 1024});

  training_session t(small_config(), qft, small_options(qft));
  init_random(t.weights(), t.config(), 77);
  const std::string before = weight_bytes(t);

  SUBCASE("truncated file") {
    const std::string bytes = file_bytes(path);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size() / 2));
    CHECK_THROWS_AS(t.load(path), lowbit::error);
  }
  SUBCASE("another training mode") {
    const mode_info& fp32 = find_mode("fp32-adamw");
    training_session u(small_config(), fp32, small_options(fp32));
    CHECK_THROWS_WITH_AS(u.load(path), doctest::Contains("trained in mode 'qft', this run uses mode 'fp32-adamw'"),
                         lowbit::error);
  }
  SUBCASE("another model shape") {
    llama_config other = small_config();
    other.hidden_dim = 192;
    training_session u(other, qft, small_options(qft));
    CHECK_THROWS_WITH_AS(u.load(path), doctest::Contains("intermediate_size 176 in the checkpoint, 192 in this run"),
                         lowbit::error);
  }
  SUBCASE("optimizer state missing: weights are staged, nothing is written") {
    const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
    lowbit::safetensors_writer w;
    for (const auto& tensor : r.tensors())
      if (tensor.name.rfind("optimizer", 0) != 0) w.add(tensor.name, tensor.type, tensor.shape, tensor.data);
    for (const auto& kv : r.metadata())
      if (kv.first.rfind("optimizer", 0) != 0) w.set_metadata(kv.first, kv.second);
    w.write("corrupt_test_2.safetensors");
    CHECK_THROWS_AS(t.load("corrupt_test_2.safetensors"), lowbit::error);
    std::remove("corrupt_test_2.safetensors");
  }
  SUBCASE("not a checkpoint") {
    lowbit::safetensors_writer w;
    const float v = 1.0f;
    w.add("x", lowbit::dtype::f32, {1}, &v);
    w.write("corrupt_test_2.safetensors");
    CHECK_THROWS_WITH_AS(t.load("corrupt_test_2.safetensors"), doctest::Contains("lacks metadata 'format'"),
                         lowbit::error);
    std::remove("corrupt_test_2.safetensors");
  }
  CHECK(weight_bytes(t) == before);
  CHECK(t.optimizer().step_count() == 0);
  std::remove(path.c_str());
}
