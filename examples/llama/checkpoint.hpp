// examples/llama/checkpoint.hpp
// Training checkpoints: one safetensors file holding the weights under
// their Hugging Face names (float32 / bfloat16 tensors, or quantized ones as
// bitsandbytes-style codes + quant_state keys via lowbit::save_quantized),
// the optimizer states (lowbit::save_optimizer_state, prefixes "optimizer."
// for the matrices and "optimizer_norms." for the RMSNorm gains) and, in
// __metadata__, the model config, the training mode, the step (which is
// also the data position: batches are drawn by step), the seed, the
// rounding seed (the optimizer's stochastic rounding key; absent in
// checkpoints written before it existed, which rounded with the seed) and
// the tokens seen. Written atomically (temporary file, fsync, rename).
// Loading checks the file before changing anything: it must be a lowbit
// LLaMA checkpoint of the same mode and model config (errors name the
// difference), and every weight must be present with its dtype and shape.
// Weights are staged, the optimizer validates and loads its own part, and
// only then are the weights written.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <lowbit/lowbit.hpp>

#include "config.hpp"
#include "modes.hpp"
#include "parameters.hpp"

namespace llama {

struct train_state {
  int64_t step = 0;      // optimizer steps taken == batches consumed
  uint64_t seed = 0;     // data order and stochastic rounding
  int64_t tokens = 0;    // training tokens seen
};

inline constexpr const char* checkpoint_format = "lowbit-llama-checkpoint";

inline void save_checkpoint(const std::string& path, const llama_config& cfg, const mode_info& mode,
                            const weight_store<float>& w, const trainer_optimizer& opt, const train_state& st) {
  lowbit::safetensors_writer out;
  const param_layout& L = *w.layout;
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (!i.matrix) {
      out.add(i.name, lowbit::dtype::f32, i.shape, w.vector(int(p)));
    } else if (w.kind == matrix_storage::quantized) {
      lowbit::save_quantized(out, i.name, w.mq[size_t(i.slot)], lowbit::dtype::f32);
    } else if (w.kind == matrix_storage::f32) {
      out.add(i.name, lowbit::dtype::f32, i.shape, w.m32.data() + i.offset);
    } else {
      out.add(i.name, lowbit::dtype::bf16, i.shape, w.m16.data() + i.offset);
    }
  }
  opt.save(out);
  out.set_metadata("format", checkpoint_format);
  out.set_metadata("format_version", "1");
  out.set_metadata("mode", mode.name);
  out.set_metadata("config", cfg.to_hf_json().dump());
  out.set_metadata("step", std::to_string(st.step));
  out.set_metadata("data_position", std::to_string(st.step));
  out.set_metadata("seed", std::to_string(st.seed));
  out.set_metadata("rounding_seed", std::to_string(opt.rounding_seed()));
  out.set_metadata("tokens", std::to_string(st.tokens));
  out.write(path);
}

namespace checkpoint_detail {

inline std::string meta(const lowbit::safetensors_reader& r, const std::string& path, const std::string& key) {
  auto it = r.metadata().find(key);
  if (it == r.metadata().end())
    throw lowbit::error(lowbit::errc::malformed_file, "checkpoint '" + path + "' lacks metadata '" + key + "'");
  return it->second;
}

// A metadata value that must be a decimal integer in [0, 2^64).
inline uint64_t meta_u64(const lowbit::safetensors_reader& r, const std::string& path, const std::string& key) {
  const std::string s = meta(r, path, key);
  size_t used = 0;
  unsigned long long v = 0;
  try {
    if (!s.empty() && s[0] >= '0' && s[0] <= '9') v = std::stoull(s, &used);  // stoull would accept "-1"
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty())
    throw lowbit::error(lowbit::errc::malformed_file, "checkpoint '" + path + "': metadata '" + key + "' = '" + s +
                                                          "' is not a non-negative integer");
  return uint64_t(v);
}

inline int64_t meta_int(const lowbit::safetensors_reader& r, const std::string& path, const std::string& key) {
  const uint64_t v = meta_u64(r, path, key);
  if (v > uint64_t(INT64_MAX))
    throw lowbit::error(lowbit::errc::malformed_file,
                        "checkpoint '" + path + "': metadata '" + key + "' = " + std::to_string(v) + " is too large");
  return int64_t(v);
}

// The first field in which two configs differ, or "".
inline std::string config_difference(const llama_config& a, const llama_config& b) {
  const nlohmann::json ja = a.to_hf_json(), jb = b.to_hf_json();
  for (auto it = ja.begin(); it != ja.end(); ++it)
    if (!jb.contains(it.key()) || jb[it.key()] != it.value())
      return it.key() + " " + it.value().dump() + " in the checkpoint, " + (jb.contains(it.key()) ? jb[it.key()].dump() : "absent") + " in this run";
  return "";
}

}  // namespace checkpoint_detail

// Checks, before a run trains, that a checkpoint can later be written to
// `path` (--save): not a directory, in an existing directory this process
// may write to (the writer puts a temporary file there and renames it).
inline void check_checkpoint_target(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  lowbit::require(!fs::is_directory(path, ec), lowbit::errc::invalid_argument,
                  "--save '" + path + "' is a directory; name the checkpoint file");
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  lowbit::require(fs::is_directory(parent, ec), lowbit::errc::io,
                  "--save '" + path + "': the directory '" + parent.string() + "' does not exist");
  lowbit::require(::access(parent.c_str(), W_OK | X_OK) == 0, lowbit::errc::io,
                  "--save '" + path + "': cannot write into '" + parent.string() + "'");
}

// The --seed a checkpoint's run was started with.
inline uint64_t checkpoint_seed(const std::string& path) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
  if (checkpoint_detail::meta(r, path, "format") != checkpoint_format)
    throw lowbit::error(lowbit::errc::malformed_file, "'" + path + "' is not a lowbit LLaMA checkpoint");
  return checkpoint_detail::meta_u64(r, path, "seed");
}

// The model config stored in a checkpoint (to build the model before loading).
inline llama_config checkpoint_config(const std::string& path) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
  if (checkpoint_detail::meta(r, path, "format") != checkpoint_format)
    throw lowbit::error(lowbit::errc::malformed_file, "'" + path + "' is not a lowbit LLaMA checkpoint");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(checkpoint_detail::meta(r, path, "config"));
  } catch (const nlohmann::json::exception& e) {
    throw lowbit::error(lowbit::errc::malformed_file, "checkpoint '" + path + "': config metadata is not JSON: " + e.what());
  }
  return llama_config::from_hf_json(j, "checkpoint '" + path + "' config");
}

// Restores weights, optimizer and training state saved by save_checkpoint.
inline train_state load_checkpoint(const std::string& path, const llama_config& cfg, const mode_info& mode,
                                   weight_store<float>& w, trainer_optimizer& opt) {
  using namespace checkpoint_detail;
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
  if (meta(r, path, "format") != checkpoint_format)
    throw lowbit::error(lowbit::errc::malformed_file, "'" + path + "' is not a lowbit LLaMA checkpoint");
  if (meta(r, path, "format_version") != "1")
    throw lowbit::error(lowbit::errc::unsupported, "checkpoint '" + path + "' has format version " +
                                                       meta(r, path, "format_version") + ", this trainer reads 1");
  const std::string saved_mode = meta(r, path, "mode");
  if (saved_mode != mode.name)
    throw lowbit::error(lowbit::errc::invalid_argument, "checkpoint '" + path + "' was trained in mode '" + saved_mode +
                                                            "', this run uses mode '" + mode.name + "'");
  const std::string diff = config_difference(checkpoint_config(path), cfg);
  if (!diff.empty())
    throw lowbit::error(lowbit::errc::invalid_argument, "checkpoint '" + path + "' is for another model: " + diff);
  train_state st;
  st.step = meta_int(r, path, "step");
  st.seed = meta_u64(r, path, "seed");
  st.tokens = meta_int(r, path, "tokens");
  // Checkpoints written before --rounding-seed existed rounded with --seed.
  const uint64_t rounding = r.metadata().count("rounding_seed") ? meta_u64(r, path, "rounding_seed") : st.seed;
  if (rounding != opt.rounding_seed())
    throw lowbit::error(lowbit::errc::invalid_argument,
                        "checkpoint '" + path + "' was trained with rounding seed " + std::to_string(rounding) +
                            ", this run uses " + std::to_string(opt.rounding_seed()) +
                            " (--rounding-seed, by default the --seed; the stochastic rounding would differ)");

  // Stage every weight (validated) before touching anything.
  const param_layout& L = *w.layout;
  std::vector<std::vector<uint8_t>> dense(L.params.size());
  std::vector<lowbit::quantized_tensor> quant(L.params.size());
  auto fail = [&](const std::string& name, const std::string& what) {
    throw lowbit::error(lowbit::errc::malformed_file, "checkpoint '" + path + "': weight '" + name + "' " + what);
  };
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (i.matrix && w.kind == matrix_storage::quantized) {
      lowbit::loaded_quantized q = lowbit::load_quantized(r, i.name);
      const lowbit::blockwise_layout& want = w.mq[size_t(i.slot)].layout;
      if (q.tensor.layout.fmt != want.fmt || q.tensor.layout.block_size != want.block_size ||
          q.tensor.layout.nested != want.nested || q.tensor.shape != i.shape)
        fail(i.name, "is stored in another quantized layout than this mode's");
      quant[p] = std::move(q.tensor);
      continue;
    }
    const lowbit::safetensors_tensor* t = r.find(i.name);
    if (!t) fail(i.name, "is missing");
    const lowbit::dtype want = (i.matrix && w.kind == matrix_storage::bf16) ? lowbit::dtype::bf16 : lowbit::dtype::f32;
    if (t->type != want) fail(i.name, "has dtype " + t->dtype_string + ", expected " + lowbit::dtype_name(want));
    if (t->shape != i.shape) fail(i.name, "has shape " + t->shape_string());
    dense[p].assign(t->data, t->data + t->nbytes);
  }
  opt.load(r);  // validates its whole part before writing
  for (size_t p = 0; p < L.params.size(); ++p) {
    const param_info& i = L.params[p];
    if (!i.matrix) {
      std::memcpy(w.vector(int(p)), dense[p].data(), dense[p].size());
    } else if (w.kind == matrix_storage::quantized) {
      lowbit::quantized_tensor& dst = w.mq[size_t(i.slot)];
      // Copy into the existing buffers: the optimizer holds views of them.
      std::copy(quant[p].codes.begin(), quant[p].codes.end(), dst.codes.begin());
      std::copy(quant[p].absmax.begin(), quant[p].absmax.end(), dst.absmax.begin());
      std::copy(quant[p].absmax_codes.begin(), quant[p].absmax_codes.end(), dst.absmax_codes.begin());
      std::copy(quant[p].nested_absmax.begin(), quant[p].nested_absmax.end(), dst.nested_absmax.begin());
      dst.nested_offset = quant[p].nested_offset;
    } else if (w.kind == matrix_storage::f32) {
      std::memcpy(w.m32.data() + i.offset, dense[p].data(), dense[p].size());
    } else {
      std::memcpy(w.m16.data() + i.offset, dense[p].data(), dense[p].size());
    }
  }
  return st;
}

}  // namespace llama
