// examples/llama/config.hpp
// The model's hyperparameters (llama_config): named presets (the tiny
// default trained by the README's main command, and the LLaMA-2-7B and
// LLaMA-3.2-1B shapes used for benchmarks), reading and writing a Hugging
// Face LlamaConfig `config.json`, validation with errors naming the bad
// field, and the parameter count.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <lowbit/core/error.hpp>

namespace llama {

struct llama_config {
  int vocab_size = 256;   // byte-level tokenizer by default
  int dim = 128;          // hidden size
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 2;     // grouped-query attention: n_heads % n_kv_heads == 0
  int hidden_dim = 352;   // SwiGLU inner size (about 8/3 dim, rounded up to 32)
  int max_seq_len = 256;  // longest sequence the model is trained or sampled with
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tied_embeddings = false;  // output head shares the token embedding
  // Rotary frequency scaling (Hugging Face `rope_scaling` or
  // `rope_parameters`): "default" (none) or "llama3", Llama 3.1 / 3.2's
  // rule (rope_frequencies below), whose four numbers are the config's
  // factor, low_freq_factor, high_freq_factor and
  // original_max_position_embeddings.
  std::string rope_type = "default";
  float rope_factor = 1.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int rope_original_max_positions = 8192;

  int head_dim() const { return dim / n_heads; }
  int q_dim() const { return n_heads * head_dim(); }
  int kv_dim() const { return n_kv_heads * head_dim(); }

  void validate() const {
    auto need = [](bool ok, const std::string& msg) {
      lowbit::require(ok, lowbit::errc::invalid_argument, "model config: " + msg);
    };
    need(vocab_size > 0, "vocab_size must be > 0");
    need(dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0 && hidden_dim > 0 && max_seq_len > 0,
         "dim, n_layers, n_heads, n_kv_heads, hidden_dim and max_seq_len must be > 0");
    need(dim % n_heads == 0, "dim " + std::to_string(dim) + " is not a multiple of n_heads " + std::to_string(n_heads));
    need(head_dim() % 2 == 0, "head_dim " + std::to_string(head_dim()) + " must be even for rotary embeddings");
    need(n_kv_heads <= n_heads && n_heads % n_kv_heads == 0,
         "n_heads " + std::to_string(n_heads) + " must be a multiple of n_kv_heads " + std::to_string(n_kv_heads));
    need(norm_eps > 0.0f && std::isfinite(norm_eps), "norm_eps must be finite and > 0");
    need(rope_theta > 1.0f && std::isfinite(rope_theta), "rope_theta must be finite and > 1");
    need(rope_type == "default" || rope_type == "llama3",
         "rope_type '" + rope_type + "' is not supported (default or llama3)");
    if (rope_type == "llama3") {
      need(rope_factor >= 1.0f && std::isfinite(rope_factor), "llama3 rope scaling: factor must be finite and >= 1");
      need(rope_low_freq_factor > 0.0f && rope_high_freq_factor > rope_low_freq_factor &&
               std::isfinite(rope_high_freq_factor),
           "llama3 rope scaling: needs 0 < low_freq_factor < high_freq_factor");
      need(rope_original_max_positions > 0, "llama3 rope scaling: original_max_position_embeddings must be > 0");
    }
  }

  // The rotary inverse frequencies, i < head_dim / 2: theta^(-2i / head_dim)
  // (Hugging Face LLaMA's convention), computed in double. "llama3"
  // scaling then sorts them by wavelength 2 pi / f against the original
  // context L: f kept where the wavelength is under L / high_freq_factor,
  // f / factor where it is over L / low_freq_factor, and between the two
  // (bounds included) the blend (1 - s) f / factor + s f with s = (L /
  // wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
  std::vector<double> rope_frequencies() const {
    const int hd = head_dim();
    std::vector<double> f(size_t(hd / 2));
    for (int i = 0; i < hd / 2; ++i) f[size_t(i)] = std::pow(double(rope_theta), -double(2 * i) / double(hd));
    if (rope_type == "llama3") {
      const double pi = 3.14159265358979323846, L = rope_original_max_positions;
      const double factor = rope_factor, low = rope_low_freq_factor, high = rope_high_freq_factor;
      for (double& v : f) {
        const double wavelength = 2.0 * pi / v;
        if (wavelength < L / high) continue;
        if (wavelength > L / low) {
          v = v / factor;
        } else {
          const double smooth = (L / wavelength - low) / (high - low);
          v = (1.0 - smooth) * v / factor + smooth * v;
        }
      }
    }
    return f;
  }

  // Parameters per layer and in total.
  int64_t layer_params() const {
    const int64_t d = dim;
    return 2 * d + d * q_dim() + 2 * d * kv_dim() + int64_t(q_dim()) * d + 3 * d * hidden_dim;
  }
  int64_t n_params() const {
    return int64_t(n_layers) * layer_params() + int64_t(vocab_size) * dim * (tied_embeddings ? 1 : 2) + dim;
  }

  // Hugging Face LlamaConfig fields.
  // The shortest decimal that reads back as v (1e-05 rather than float
  // 1e-5f widened, 9.999999747378752e-06), so config.json reads as written.
  static double shortest_decimal(float v) {
    char buf[32];
    for (int digits = 1; digits <= 9; ++digits) {
      std::snprintf(buf, sizeof buf, "%.*g", digits, double(v));
      if (std::strtof(buf, nullptr) == v) return std::strtod(buf, nullptr);
    }
    return double(v);
  }

  nlohmann::json to_hf_json() const {
    nlohmann::json j;
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = dim;
    j["num_hidden_layers"] = n_layers;
    j["num_attention_heads"] = n_heads;
    j["num_key_value_heads"] = n_kv_heads;
    j["intermediate_size"] = hidden_dim;
    j["max_position_embeddings"] = max_seq_len;
    j["rms_norm_eps"] = shortest_decimal(norm_eps);
    j["rope_theta"] = shortest_decimal(rope_theta);
    if (rope_type != "default")
      j["rope_scaling"] = {{"rope_type", rope_type},
                           {"factor", shortest_decimal(rope_factor)},
                           {"low_freq_factor", shortest_decimal(rope_low_freq_factor)},
                           {"high_freq_factor", shortest_decimal(rope_high_freq_factor)},
                           {"original_max_position_embeddings", rope_original_max_positions}};
    j["tie_word_embeddings"] = tied_embeddings;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    return j;
  }

  static llama_config from_hf_json(const nlohmann::json& j, const std::string& source) {
    auto fail = [&](const std::string& msg) {
      throw lowbit::error(lowbit::errc::invalid_argument, source + ": " + msg);
    };
    if (!j.is_object()) fail("not a JSON object");
    auto get_int = [&](const char* key, bool required, int fallback) {
      if (!j.contains(key) || j[key].is_null()) {
        if (required) fail(std::string("lacks '") + key + "'");
        return fallback;
      }
      // read as 64 bits: get<int>() would wrap 4294967552 to 256
      if (!j[key].is_number_integer()) fail(std::string("'") + key + "' must be an integer");
      const int64_t v = j[key].get<int64_t>();
      if (v < 1 || v > std::numeric_limits<int>::max())
        fail(std::string("'") + key + "' = " + std::to_string(v) + " is out of range (1 to " +
             std::to_string(std::numeric_limits<int>::max()) + ")");
      return int(v);
    };
    auto get_bool = [&](const char* key, bool fallback) {
      if (!j.contains(key) || j[key].is_null()) return fallback;
      if (!j[key].is_boolean()) fail(std::string("'") + key + "' must be true or false, got " + j[key].type_name());
      return j[key].get<bool>();
    };
    auto get_float = [&](const char* key, float fallback) {
      if (!j.contains(key) || j[key].is_null()) return fallback;
      if (!j[key].is_number()) fail(std::string("'") + key + "' must be a number");
      const double v = j[key].get<double>();
      if (!std::isfinite(float(v))) fail(std::string("'") + key + "' = " + j[key].dump() + " is not a finite float");
      return float(v);
    };
    if (j.contains("model_type") && j["model_type"] != "llama")
      fail("model_type is " + j["model_type"].dump() + ", only \"llama\" is supported");
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
      fail("hidden_act is " + j["hidden_act"].dump() + ", only \"silu\" (SwiGLU) is supported");
    for (const char* key : {"attention_bias", "mlp_bias"})
      if (get_bool(key, false)) fail(std::string(key) + " = true is not supported (LLaMA has no biases)");
    // Rotary parameters: top-level rope_theta and rope_scaling (older
    // files, the Hub's Llama 3 configs) or rope_parameters {rope_type,
    // rope_theta, ...} (transformers 5). Plain ("default") rotary
    // embeddings and Llama 3's scaling ("llama3") are implemented.
    llama_config c;
    float theta = get_float("rope_theta", 10000.0f);
    for (const char* key : {"rope_scaling", "rope_parameters"}) {
      if (!j.contains(key) || j[key].is_null()) continue;
      const nlohmann::json& r = j[key];
      if (!r.is_object()) fail(std::string("'") + key + "' must be an object");
      std::string type = "default";
      for (const char* field : {"type", "rope_type"}) {  // rope_type wins where both are given
        if (!r.contains(field) || r[field].is_null()) continue;
        if (!r[field].is_string())
          fail(std::string(key) + "'s '" + field + "' must be a string, got " + r[field].type_name());
        type = r[field].get<std::string>();
      }
      if (type != "default" && type != "llama3")
        fail(std::string(key) + " rope_type '" + type + "' is not supported (only plain rotary embeddings and llama3)");
      if (r.contains("rope_theta") && !r["rope_theta"].is_null()) {
        if (!r["rope_theta"].is_number()) fail(std::string(key) + "'s 'rope_theta' must be a number");
        theta = r["rope_theta"].get<float>();
      }
      if (type != "llama3") continue;
      auto number = [&](const char* field) {
        if (!r.contains(field) || !r[field].is_number())
          fail(std::string(key) + " of rope_type 'llama3' lacks the number '" + field + "'");
        return r[field].get<double>();
      };
      c.rope_type = type;
      c.rope_factor = float(number("factor"));
      c.rope_low_freq_factor = float(number("low_freq_factor"));
      c.rope_high_freq_factor = float(number("high_freq_factor"));
      if (!r.contains("original_max_position_embeddings") || !r["original_max_position_embeddings"].is_number_integer())
        fail(std::string(key) + " of rope_type 'llama3' lacks the integer 'original_max_position_embeddings'");
      const int64_t original = r["original_max_position_embeddings"].get<int64_t>();
      if (original < 1 || original > std::numeric_limits<int>::max())
        fail(std::string(key) + "'s original_max_position_embeddings = " + std::to_string(original) +
             " is out of range");
      c.rope_original_max_positions = int(original);
    }
    c.vocab_size = get_int("vocab_size", true, 0);
    c.dim = get_int("hidden_size", true, 0);
    c.n_layers = get_int("num_hidden_layers", true, 0);
    c.n_heads = get_int("num_attention_heads", true, 0);
    c.n_kv_heads = get_int("num_key_value_heads", false, c.n_heads);
    c.hidden_dim = get_int("intermediate_size", true, 0);
    c.max_seq_len = get_int("max_position_embeddings", false, 2048);
    c.norm_eps = get_float("rms_norm_eps", 1e-6f);
    c.rope_theta = theta;
    if (j.contains("head_dim") && !j["head_dim"].is_null() && !j["head_dim"].is_number_integer())
      fail("'head_dim' must be an integer");
    if (j.contains("head_dim") && j["head_dim"].is_number_integer() && c.n_heads > 0 &&
        j["head_dim"].get<int64_t>() != int64_t(c.dim / c.n_heads))
      fail("head_dim != hidden_size / num_attention_heads is not supported");
    c.tied_embeddings = get_bool("tie_word_embeddings", false);
    try {
      c.validate();
    } catch (const lowbit::error& e) {
      fail(e.what());
    }
    return c;
  }

  static llama_config from_hf_file(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw lowbit::error(lowbit::errc::io, "cannot open model config '" + path + "'");
    nlohmann::json j;
    try {
      f >> j;
    } catch (const std::exception& e) {
      throw lowbit::error(lowbit::errc::malformed_file, "'" + path + "' is not valid JSON: " + e.what());
    }
    return from_hf_json(j, path);
  }

  // Named shapes. "tiny" is the default trained on tinyshakespeare; the
  // others are the published shapes (random init) for memory and speed runs.
  static llama_config preset(const std::string& name) {
    llama_config c;
    if (name == "tiny") return c;
    if (name == "llama2-7b") {
      c.vocab_size = 32000, c.dim = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 32;
      c.hidden_dim = 11008, c.max_seq_len = 4096, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
      return c;
    }
    if (name == "llama3.2-1b") {
      c.vocab_size = 128256, c.dim = 2048, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8;
      c.hidden_dim = 8192, c.max_seq_len = 131072, c.norm_eps = 1e-5f, c.rope_theta = 500000.0f;
      c.tied_embeddings = true;
      c.rope_type = "llama3", c.rope_factor = 32.0f, c.rope_low_freq_factor = 1.0f, c.rope_high_freq_factor = 4.0f;
      c.rope_original_max_positions = 8192;
      return c;
    }
    if (name == "tinyllama-1.1b") {
      c.vocab_size = 32000, c.dim = 2048, c.n_layers = 22, c.n_heads = 32, c.n_kv_heads = 4;
      c.hidden_dim = 5632, c.max_seq_len = 2048, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
      return c;
    }
    throw lowbit::error(lowbit::errc::invalid_argument,
                        "unknown preset '" + name + "' (tiny, llama2-7b, llama3.2-1b, tinyllama-1.1b)");
  }

  std::string summary() const {
    std::ostringstream s;
    s << "dim " << dim << ", " << n_layers << " layers, " << n_heads << " heads (" << n_kv_heads << " kv), ffn "
      << hidden_dim << ", vocab " << vocab_size << (tied_embeddings ? ", tied head" : "")
      << (rope_type == "llama3" ? ", llama3 rope scaling x" + std::to_string(int(rope_factor)) : std::string()) << ", "
      << n_params() << " parameters";
    return s.str();
  }
};

}  // namespace llama
