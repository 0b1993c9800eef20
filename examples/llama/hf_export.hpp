// examples/llama/hf_export.hpp
// Exporting the trained model as a Hugging Face LLaMA checkpoint directory
// (--export-hf), so that transformers' LlamaForCausalLM.from_pretrained, or
// this trainer's --init, loads it: config.json (the model config with
// torch_dtype) and model.safetensors, every weight under its Hugging Face
// name as float32, bfloat16 or float16 (round to nearest even), decoded
// from the mode's storage. Quantized matrices are dequantized one tensor at
// a time while the file is written, so the export never holds a second
// copy of the model (one float32 tensor at most). A tied head is written
// once, as the embedding, with tie_word_embeddings. Each file is written
// to a temporary name and renamed; a float16 export refuses a weight
// beyond float16's range, naming it, before model.safetensors is replaced.
// A SentencePiece tokenizer.model given to the run is copied alongside.
// With keep_4bit (--export-4bit; modes with NF4 / FP4 weights), the
// layers' projections keep their packed codes and scales as they are, in
// bitsandbytes' 4-bit keys, and config.json gets the quantization_config
// with which transformers (with bitsandbytes) loads them as a 4-bit model;
// the embedding, the head and the norm gains, which transformers keeps in
// float, are written in the dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <lowbit/lowbit.hpp>

#include "config.hpp"
#include "parameters.hpp"

namespace llama {

// "f32" / "bf16" / "f16" (the command line's --export-dtype) as a dtype.
inline lowbit::dtype parse_export_dtype(const std::string& s) {
  if (s == "f32") return lowbit::dtype::f32;
  if (s == "bf16") return lowbit::dtype::bf16;
  if (s == "f16") return lowbit::dtype::f16;
  throw lowbit::error(lowbit::errc::invalid_argument, "--export-dtype must be f32, bf16 or f16, got '" + s + "'");
}

// Creates the export directory `dir` (and its parents) if needed and checks
// that an export can go there: a directory, not one holding a sharded
// checkpoint's index. The trainer calls it before training as well, so
// that a bad --export-hf target fails at once rather than after the run.
inline void prepare_export_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  lowbit::require(!ec && fs::is_directory(dir), lowbit::errc::io,
                  "export: cannot create the directory '" + dir + "'" + (ec ? ": " + ec.message() : ""));
  lowbit::require(!fs::exists(fs::path(dir) / "model.safetensors.index.json"), lowbit::errc::invalid_argument,
                  "export: '" + dir + "' holds model.safetensors.index.json (a sharded checkpoint, which loaders "
                  "read instead of model.safetensors); export into a new or empty directory");
}

namespace export_detail {

// Parameter p of w as float32 values (numel of them), decoded from its storage.
inline void decode_param(const weight_store<float>& w, int p, std::vector<float>& out) {
  const param_info& info = w.layout->params[size_t(p)];
  out.resize(size_t(info.numel));
  if (!info.matrix) {
    std::memcpy(out.data(), w.vector(p), size_t(info.numel) * sizeof(float));
    return;
  }
  const matrix_ref m = w.matrix(p);
  switch (m.kind) {
    case matrix_storage::quantized:
      lowbit::cpu::dequantize(m.q, lowbit::make_flat_view(out.data(), info.numel));
      return;
    case matrix_storage::f32:
      std::memcpy(out.data(), m.data, size_t(info.numel) * sizeof(float));
      return;
    case matrix_storage::bf16: {
      const lowbit::bf16* src = static_cast<const lowbit::bf16*>(m.data);
      for (int64_t i = 0; i < info.numel; ++i) out[size_t(i)] = lowbit::to_float(src[i]);
      return;
    }
    case matrix_storage::f64: break;
  }
  throw lowbit::error(lowbit::errc::unsupported, "export: tensor '" + info.name + "' is stored as float64");
}

// values converted to t into dst (dtype_size(t) * values.size() bytes).
inline void encode_values(const std::vector<float>& values, lowbit::dtype t, const std::string& name, uint8_t* dst) {
  const size_t n = values.size();
  if (t == lowbit::dtype::f32) {
    std::memcpy(dst, values.data(), n * sizeof(float));
    return;
  }
  if (t == lowbit::dtype::bf16) {
    for (size_t i = 0; i < n; ++i) {
      const lowbit::bf16 v = lowbit::to_bf16(values[i]);
      std::memcpy(dst + 2 * i, &v, 2);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const lowbit::fp16 v = lowbit::to_fp16(values[i]);
    if (std::isfinite(values[i]) && !std::isfinite(lowbit::to_float(v)))
      throw lowbit::error(lowbit::errc::invalid_argument,
                          "export: tensor '" + name + "' holds " + std::to_string(values[i]) +
                              ", beyond float16's range (+-65504); export as bf16 or f32 instead");
    std::memcpy(dst + 2 * i, &v, 2);
  }
}

inline void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    if (!f) throw lowbit::error(lowbit::errc::io, "cannot write '" + tmp + "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw lowbit::error(lowbit::errc::io, "cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

}  // namespace export_detail

// Writes dir/config.json and dir/model.safetensors (dir is created if
// needed) from the weights w of a model with config cfg, in dtype t;
// sentencepiece_model: a tokenizer.model to copy alongside ("" for none);
// keep_4bit: the layers' NF4 / FP4 matrices as they are (see above).
// Refuses a directory that holds a sharded checkpoint's index (whose
// shards a loader would read instead of the new file).
inline void export_hf(const std::string& dir, const llama_config& cfg, const weight_store<float>& w, lowbit::dtype t,
                      const std::string& sentencepiece_model = "", bool keep_4bit = false) {
  namespace fs = std::filesystem;
  lowbit::require(t == lowbit::dtype::f32 || t == lowbit::dtype::bf16 || t == lowbit::dtype::f16,
                  lowbit::errc::invalid_argument, "export: the dtype must be float32, bfloat16 or float16");
  const bool four_bit_weights = w.kind == matrix_storage::quantized &&
                                (w.qspec.fmt == lowbit::format::nf4 || w.qspec.fmt == lowbit::format::fp4);
  lowbit::require(!keep_4bit || four_bit_weights, lowbit::errc::invalid_argument,
                  std::string("export: --export-4bit keeps NF4 / FP4 weights in bitsandbytes' 4-bit layout; this "
                              "model's weights are ") +
                      (w.kind == matrix_storage::quantized ? lowbit::format_name(w.qspec.fmt)
                                                           : (w.kind == matrix_storage::bf16 ? "bfloat16" : "float32")) +
                      ", which transformers has no matching bitsandbytes layout for: export them as float "
                      "(--export-dtype)");
  prepare_export_dir(dir);
  const param_layout& L = *w.layout;
  lowbit::safetensors_writer out;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& info = L.params[p];
    if (keep_4bit && info.matrix && info.layer >= 0) {  // a layer's projection: transformers' Linear4bit
      lowbit::save_quantized(out, info.name, w.mq[size_t(info.slot)], t);
      continue;
    }
    out.add_generated(info.name, t, info.shape, [&w, p, t, &info](uint8_t* dst, size_t nbytes) {
      std::vector<float> values;
      export_detail::decode_param(w, int(p), values);
      lowbit::require(nbytes == values.size() * lowbit::dtype_size(t), lowbit::errc::invalid_argument,
                      "export: size of '" + info.name + "'");
      export_detail::encode_values(values, t, info.name, dst);
    });
  }
  out.set_metadata("format", "pt");  // what transformers writes, and checks for
  out.write((fs::path(dir) / "model.safetensors").string());

  nlohmann::json config = cfg.to_hf_json();
  const std::string dtype_name =
      t == lowbit::dtype::f32 ? "float32" : (t == lowbit::dtype::bf16 ? "bfloat16" : "float16");
  config["torch_dtype"] = dtype_name;
  if (keep_4bit) {  // the fields of transformers' BitsAndBytesConfig for a pre-quantized 4-bit model
    config["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                     {"load_in_4bit", true},
                                     {"load_in_8bit", false},
                                     {"bnb_4bit_quant_type", lowbit::format_name(w.qspec.fmt)},
                                     {"bnb_4bit_use_double_quant", w.qspec.nested},
                                     {"bnb_4bit_compute_dtype", dtype_name},
                                     {"bnb_4bit_quant_storage", "uint8"},
                                     {"llm_int8_skip_modules", {"lm_head"}}};
  }
  export_detail::write_text_atomically((fs::path(dir) / "config.json").string(), config.dump(2) + "\n");

  if (sentencepiece_model.empty() && fs::exists(fs::path(dir) / "tokenizer.model"))
    std::fprintf(stderr,
                 "export: note: '%s' is not this model's (it was trained with the byte tokenizer); a loader would "
                 "take it for the model's tokenizer: remove it\n",
                 (fs::path(dir) / "tokenizer.model").c_str());
  if (!sentencepiece_model.empty()) {
    const fs::path target = fs::path(dir) / "tokenizer.model";
    if (!fs::exists(target) || !fs::equivalent(sentencepiece_model, target)) {
      std::error_code ec;
      fs::copy_file(sentencepiece_model, target, fs::copy_options::overwrite_existing, ec);
      lowbit::require(!ec, lowbit::errc::io,
                      "export: cannot copy '" + sentencepiece_model + "' to '" + target.string() + "': " + ec.message());
    }
  }
}

}  // namespace llama
