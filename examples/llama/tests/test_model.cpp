// Tests of the LLaMA model itself: forward parity with Hugging Face
// transformers on committed tiny checkpoints (tests/data/llama, made by
// tools/make_llama_reference.py), the backward against central finite
// differences in float64, and the invariances of the backward (activation
// checkpointing and the fused gradient plan give identical gradients; the
// float path agrees with the float64 one).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../hf_checkpoint.hpp"
#include "../model.hpp"
#include "../init.hpp"
#include "../parameters.hpp"

using namespace llama;

namespace {

const std::string data_dir = LLAMA_TEST_DATA_DIR;

struct reference {
  std::vector<int32_t> ids;
  int64_t batch = 0, seq = 0;
  std::vector<double> logits;
  double loss = 0;
};

reference read_reference(const std::string& dir) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(dir + "/reference.safetensors");
  reference out;
  const lowbit::safetensors_tensor& ids = r.at("input_ids");
  REQUIRE(ids.shape.size() == 2);
  out.batch = ids.shape[0];
  out.seq = ids.shape[1];
  for (int64_t v : ids.to_vector<int64_t>()) out.ids.push_back(int32_t(v));
  out.logits = r.at("logits_f64").to_vector<double>();
  out.loss = r.at("loss_f64").to_vector<double>().at(0);
  return out;
}

// HF's loss: mean cross-entropy of position s predicting token s + 1.
template <class T>
double next_token_loss(const T* logits, const reference& ref, int64_t V) {
  const int64_t rows = ref.batch * (ref.seq - 1);
  std::vector<T> l(static_cast<size_t>(rows * V));
  std::vector<int32_t> targets(static_cast<size_t>(rows));
  int64_t r = 0;
  for (int64_t b = 0; b < ref.batch; ++b)
    for (int64_t s = 0; s + 1 < ref.seq; ++s, ++r) {
      std::memcpy(l.data() + r * V, logits + (b * ref.seq + s) * V, size_t(V) * sizeof(T));
      targets[size_t(r)] = ref.ids[size_t(b * ref.seq + s + 1)];
    }
  return ops::cross_entropy(l.data(), targets.data(), rows, V, false);
}

template <class T>
double max_logit_error(const std::string& name, matrix_storage storage) {
  const std::string dir = data_dir + "/" + name;
  const llama_config cfg = load_hf_config(dir);
  const reference ref = read_reference(dir);
  const param_layout L(cfg);
  weight_store<T> w(L, storage);
  CHECK(load_hf_weights(dir, w) == 0);
  llama_model<T> m(cfg, L, w, ref.batch, ref.seq, false);
  m.forward(ref.ids.data(), nullptr, ref.batch, ref.seq);
  double err = 0;
  REQUIRE(ref.logits.size() == size_t(ref.batch * ref.seq * cfg.vocab_size));
  for (size_t i = 0; i < ref.logits.size(); ++i) err = std::max(err, std::abs(double(m.logits()[i]) - ref.logits[i]));
  const double loss = next_token_loss(m.logits(), ref, cfg.vocab_size);
  INFO(name << ": loss " << loss << " vs reference " << ref.loss);
  CHECK(std::abs(loss - ref.loss) <= (sizeof(T) == 8 ? 1e-9 : 2e-5));
  return err;
}

}  // namespace

// The references are float64 forward passes checked against transformers'
// LlamaForCausalLM (see tests/data/llama/README.md). Logits are O(1) (at
// most about 3.2). Tolerances: float64 model 1e-9 (summation orders and
// libm's exp / sin / cos differ; measured 1.5e-10); float32 model 1e-4 (transformers' own float32 run differs
// from the float64 reference by up to 2e-6; we allow 50x for different sum
// orders and the lowbit GEMM tiling).
TEST_CASE("forward matches Hugging Face transformers: grouped-query heads, untied head") {
  CHECK(max_logit_error<double>("tiny_gqa", matrix_storage::f64) < 1e-9);
  CHECK(max_logit_error<float>("tiny_gqa", matrix_storage::f32) < 1e-4);
}

TEST_CASE("forward matches Hugging Face transformers: one kv head, tied embeddings, rope_theta 5e5") {
  CHECK(max_logit_error<double>("tiny_tied", matrix_storage::f64) < 1e-9);
  CHECK(max_logit_error<float>("tiny_tied", matrix_storage::f32) < 1e-4);
}

TEST_CASE("forward matches Hugging Face transformers: Llama 3 rotary scaling") {
  // config.json as transformers 5 writes it: rope_parameters of rope_type
  // llama3; the frequencies fall in all three bands (kept, blended, divided;
  // the generator asserts it), and the plain frequencies move the logits by
  // up to 0.93 on this file.
  const llama_config cfg = load_hf_config(data_dir + "/tiny_llama3_rope");
  CHECK(cfg.rope_type == "llama3");
  CHECK(cfg.rope_factor == 8.0f);
  CHECK(cfg.rope_high_freq_factor == 8.0f);
  CHECK(cfg.rope_original_max_positions == 64);
  CHECK(max_logit_error<double>("tiny_llama3_rope", matrix_storage::f64) < 1e-9);
  CHECK(max_logit_error<float>("tiny_llama3_rope", matrix_storage::f32) < 1e-4);
}

TEST_CASE("rotary frequencies: plain, and Llama 3's three bands against float64") {
  llama_config c;  // head_dim 32, theta 10000
  const std::vector<double> plain = c.rope_frequencies();
  REQUIRE(plain.size() == 16);
  for (int i = 0; i < 16; ++i) CHECK(plain[size_t(i)] == std::pow(10000.0, -double(2 * i) / 32.0));
  c.rope_type = "llama3", c.rope_factor = 4.0f, c.rope_low_freq_factor = 1.0f, c.rope_high_freq_factor = 4.0f;
  c.rope_original_max_positions = 256;  // bands: wavelength < 64 kept, > 256 divided by 4
  c.validate();
  const std::vector<double> f = c.rope_frequencies();
  int kept = 0, divided = 0, blended = 0;
  for (int i = 0; i < 16; ++i) {
    const double p = plain[size_t(i)], w = 2 * 3.14159265358979323846 / p;
    if (w < 64) {
      CHECK(f[size_t(i)] == p);
      ++kept;
    } else if (w > 256) {
      CHECK(f[size_t(i)] == doctest::Approx(p / 4).epsilon(1e-15));
      ++divided;
    } else {
      const double s = (256 / w - 1) / 3;
      CHECK(f[size_t(i)] == doctest::Approx((1 - s) * p / 4 + s * p).epsilon(1e-15));
      ++blended;
      CHECK(f[size_t(i)] < p);
      CHECK(f[size_t(i)] > p / 4);
    }
  }
  CHECK(kept > 0);
  CHECK(divided > 0);
  CHECK(blended > 0);
}

TEST_CASE("Llama 3 rotary scaling: the Hub's config form, round trip, presets and errors") {
  // Llama-3.2-1B's config.json on the Hub: top-level rope_theta and rope_scaling.
  nlohmann::json j = llama_config::preset("tiny").to_hf_json();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"factor", 32.0}, {"high_freq_factor", 4.0}, {"low_freq_factor", 1.0},
                       {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
  const llama_config c = llama_config::from_hf_json(j, "cfg");
  CHECK(c.rope_type == "llama3");
  CHECK(c.rope_theta == 500000.0f);
  CHECK(c.rope_factor == 32.0f);
  CHECK(c.rope_low_freq_factor == 1.0f);
  CHECK(c.rope_high_freq_factor == 4.0f);
  CHECK(c.rope_original_max_positions == 8192);
  // written back (checkpoints and exported config.json) and read again unchanged
  const nlohmann::json back = c.to_hf_json();
  CHECK(back["rope_scaling"]["rope_type"] == "llama3");
  CHECK(llama_config::from_hf_json(back, "back").to_hf_json() == back);
  CHECK(llama_config().to_hf_json().contains("rope_scaling") == false);
  // the 1B benchmark preset carries Llama-3.2-1B's scaling
  const llama_config p = llama_config::preset("llama3.2-1b");
  CHECK(p.rope_type == "llama3");
  CHECK(p.rope_factor == 32.0f);
  CHECK(p.rope_original_max_positions == 8192);

  nlohmann::json missing = j;
  missing["rope_scaling"].erase("low_freq_factor");
  CHECK_THROWS_WITH_AS(llama_config::from_hf_json(missing, "cfg"),
                       doctest::Contains("rope_scaling of rope_type 'llama3' lacks the number 'low_freq_factor'"),
                       lowbit::error);
  nlohmann::json bad = j;
  bad["rope_scaling"]["high_freq_factor"] = 0.5;
  CHECK_THROWS_WITH_AS(llama_config::from_hf_json(bad, "cfg"),
                       doctest::Contains("needs 0 < low_freq_factor < high_freq_factor"), lowbit::error);
  nlohmann::json yarn = j;
  yarn["rope_scaling"]["rope_type"] = "yarn";
  CHECK_THROWS_WITH_AS(llama_config::from_hf_json(yarn, "cfg"), doctest::Contains("rope_type 'yarn' is not supported"),
                       lowbit::error);
}

TEST_CASE("bfloat16 checkpoint sharded over three files loads and matches its reference") {
  CHECK(max_logit_error<double>("tiny_gqa_bf16_sharded", matrix_storage::f64) < 1e-9);
  CHECK(max_logit_error<float>("tiny_gqa_bf16_sharded", matrix_storage::f32) < 1e-4);
}

namespace {

llama_config tiny_config(bool tied, int kv_heads) {
  llama_config c;
  c.vocab_size = 13, c.dim = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = kv_heads, c.hidden_dim = 24;
  c.max_seq_len = 8, c.rope_theta = 100.0f, c.tied_embeddings = tied;
  return c;
}

// Larger-than-training weights so every path carries signal.
template <class T>
void fill_random(weight_store<T>& w, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 0.4f);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (size_t p = 0; p < w.layout->params.size(); ++p) {
    const param_info& i = w.layout->params[p];
    if (i.matrix) {
      std::vector<float> v(static_cast<size_t>(i.numel));
      for (float& x : v) x = d(g);
      w.set_matrix(int(p), v.data());
    } else {
      for (int64_t e = 0; e < i.numel; ++e) w.vector(int(p))[e] = T(u(g));
    }
  }
}

void random_tokens(std::vector<int32_t>& x, std::vector<int32_t>& y, int vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  for (auto& t : x) t = d(g);
  for (auto& t : y) t = d(g);
}

// The float64 value slot of element e of parameter p.
double& value_at(weight_store<double>& w, int p, int64_t e) {
  const param_info& i = w.layout->params[size_t(p)];
  return i.matrix ? w.m64[size_t(i.offset + e)] : w.vectors[size_t(i.offset + e)];
}

void gradient_check(bool tied, int kv_heads) {
  const llama_config cfg = tiny_config(tied, kv_heads);
  const param_layout L(cfg);
  weight_store<double> w(L, matrix_storage::f64);
  fill_random(w, 7);
  const int64_t B = 2, S = 6;
  std::vector<int32_t> x(static_cast<size_t>(B * S)), y(static_cast<size_t>(B * S));
  random_tokens(x, y, cfg.vocab_size, 11);
  llama_model<double> m(cfg, L, w, B, S, false);
  const gradient_plan plan(L, false);
  std::vector<double> g(static_cast<size_t>(plan.size));
  m.forward(x.data(), y.data(), B, S);
  m.backward(g.data(), plan, [](const std::vector<int>&) {});
  std::mt19937_64 pick(3);
  const double h = 1e-5;
  int checked = 0;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    for (int k = 0; k < 4; ++k) {
      const int64_t e = int64_t(pick() % uint64_t(i.numel));
      double& v = value_at(w, int(p), e);
      const double saved = v;
      v = saved + h;
      const double lp = m.forward(x.data(), y.data(), B, S);
      v = saved - h;
      const double lm = m.forward(x.data(), y.data(), B, S);
      v = saved;
      const double fd = (lp - lm) / (2 * h);
      const double analytic = g[size_t(plan.offset[p] + e)];
      // central difference: truncation O(h^2) ~ 1e-10, cancellation ~ 1e-16 / h ~ 1e-11
      INFO(i.name << "[" << e << "]: analytic " << analytic << ", finite difference " << fd);
      CHECK(std::abs(fd - analytic) <= 1e-7 + 1e-6 * std::abs(fd));
      ++checked;
    }
  }
  CHECK(checked == int(4 * L.params.size()));
}

}  // namespace

TEST_CASE("backward equals central finite differences in float64 (untied head, 2 kv heads)") { gradient_check(false, 2); }
TEST_CASE("backward equals central finite differences in float64 (tied embeddings, 1 kv head)") { gradient_check(true, 1); }

TEST_CASE("activation checkpointing and the fused gradient plan give identical gradients") {
  const llama_config cfg = tiny_config(false, 2);
  const param_layout L(cfg);
  weight_store<float> w(L, matrix_storage::f32);
  fill_random(w, 5);
  const int64_t B = 3, S = 7;
  std::vector<int32_t> x(static_cast<size_t>(B * S)), y(static_cast<size_t>(B * S));
  random_tokens(x, y, cfg.vocab_size, 9);

  const gradient_plan full(L, false), fused(L, true);
  // The fused plan: the tensors reported on their own share one region as
  // large as the largest of them; the rest (final norm, a tied head) keep
  // their own places.
  int64_t outside = 0, biggest = 0;
  for (size_t i = 0; i < L.params.size(); ++i) {
    const bool own = L.params[i].layer >= 0 || (L.head != L.embed && (int(i) == L.head || int(i) == L.embed));
    if (own) biggest = std::max(biggest, L.params[i].numel);
    else outside += L.params[i].numel;
  }
  CHECK(fused.size == outside + biggest);
  CHECK(fused.size < full.size);
  // Reference: no checkpointing, full plan.
  std::vector<float> g_ref(static_cast<size_t>(full.size));
  llama_model<float> m(cfg, L, w, B, S, false);
  const double loss = m.forward(x.data(), y.data(), B, S);
  m.backward(g_ref.data(), full, [](const std::vector<int>&) {});

  llama_model<float> mc(cfg, L, w, B, S, true);
  CHECK(mc.forward(x.data(), y.data(), B, S) == loss);
  std::vector<float> g_ckpt(static_cast<size_t>(full.size));
  mc.backward(g_ckpt.data(), full, [](const std::vector<int>&) {});
  CHECK(std::memcmp(g_ckpt.data(), g_ref.data(), g_ref.size() * sizeof(float)) == 0);
  CHECK(mc.activation_bytes() < m.activation_bytes());
  // The last layer's intermediates are still in the buffer after the
  // forward: the backward recomputes every layer but that one.
  CHECK(mc.layer_recomputes() == cfg.n_layers - 1);
  CHECK(m.layer_recomputes() == 0);
  // A second backward of the same forward finds the buffer overwritten by
  // the first one's recomputes, so it recomputes every layer, and its
  // gradients are the same.
  std::fill(g_ckpt.begin(), g_ckpt.end(), NAN);
  mc.backward(g_ckpt.data(), full, [](const std::vector<int>&) {});
  CHECK(mc.layer_recomputes() == 2 * int64_t(cfg.n_layers) - 1);
  CHECK(std::memcmp(g_ckpt.data(), g_ref.data(), g_ref.size() * sizeof(float)) == 0);

  // Fused plan: copy each group out when it is reported ready.
  std::vector<float> g_fused(static_cast<size_t>(full.size), NAN), scratch(static_cast<size_t>(fused.size));
  std::vector<int> seen(L.params.size(), 0);
  m.forward(x.data(), y.data(), B, S);
  m.backward(scratch.data(), fused, [&](const std::vector<int>& ready) {
    for (int p : ready) {
      ++seen[size_t(p)];
      std::memcpy(g_fused.data() + full.offset[size_t(p)], scratch.data() + fused.offset[size_t(p)],
                  size_t(L.params[size_t(p)].numel) * sizeof(float));
    }
  });
  for (int s : seen) CHECK(s == 1);  // every parameter reported exactly once
  CHECK(std::memcmp(g_fused.data(), g_ref.data(), g_ref.size() * sizeof(float)) == 0);
}

TEST_CASE("float gradients (lowbit CPU GEMMs) agree with the float64 reference") {
  const llama_config cfg = tiny_config(true, 2);
  const param_layout L(cfg);
  weight_store<double> w64(L, matrix_storage::f64);
  weight_store<float> w32(L, matrix_storage::f32);
  fill_random(w64, 21);
  fill_random(w32, 21);  // same draws, stored as float
  const int64_t B = 2, S = 8;
  std::vector<int32_t> x(static_cast<size_t>(B * S)), y(static_cast<size_t>(B * S));
  random_tokens(x, y, cfg.vocab_size, 4);
  const gradient_plan plan(L, false);
  llama_model<double> m64(cfg, L, w64, B, S, false);
  llama_model<float> m32(cfg, L, w32, B, S, false);
  const double l64 = m64.forward(x.data(), y.data(), B, S);
  const double l32 = m32.forward(x.data(), y.data(), B, S);
  CHECK(std::abs(l64 - l32) < 1e-5 * std::abs(l64));
  std::vector<double> g64(static_cast<size_t>(plan.size));
  std::vector<float> g32(static_cast<size_t>(plan.size));
  m64.backward(g64.data(), plan, [](const std::vector<int>&) {});
  m32.backward(g32.data(), plan, [](const std::vector<int>&) {});
  double diff = 0, norm = 0;
  for (size_t i = 0; i < g64.size(); ++i) {
    diff += (double(g32[i]) - g64[i]) * (double(g32[i]) - g64[i]);
    norm += g64[i] * g64[i];
  }
  // float32 rounding through ~10 dependent layers: relative error ~1e-6.
  CHECK(std::sqrt(diff / norm) < 1e-4);
}

TEST_CASE("Hugging Face loading errors name the problem") {
  CHECK_THROWS_WITH_AS(load_hf_config(data_dir + "/no_such_model"), doctest::Contains("cannot open model config"),
                       lowbit::error);
  nlohmann::json j = llama_config().to_hf_json();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  CHECK_THROWS_WITH_AS(llama_config::from_hf_json(j, "cfg"), doctest::Contains("rope_type 'linear' is not supported"),
                       lowbit::error);
  j = llama_config().to_hf_json();
  j["num_key_value_heads"] = 3;
  CHECK_THROWS_WITH_AS(llama_config::from_hf_json(j, "cfg"), doctest::Contains("multiple of n_kv_heads"), lowbit::error);
  // A model whose shapes differ from the checkpoint's: the error names the tensor.
  llama_config wrong = load_hf_config(data_dir + "/tiny_gqa");
  wrong.hidden_dim += 1;
  const param_layout L(wrong);
  weight_store<float> w(L, matrix_storage::f32);
  CHECK_THROWS_WITH_AS(load_hf_weights(data_dir + "/tiny_gqa", w), doctest::Contains("mlp.gate_proj.weight' has shape"),
                       lowbit::error);
  // An untied model cannot load a tied checkpoint: lm_head.weight is missing.
  llama_config untied = load_hf_config(data_dir + "/tiny_tied");
  untied.tied_embeddings = false;
  const param_layout L2(untied);
  weight_store<float> w2(L2, matrix_storage::f32);
  CHECK_THROWS_WITH_AS(load_hf_weights(data_dir + "/tiny_tied", w2), doctest::Contains("no tensor 'lm_head.weight'"),
                       lowbit::error);
}

TEST_CASE("a sharded checkpoint is read through its weight_map: a quantized weight's keys may span shards, a "
          "tensor in a shard the index does not name is refused") {
  namespace fs = std::filesystem;
  const std::string src = data_dir + "/tiny_gqa", whole_dir = "hf_whole_test", dir = "hf_span_test";
  const std::string qname = "model.layers.0.self_attn.q_proj.weight";
  for (const std::string& d : {whole_dir, dir}) {
    fs::remove_all(d);
    fs::create_directories(d);
    fs::copy_file(src + "/config.json", d + "/config.json");
  }
  // One file: tiny_gqa with q_proj as NF4 (nested scales) under bitsandbytes keys.
  const lowbit::safetensors_reader orig = lowbit::safetensors_reader::open(src + "/model.safetensors");
  const lowbit::safetensors_tensor& qt = orig.at(qname);
  REQUIRE(qt.type == lowbit::dtype::f32);
  const std::vector<float> qv = qt.to_vector<float>();
  lowbit::quantized_tensor q(lowbit::make_layout(lowbit::format::nf4, qt.numel(), 64, true));
  q.shape = qt.shape;
  lowbit::cpu::quantize(lowbit::make_flat_view(qv.data(), qt.numel()), q.view());
  {
    lowbit::safetensors_writer w;
    for (const lowbit::safetensors_tensor& t : orig.tensors())
      if (t.name != qname) w.add(t.name, t.type, t.shape, t.data);
    lowbit::save_quantized(w, qname, q, lowbit::dtype::f32);
    w.write(whole_dir + "/model.safetensors");
  }
  // Two shards: q_proj's packed codes in the first with every plain tensor,
  // its scales and quant_state in the second.
  const lowbit::safetensors_reader whole = lowbit::safetensors_reader::open(whole_dir + "/model.safetensors");
  const std::vector<std::string> qkeys = lowbit::quantized_keys(qname, lowbit::format::nf4, true);
  const std::string shard1 = "model-00001-of-00002.safetensors", shard2 = "model-00002-of-00002.safetensors";
  auto in_second = [&](const std::string& name) {
    return name != qkeys[0] && std::find(qkeys.begin(), qkeys.end(), name) != qkeys.end();
  };
  auto write_shards = [&](const std::string& extra_in_second) {
    lowbit::safetensors_writer w1, w2;
    nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
    for (const lowbit::safetensors_tensor& t : whole.tensors()) {
      (in_second(t.name) ? w2 : w1).add(t.name, t.type, t.shape, t.data);
      index["weight_map"][t.name] = in_second(t.name) ? shard2 : shard1;
    }
    std::vector<float> zeros;
    if (!extra_in_second.empty()) {  // a stale copy, filled with zeros, in the shard the index does not name
      const lowbit::safetensors_tensor& t = whole.at(extra_in_second);
      zeros.assign(size_t(t.numel()), 0.0f);
      w2.add(t.name, t.type, t.shape, zeros.data());
    }
    w1.write(dir + "/" + shard1);
    w2.write(dir + "/" + shard2);
    std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  };
  write_shards("");
  const llama_config cfg = load_hf_config(whole_dir);
  const param_layout L(cfg);
  weight_store<float> a(L, matrix_storage::f32), b(L, matrix_storage::f32);
  CHECK(load_hf_weights(whole_dir, a) == 0);
  CHECK(load_hf_weights(dir, b) == 0);
  for (size_t p = 0; p < L.params.size(); ++p) {
    if (!L.params[p].matrix) continue;
    std::vector<float> va(size_t(L.params[p].numel)), vb(va.size());
    a.get_matrix(int(p), va.data());
    b.get_matrix(int(p), vb.data());
    CHECK(va == vb);
  }
  // the stale copy is refused, naming the tensor and both shards
  write_shards("lm_head.weight");
  weight_store<float> c(L, matrix_storage::f32);
  const std::string stale = "places tensor 'lm_head.weight' in '" + shard1 + "', but '" + shard2 + "' holds it too";
  CHECK_THROWS_WITH_AS(load_hf_weights(dir, c), doctest::Contains(stale.c_str()), lowbit::error);
}

TEST_CASE("a checkpoint with bitsandbytes NF4 weights loads: dequantized exactly, re-quantized to the same codes") {
  // Build the NF4 checkpoint from tiny_gqa: matrices as NF4 (block 64,
  // nested scales) under bitsandbytes keys, RMSNorm gains as float32.
  const std::string src = data_dir + "/tiny_gqa", dir = "hf_nf4_test";
  const llama_config cfg = load_hf_config(src);
  const param_layout L(cfg);
  weight_store<float> dense(L, matrix_storage::f32);
  load_hf_weights(src, dense);
  weight_store<float> nf4(L, matrix_storage::quantized, {lowbit::format::nf4, 64, true});
  for (size_t p = 0; p < L.params.size(); ++p)
    if (L.params[p].matrix) {
      std::vector<float> v(static_cast<size_t>(L.params[p].numel));
      dense.get_matrix(int(p), v.data());
      nf4.set_matrix(int(p), v.data());
    }
  REQUIRE(std::system(("mkdir -p " + dir).c_str()) == 0);
  {
    std::ifstream in(src + "/config.json");
    std::ofstream out(dir + "/config.json");
    out << in.rdbuf();
  }
  lowbit::safetensors_writer w;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (i.matrix) lowbit::save_quantized(w, i.name, nf4.mq[size_t(i.slot)], lowbit::dtype::bf16);
    else w.add(i.name, lowbit::dtype::f32, i.shape, dense.vector(int(p)));
  }
  w.write(dir + "/model.safetensors");

  // Into float32 storage: every matrix equals cpu::dequantize of its codes.
  weight_store<float> loaded(L, matrix_storage::f32);
  CHECK(load_hf_weights(dir, loaded) == 0);
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (!i.matrix) continue;
    std::vector<float> want(static_cast<size_t>(i.numel)), got(want.size());
    nf4.get_matrix(int(p), want.data());
    loaded.get_matrix(int(p), got.data());
    CHECK(got == want);
  }
  // Into an NF4 training mode (dequantized, then quantized again): the
  // 4-bit codes come back unchanged; only the block scales are re-encoded
  // (double quantization of a decoded scale is not the identity), so each
  // block's values are the original ones times one factor close to 1.
  weight_store<float> again(L, matrix_storage::quantized, {lowbit::format::nf4, 64, true});
  load_hf_weights(dir, again);
  for (size_t s = 0; s < again.mq.size(); ++s) {
    CHECK(again.mq[s].codes == nf4.mq[s].codes);
    const int64_t n = again.mq[s].layout.n;
    std::vector<float> a(static_cast<size_t>(n)), b(a.size());
    lowbit::cpu::dequantize(again.mq[s].view(), lowbit::make_flat_view(a.data(), n));
    lowbit::cpu::dequantize(nf4.mq[s].view(), lowbit::make_flat_view(b.data(), n));
    for (int64_t blk = 0; blk * 64 < n; ++blk) {
      double factor = 0;
      for (int64_t e = blk * 64; e < std::min<int64_t>(n, blk * 64 + 64); ++e) {
        if (b[size_t(e)] == 0.0f) {
          REQUIRE(a[size_t(e)] == 0.0f);
          continue;
        }
        const double f = double(a[size_t(e)]) / double(b[size_t(e)]);
        if (factor == 0) factor = f;
        REQUIRE(std::abs(f - factor) <= 1e-6 * factor);  // one factor per block
      }
      CHECK(std::abs(factor - 1.0) < 0.05);
    }
  }
  std::remove((dir + "/model.safetensors").c_str());
  std::remove((dir + "/config.json").c_str());
  std::remove(dir.c_str());
}

TEST_CASE("large models draw their initial weights from Philox: N(0, stddev^2), reproducible, distinct per tensor") {
  const int64_t n = 1 << 20;
  std::vector<float> a(size_t(n), NAN), b(size_t(n), NAN), c(size_t(n), NAN);
  philox_normal(a.data(), n - 1, 0.02f, 1337, 5);  // odd count: the last pair is half used
  philox_normal(b.data(), n - 1, 0.02f, 1337, 5);
  philox_normal(c.data(), n - 1, 0.02f, 1337, 6);
  CHECK(std::isnan(a[size_t(n - 1)]));  // nothing written past the count
  CHECK(std::memcmp(a.data(), b.data(), size_t(n - 1) * 4) == 0);
  double sum = 0, sumsq = 0, same = 0, cross = 0;
  for (int64_t i = 0; i < n - 1; ++i) {
    sum += a[size_t(i)];
    sumsq += double(a[size_t(i)]) * a[size_t(i)];
    cross += double(a[size_t(i)]) * c[size_t(i)];
    same += a[size_t(i)] == c[size_t(i)];
  }
  const double m = sum / double(n - 1), var = sumsq / double(n - 1) - m * m;
  // standard error of the mean 0.02 / 1024 ~ 2e-5; of the variance 4e-4 * sqrt(2 / n) ~ 5.5e-7
  CHECK(std::abs(m) < 5 * 0.02 / 1024);
  CHECK(std::abs(var - 4e-4) < 5 * 4e-4 * std::sqrt(2.0 / double(n)));
  CHECK(same == 0);
  CHECK(std::abs(cross / double(n - 1)) < 5 * 4e-4 / 1024);  // independent streams: correlation ~ 0
  llama_config big = llama_config::preset("llama3.2-1b");
  CHECK(big.n_params() >= parallel_init_min_params);
  CHECK(llama_config().n_params() < parallel_init_min_params);  // the tiny default keeps its mt19937_64 draws
}
