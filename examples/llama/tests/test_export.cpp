// Tests of --export-hf (hf_export.hpp): the exported directory holds every
// weight under its Hugging Face name and shape (a tied head once), float32
// values equal to the trained weights as the model decodes them, bfloat16
// and float16 values equal to those rounded to nearest even (checked
// against a rounding computed here in double), a config.json that loads
// back as the same model; loaded back with --init's loader, a float32
// export gives the source model's loss. A float16 export of an
// out-of-range weight is refused with its name and leaves the previous
// export in place; a directory holding a sharded index is refused; a
// SentencePiece model is copied alongside. With
// --export-4bit the NF4 layers are written byte for byte in bitsandbytes'
// 4-bit keys with transformers' quantization_config.
// (tools/check_hf_export.py checks an export with transformers itself.)
#include <doctest/doctest.h>

#include <cfenv>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../checkpoint.hpp"
#include "../hf_checkpoint.hpp"
#include "../hf_export.hpp"
#include "../init.hpp"
#include "../session.hpp"
#include "fixtures.hpp"

using namespace llama;

namespace {

// x rounded to the nearest value with `mantissa_bits` stored fraction bits
// and exponents down to min_exp (subnormals below), ties to even: the
// spacing at x is 2^(max(floor(log2 |x|), min_exp) - mantissa_bits), and
// nearbyint rounds the quotient to nearest even (the default rounding
// mode). bfloat16: 7 bits, min_exp -126; float16: 10 bits, min_exp -14.
double round_to_format(double x, int mantissa_bits, int min_exp) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  const int e = std::max(int(std::floor(std::log2(std::abs(x)))), min_exp);
  const double spacing = std::ldexp(1.0, e - mantissa_bits);
  return std::nearbyint(x / spacing) * spacing;
}

float read_element(const lowbit::safetensors_tensor& t, int64_t i) {
  if (t.type == lowbit::dtype::f32) {
    float v;
    std::memcpy(&v, t.data + 4 * i, 4);
    return v;
  }
  if (t.type == lowbit::dtype::bf16) {
    lowbit::bf16 v;
    std::memcpy(&v, t.data + 2 * i, 2);
    return lowbit::to_float(v);
  }
  lowbit::fp16 v;
  std::memcpy(&v, t.data + 2 * i, 2);
  return lowbit::to_float(v);
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A session of `mode` with random weights moved by two training steps (so
// quantized blocks hold trained codes and scales).
std::unique_ptr<training_session> trained(const llama_config& c, const mode_info& m) {
  session_options o;
  o.batch = 4;
  o.seq = 32;
  o.hparams.lr = 1e-3f;
  o.hparams.seed = 3;
  auto s = std::make_unique<training_session>(c, m, o);
  init_random(s->weights(), c, 11);
  std::vector<int32_t> x(4 * 32), y(4 * 32);
  for (int step = 0; step < 2; ++step) {
    test_corpus().train_batch(3, step, 4, 32, x.data(), y.data());
    REQUIRE(!s->step(x.data(), y.data(), 1e-3f, 1.0f).skipped);
  }
  return s;
}

// The export in dir, loaded back by --init's loader into float32 weights,
// is the model of `source`: the loss of one batch differs only by the
// products' float32 summation order (dense against dequant-GEMM), within
// 1e-5 relative.
void check_loads_back(const std::string& dir, const llama_config& c, training_session& source) {
  training_session back(c, find_mode("fp32-adamw"), source.options());
  CHECK(load_hf_weights(dir, back.weights()) == 0);
  back.weights_changed();
  std::vector<int32_t> x(4 * 32), y(4 * 32);
  test_corpus().train_batch(3, 9, 4, 32, x.data(), y.data());
  const double want = source.loss(x.data(), y.data()), got = back.loss(x.data(), y.data());
  CHECK(std::abs(got - want) <= 1e-5 * want);
}

}  // namespace

TEST_CASE("--export-hf: every weight by its Hugging Face name, exactly decoded or rounded to nearest even; "
          "it loads back as the same model") {
  REQUIRE(std::fegetround() == FE_TONEAREST);
  for (const bool tied : {false, true}) {
    for (const char* name : {"fp32-adamw", "bf16-adamw8", "qft", "nf4"}) {
      CAPTURE(tied);
      CAPTURE(name);
      llama_config c = small_test_config();
      c.tied_embeddings = tied;
      const mode_info& m = find_mode(name);
      const std::unique_ptr<training_session> s = trained(c, m);
      const std::string dir = std::string("export_test_") + name + (tied ? "_tied" : "");
      std::filesystem::remove_all(dir);

      // float32: the weights as the model decodes them, bit for bit
      export_hf(dir, c, s->weights(), lowbit::dtype::f32);
      CHECK(checkpoint_detail::config_difference(load_hf_config(dir), c).empty());
      std::vector<std::vector<float>> decoded;
      {
        const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(dir + "/model.safetensors");
        const param_layout& L = s->layout();
        CHECK(r.tensors().size() == L.params.size());  // tied: no lm_head.weight
        CHECK(r.contains("lm_head.weight") == !tied);
        for (size_t p = 0; p < L.params.size(); ++p) {
          const param_info& i = L.params[p];
          CAPTURE(i.name);
          const lowbit::safetensors_tensor& t = r.at(i.name);
          CHECK(t.type == lowbit::dtype::f32);
          CHECK(t.shape == i.shape);
          std::vector<float> want(size_t(i.numel));
          if (!i.matrix) {
            std::copy(s->weights().vector(int(p)), s->weights().vector(int(p)) + i.numel, want.begin());
          } else {
            const matrix_ref mr = s->weights().matrix(int(p));
            if (mr.kind == matrix_storage::quantized)
              lowbit::cpu::dequantize(mr.q, lowbit::make_flat_view(want.data(), i.numel));
            else if (mr.kind == matrix_storage::bf16)
              for (int64_t e = 0; e < i.numel; ++e)
                want[size_t(e)] = lowbit::to_float(static_cast<const lowbit::bf16*>(mr.data)[e]);
            else
              std::copy(static_cast<const float*>(mr.data), static_cast<const float*>(mr.data) + i.numel, want.begin());
          }
          int64_t mismatches = 0;
          for (int64_t e = 0; e < i.numel; ++e) mismatches += read_element(t, e) != want[size_t(e)];
          CHECK(mismatches == 0);
          decoded.push_back(std::move(want));
        }
      }
      check_loads_back(dir, c, *s);
      // bfloat16 and float16: each value the float32 one rounded to nearest even
      for (const lowbit::dtype t : {lowbit::dtype::bf16, lowbit::dtype::f16}) {
        const std::string dtype = lowbit::dtype_name(t);
        CAPTURE(dtype);
        export_hf(dir, c, s->weights(), t);
        const nlohmann::json j = nlohmann::json::parse(file_bytes(dir + "/config.json"));
        CHECK(j["torch_dtype"] == (t == lowbit::dtype::bf16 ? "bfloat16" : "float16"));
        const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(dir + "/model.safetensors");
        const param_layout& L = s->layout();
        for (size_t p = 0; p < L.params.size(); ++p) {
          const param_info& i = L.params[p];
          CAPTURE(i.name);
          const lowbit::safetensors_tensor& got = r.at(i.name);
          CHECK(got.type == t);
          int64_t mismatches = 0;
          for (int64_t e = 0; e < i.numel; ++e) {
            const double x = decoded[p][size_t(e)];
            const double ref = t == lowbit::dtype::bf16 ? round_to_format(x, 7, -126) : round_to_format(x, 10, -14);
            mismatches += double(read_element(got, e)) != ref;
          }
          CHECK(mismatches == 0);
        }
      }
      std::filesystem::remove_all(dir);
    }
  }
}

// --export-4bit: the layers' NF4 matrices leave as they are stored (the
// same code and scale bytes, in bitsandbytes' keys, which lowbit's loader
// and transformers with bitsandbytes read), the embedding, head and norms
// in the float dtype, and config.json carries the quantization_config.
// Read back by --init's loader into float32 weights (f32 export of the
// rest): the source model's loss within 1e-5 relative, as above. Refused
// for weights that are not NF4 / FP4.
TEST_CASE("--export-hf with --export-4bit: NF4 layers byte for byte in bitsandbytes' keys, the rest in float") {
  for (const bool tied : {false, true}) {
    CAPTURE(tied);
    llama_config c = small_test_config();
    c.tied_embeddings = tied;
    const std::unique_ptr<training_session> s = trained(c, find_mode("nf4"));
    const std::string dir = "export_test_4bit";
    std::filesystem::remove_all(dir);
    export_hf(dir, c, s->weights(), lowbit::dtype::f32, "", true);
    const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(dir + "/model.safetensors");
    const param_layout& L = s->layout();
    int quantized = 0;
    for (size_t p = 0; p < L.params.size(); ++p) {
      const param_info& i = L.params[p];
      CAPTURE(i.name);
      if (i.matrix && i.layer >= 0) {
        const lowbit::quantized_tensor& q = s->weights().mq[size_t(i.slot)];
        const lowbit::safetensors_tensor& codes = r.at(i.name);
        CHECK(codes.type == lowbit::dtype::u8);
        CHECK(std::memcmp(codes.data, q.codes.data(), q.codes.size()) == 0);
        CHECK(codes.nbytes == q.codes.size());
        const lowbit::safetensors_tensor& scale_codes = r.at(i.name + ".absmax");
        CHECK(std::memcmp(scale_codes.data, q.absmax_codes.data(), q.absmax_codes.size()) == 0);
        CHECK(r.contains(i.name + ".quant_state.bitsandbytes__nf4"));
        ++quantized;
      } else {
        CHECK(r.at(i.name).type == lowbit::dtype::f32);  // transformers keeps these in float
      }
    }
    CHECK(quantized == 7 * c.n_layers);
    const nlohmann::json j = nlohmann::json::parse(file_bytes(dir + "/config.json"));
    CHECK(j["quantization_config"]["quant_method"] == "bitsandbytes");
    CHECK(j["quantization_config"]["load_in_4bit"] == true);
    CHECK(j["quantization_config"]["bnb_4bit_quant_type"] == "nf4");
    CHECK(j["quantization_config"]["bnb_4bit_use_double_quant"] == true);
    check_loads_back(dir, c, *s);
    std::filesystem::remove_all(dir);
  }
  const std::unique_ptr<training_session> q8 = trained(small_test_config(), find_mode("qft"));
  CHECK_THROWS_WITH_AS(export_hf("export_test_4bit_int8", small_test_config(), q8->weights(), lowbit::dtype::bf16, "",
                                 true),
                       doctest::Contains("this model's weights are int8"), lowbit::error);
  CHECK(!std::filesystem::exists("export_test_4bit_int8"));
}

TEST_CASE("--export-hf refuses a float16 overflow (naming the tensor, the old export kept) and a sharded directory; "
          "copies a tokenizer") {
  const llama_config c = small_test_config();
  const mode_info& m = find_mode("fp32-adamw");
  const std::unique_ptr<training_session> s = trained(c, m);
  const std::string dir = "export_test_refusals";
  std::filesystem::remove_all(dir);
  export_hf(dir, c, s->weights(), lowbit::dtype::f16);
  const std::string before = file_bytes(dir + "/model.safetensors"), config_before = file_bytes(dir + "/config.json");
  const int p = s->layout().find("model.layers.1.mlp.up_proj.weight");
  REQUIRE(p >= 0);
  s->weights().m32[size_t(s->layout().params[size_t(p)].offset + 5)] = 70000.0f;  // above float16's 65504
  CHECK_THROWS_WITH_AS(export_hf(dir, c, s->weights(), lowbit::dtype::f16),
                       doctest::Contains("'model.layers.1.mlp.up_proj.weight' holds 70000"), lowbit::error);
  CHECK(file_bytes(dir + "/model.safetensors") == before);
  CHECK(file_bytes(dir + "/config.json") == config_before);
  export_hf(dir, c, s->weights(), lowbit::dtype::bf16);  // bfloat16 holds it
  CHECK(file_bytes(dir + "/model.safetensors") != before);

  // a SentencePiece model given to the run is copied alongside (any file's bytes), also over an
  // older copy, and exporting into the directory it was read from leaves it as it is
  std::ofstream("export_test_tokenizer.model", std::ios::binary) << std::string("\x0a\x05piece\x00\xff", 9);
  export_hf(dir, c, s->weights(), lowbit::dtype::bf16, "export_test_tokenizer.model");
  CHECK(file_bytes(dir + "/tokenizer.model") == file_bytes("export_test_tokenizer.model"));
  std::ofstream("export_test_tokenizer.model", std::ios::binary) << "another model";
  export_hf(dir, c, s->weights(), lowbit::dtype::bf16, "export_test_tokenizer.model");
  CHECK(file_bytes(dir + "/tokenizer.model") == "another model");
  export_hf(dir, c, s->weights(), lowbit::dtype::bf16, dir + "/tokenizer.model");
  CHECK(file_bytes(dir + "/tokenizer.model") == "another model");
  std::remove("export_test_tokenizer.model");

  std::ofstream(dir + "/model.safetensors.index.json") << "{\"weight_map\": {}}";
  CHECK_THROWS_WITH_AS(export_hf(dir, c, s->weights(), lowbit::dtype::bf16),
                       doctest::Contains("holds model.safetensors.index.json"), lowbit::error);
  CHECK_THROWS_WITH_AS(parse_export_dtype("f8"), doctest::Contains("--export-dtype must be f32, bf16 or f16, got 'f8'"),
                       lowbit::error);
  std::filesystem::remove_all(dir);
}
