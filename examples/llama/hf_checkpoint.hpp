// examples/llama/hf_checkpoint.hpp
// Loading a Hugging Face LLaMA checkpoint directory: config.json plus
// model.safetensors, or shards listed by model.safetensors.index.json (read
// as one set of tensors: a quantized weight's keys may span shards; a tensor
// found in a shard other than the one the index's weight_map names, or in
// two shards, is an error rather than a silent pick).
// Tensors may be float32, bfloat16 or float16, or bitsandbytes 4-bit / lowbit
// quantized (codes + quant_state keys, read with lowbit::load_quantized and
// dequantized). Every parameter of the layout must be present with its exact
// shape; the error names the first one that is not. Values are converted to
// float and stored in the run's weight format (quantized if the mode says
// so). Keys the model does not use are counted and reported, not an error
// (older checkpoints carry rotary inv_freq buffers).
#pragma once

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <lowbit/lowbit.hpp>

#include "config.hpp"
#include "parameters.hpp"

namespace llama {

class hf_weights {
 public:
  explicit hf_weights(const std::string& dir) : dir_(dir) {
    const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
    if (std::ifstream(index).good()) {
      nlohmann::json j;
      try {
        std::ifstream(index) >> j;
      } catch (const std::exception& e) {
        throw lowbit::error(lowbit::errc::malformed_file, "'" + index + "' is not valid JSON: " + e.what());
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        throw lowbit::error(lowbit::errc::malformed_file, "'" + index + "' has no weight_map object");
      std::map<std::string, std::string> file_of;  // tensor -> shard, as the index says
      std::vector<std::string> files;             // shards in first-mention order
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string()) throw lowbit::error(lowbit::errc::malformed_file, "'" + index + "': weight_map values must be file names");
        const std::string file = it.value().get<std::string>();
        if (file.find('/') != std::string::npos || file.find("..") != std::string::npos)
          throw lowbit::error(lowbit::errc::malformed_file, "'" + index + "': shard name '" + file + "' is not a plain file name");
        if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
        file_of[it.key()] = file;
      }
      std::vector<lowbit::safetensors_reader> shards;
      for (const std::string& file : files) {
        shards.push_back(lowbit::safetensors_reader::open(dir + "/" + file));
        // A tensor the index places in another shard is a stale or
        // mismatched copy: which of the two is meant cannot be told.
        for (const lowbit::safetensors_tensor& t : shards.back().tensors()) {
          auto placed = file_of.find(t.name);
          if (placed != file_of.end() && placed->second != file)
            throw lowbit::error(lowbit::errc::malformed_file, "'" + index + "' places tensor '" + t.name + "' in '" +
                                                                  placed->second + "', but '" + file + "' holds it too");
        }
      }
      shard_count_ = shards.size();
      // One reader over all shards, so that a quantized weight's keys may lie
      // in different shards (as a size-based split leaves them).
      reader_ = lowbit::safetensors_reader::combine(shards, dir);
    } else if (std::ifstream(single).good()) {
      reader_ = lowbit::safetensors_reader::open(single);
      shard_count_ = 1;
    } else {
      throw lowbit::error(lowbit::errc::io, "'" + dir + "' has neither model.safetensors nor model.safetensors.index.json");
    }
    for (const lowbit::quantized_weight_info& q : lowbit::find_quantized_weights(reader_)) {
      quantized_.insert(q.name);
      for (const std::string& k : q.keys) quantized_keys_.insert(k);
    }
    for (const lowbit::safetensors_tensor& t : reader_.tensors())
      if (!quantized_keys_.count(t.name)) dense_.insert(t.name);
  }

  size_t shard_count() const { return shard_count_; }

  // Tensor `name` as float values, checked against `shape`.
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& shape) {
    used_.insert(name);
    const std::string want = shape_string(shape);
    if (quantized_.count(name)) {
      lowbit::loaded_quantized l = lowbit::load_quantized(reader_, name);
      if (l.tensor.shape != shape)
        throw lowbit::error(lowbit::errc::invalid_argument, dir_ + ": quantized tensor '" + name + "' has shape " +
                                                                shape_string(l.tensor.shape) + ", the model needs " + want);
      std::vector<float> out(static_cast<size_t>(l.tensor.layout.n));
      lowbit::cpu::dequantize(l.tensor.view(), lowbit::make_flat_view(out.data(), l.tensor.layout.n));
      return out;
    }
    if (!dense_.count(name))
      throw lowbit::error(lowbit::errc::invalid_argument, dir_ + ": the checkpoint has no tensor '" + name + "'");
    const lowbit::safetensors_tensor& t = reader_.at(name);
    if (t.shape != shape)
      throw lowbit::error(lowbit::errc::invalid_argument,
                          dir_ + ": tensor '" + name + "' has shape " + t.shape_string() + ", the model needs " + want);
    std::vector<float> out(static_cast<size_t>(t.numel()));
    switch (t.type) {
      case lowbit::dtype::f32: std::memcpy(out.data(), t.data, t.nbytes); break;
      case lowbit::dtype::bf16: {
        const auto v = t.to_vector<lowbit::bf16>();
        for (size_t i = 0; i < v.size(); ++i) out[i] = lowbit::to_float(v[i]);
        break;
      }
      case lowbit::dtype::f16: {
        const auto v = t.to_vector<lowbit::fp16>();
        for (size_t i = 0; i < v.size(); ++i) out[i] = lowbit::to_float(v[i]);
        break;
      }
      default:
        throw lowbit::error(lowbit::errc::invalid_argument,
                            dir_ + ": tensor '" + name + "' has dtype " + t.dtype_string + " (expected F32, BF16 or F16)");
    }
    return out;
  }

  // Keys present in the files that read() never asked for.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const std::string& k : dense_)
      if (!used_.count(k)) out.push_back(k);
    for (const std::string& k : quantized_)
      if (!used_.count(k)) out.push_back(k);
    return out;
  }

 private:
  static std::string shape_string(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  std::string dir_;
  lowbit::safetensors_reader reader_;  // the file, or every shard's tensors at once
  size_t shard_count_ = 0;
  std::set<std::string> dense_, quantized_;  // names: plain tensors, quantized weights
  std::set<std::string> quantized_keys_, used_;
};

// Reads dir/config.json.
inline llama_config load_hf_config(const std::string& dir) { return llama_config::from_hf_file(dir + "/config.json"); }

// Fills `w` (laid out for the checkpoint's config) from the checkpoint in dir.
// Returns the number of unused keys in the files.
template <class T>
size_t load_hf_weights(const std::string& dir, weight_store<T>& w) {
  hf_weights src(dir);
  const param_layout& L = *w.layout;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    const std::vector<float> v = src.read(i.name, i.shape);
    if (i.matrix) {
      w.set_matrix(int(p), v.data());
    } else {
      T* dst = w.vector(int(p));
      for (int64_t e = 0; e < i.numel; ++e) dst[e] = T(v[size_t(e)]);
    }
  }
  return src.unused().size();
}

}  // namespace llama
