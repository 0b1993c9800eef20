// lowbit/io/optimizer_state.hpp
// Saving and loading the state of a composed lowbit::optim::optimizer through
// safetensors, with bitsandbytes' per-parameter state_dict names. For a
// parameter registered under name N, with P the prefix ("optimizer." by
// default), the keys are:
//   P N.state1 / P N.state2  float32 or bfloat16 in the parameter's shape, or
//                            uint8 packed codes [code_bytes] for a blockwise
//                            state (state2 only for two-state rules)
//   P N.qmap1 / P N.qmap2    float32[256] (8-bit) or [16] (4-bit): the decode
//                            table of a blockwise state's format
//   P N.absmax1 / absmax2    float32[n_blocks] scales of a blockwise state
//   P N.step                 int64[1] updates applied (Adam's t)
//   P N.skipped              int64[1] updates skipped (non-finite gradients)
//   P N.master               float32 master weight (weights::fp32_master_bf16)
//   P step_count             int64[1] the optimizer's global step counter
// plus __metadata__ P lowbit_optimizer_state ("1"), P rule, P state_policy,
// P weight_policy, P memory_policy, P seed and P params (a JSON array naming
// every parameter in registration order with its element count, shape, group
// and the storage of each state: "float32", "bfloat16", or blockwise with
// format and block size). The caller's weights are not saved here (use
// safetensors_writer or save_quantized for them); only the optimizer-owned
// fp32 master copy is. Loading checks everything before writing a byte: the
// composition (rule, state policy, weight policy), the parameter count,
// names, order, sizes and shapes (errc::invalid_argument naming the mismatch, e.g.
// "state policy int8 in file, optimizer uses int4"), every key's presence,
// dtype and shape against the file's own metadata and the optimizer's
// storages (errc::malformed_file), and that every qmap is lowbit's table
// for the format, entry by entry within 4 float32 ulps (errc::invalid_argument;
// bitsandbytes' maps differ by up to 2 with the CPU that made them:
// io_detail::same_table_entry in bnb_quant_state.hpp). On any error the
// optimizer is left exactly as it was; after a load it continues exactly as
// a fresh optimizer loaded from the same file would, also when it had
// stepped past the checkpoint (a rollback). The memory policy, seed and parameter groups are
// recorded but not checked: states saved under one memory policy load into
// another, and hyperparameters and options stay the caller's (the same seed
// is needed for a bit-identical continuation). Save and load between steps,
// never inside begin_step() / end_step(). States of device-resident
// memory policies pass through the policy's copy_to_host / copy_from_host;
// a policy without them raises errc::unsupported.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../formats/format.hpp"
#include "../formats/layout.hpp"
#include "../optim/optimizer.hpp"
#include "bnb_quant_state.hpp"
#include "safetensors.hpp"

namespace lowbit {

// Version string stored under "<prefix>lowbit_optimizer_state".
constexpr const char* optimizer_state_version = "1";

// The composition of an optimizer type, for save / load.
template <class Opt>
struct optimizer_state_traits {
  static constexpr bool is_optimizer = false;
};

template <class Rule, class StatePolicy, class WeightPolicy, class MemoryPolicy>
struct optimizer_state_traits<optim::optimizer<Rule, StatePolicy, WeightPolicy, MemoryPolicy>> {
  static constexpr bool is_optimizer = true;
  using rule = Rule;
  using state_policy = StatePolicy;
  using weight_policy = WeightPolicy;
  using memory_policy = MemoryPolicy;
  // "fp32", "bf16+sr", "fp32-master+bf16", "quantized+sr:nf4", ...
  static std::string weight_policy_name() {
    std::string s = WeightPolicy::name;
    if constexpr (WeightPolicy::is_quantized) s += std::string(":") + format_name(WeightPolicy::weight_format);
    return s;
  }
};

namespace io_detail {

template <class P, class = void>
struct has_host_copies : std::false_type {};
template <class P>
struct has_host_copies<
    P, std::void_t<decltype(std::declval<const P&>().copy_to_host(std::declval<void*>(), std::declval<const void*>(),
                                                                  std::size_t())),
                   decltype(std::declval<P&>().copy_from_host(std::declval<void*>(), std::declval<const void*>(),
                                                              std::size_t()))>> : std::true_type {};

template <class Opt, class = void>
struct has_memory_policy_accessor : std::false_type {};
template <class Opt>
struct has_memory_policy_accessor<Opt, std::void_t<decltype(std::declval<Opt&>().memory_policy())>>
    : std::true_type {};

// Whether states of Opt can be read and written from the host: always for
// host-resident policies; for device-resident ones only through the policy
// object's copy_to_host / copy_from_host.
template <class Opt>
constexpr bool optimizer_states_host_reachable() {
  using M = typename optimizer_state_traits<Opt>::memory_policy;
  if constexpr (!M::runs_on_device) {
    return true;
  } else if constexpr (has_memory_policy_accessor<Opt>::value) {
    using P = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<Opt&>().memory_policy())>>;
    return has_host_copies<P>::value;
  } else {
    return false;
  }
}

template <class Opt>
void require_host_reachable(const char* action) {
  static_assert(optimizer_state_traits<Opt>::is_optimizer,
                "save_optimizer_state / load_optimizer_state take a lowbit::optim::optimizer<...>");
  if constexpr (!optimizer_states_host_reachable<Opt>())
    throw error(errc::unsupported, std::string(action) + " device-resident optimizer states is not supported yet" +
                                       " (memory::" + optimizer_state_traits<Opt>::memory_policy::name +
                                       " has no copy_to_host / copy_from_host)");
}

// Copies `bytes` of optimizer-owned memory to host `dst`.
template <class Opt>
void state_to_host(const Opt& opt, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  using M = typename optimizer_state_traits<Opt>::memory_policy;
  if constexpr (M::runs_on_device && optimizer_states_host_reachable<Opt>()) opt.memory_policy().copy_to_host(dst, src, bytes);
  else std::memcpy(dst, src, bytes);
}

// Copies `bytes` from host `src` into optimizer-owned memory.
template <class Opt>
void state_from_host(Opt& opt, void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  using M = typename optimizer_state_traits<Opt>::memory_policy;
  if constexpr (M::runs_on_device && optimizer_states_host_reachable<Opt>()) opt.memory_policy().copy_from_host(dst, src, bytes);
  else std::memcpy(dst, src, bytes);
}

// How one state is stored, as recorded in the metadata.
inline nlohmann::json storage_json(const optim::storage_view& s) {
  nlohmann::json j = nlohmann::json::object();
  j["storage"] = optim::storage_kind_name(s.kind);
  if (s.is_blockwise()) {
    j["format"] = format_name(s.q.layout.fmt);
    j["block_size"] = s.q.layout.block_size;
  }
  return j;
}

// Human description of a recorded storage: "float32", "dynamic8 blocks of
// 256". `j` may come from a file: only excerpts of it are shown.
inline std::string storage_description(const nlohmann::json& j) {
  // a short string as it is, anything else as an excerpt
  auto text = [](const nlohmann::json& v) {
    return v.is_string() && v.get_ref<const std::string&>().size() <= 40 ? v.get<std::string>() : json_excerpt(v);
  };
  if (!j.is_object()) return json_excerpt(j);
  auto st = j.find("storage");
  if (st == j.end() || !st->is_string()) return json_excerpt(j);
  if (st->get<std::string>() != "blockwise") return text(*st);
  auto f = j.find("format");
  auto b = j.find("block_size");
  return (f != j.end() ? text(*f) : std::string("?")) + " blocks of " + (b != j.end() ? text(*b) : std::string("?"));
}


inline std::vector<uint8_t> int64_bytes(int64_t v) {
  std::vector<uint8_t> b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}

inline std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Reads safetensors keys for one load, failing with the file's name.
struct state_file {
  const safetensors_reader& r;

  [[noreturn]] void malformed(const std::string& msg) const {
    throw error(errc::malformed_file, r.source() + ": " + msg);
  }
  [[noreturn]] void mismatch(const std::string& msg) const {
    throw error(errc::invalid_argument, r.source() + ": " + msg);
  }

  // The key, checked for dtype and exact shape.
  const safetensors_tensor& expect(const std::string& key, dtype t, const std::vector<int64_t>& shape) const {
    const safetensors_tensor* e = r.find(key);
    if (!e) malformed("missing key '" + key + "'");
    safetensors_tensor want;
    want.shape = shape;
    if (e->type != t)
      malformed("'" + key + "' has dtype " + e->dtype_string + ", expected " + safetensors_dtype_string(t) + " " +
                want.shape_string());
    if (e->shape != shape)
      malformed("'" + key + "' has shape " + e->shape_string() + " (" + std::to_string(e->nbytes) +
                " bytes), expected " + safetensors_dtype_string(t) + " " + want.shape_string());
    return *e;
  }

  int64_t counter(const std::string& key) const {
    const safetensors_tensor& t = expect(key, dtype::i64, {1});
    int64_t v = 0;
    std::memcpy(&v, t.data, 8);
    if (v < 0) malformed("'" + key + "' holds " + std::to_string(v) + ", a count must be >= 0");
    return v;
  }

  void absent(const std::string& key, const std::string& why) const {
    if (r.contains(key)) malformed("unexpected key '" + key + "' (" + why + ")");
  }
};

// What load_optimizer_state copies into one parameter once everything is checked.
struct param_load_plan {
  struct copy {
    void* dst;
    const uint8_t* src;
    std::size_t bytes;
  };
  std::vector<copy> copies;
  int64_t steps = 0, skipped = 0;
};

}  // namespace io_detail

// Adds the state of `opt` to `w` under `prefix` (see the top of this file for
// the keys). Host-resident states are borrowed: keep `opt` alive and do not
// step it until the writer has written; device-resident states are copied.
template <class Opt>
void save_optimizer_state(const Opt& opt, safetensors_writer& w, const std::string& prefix = "optimizer.") {
  using traits = optimizer_state_traits<Opt>;
  using M = typename traits::memory_policy;
  io_detail::require_host_reachable<Opt>("saving");
  constexpr int n_states = traits::rule::n_states;
  constexpr bool master = traits::weight_policy::has_master;

  // Every key and name first, so a conflict adds nothing to the writer.
  const std::string version_key = prefix + "lowbit_optimizer_state";
  std::set<std::string> names;
  std::vector<std::string> keys{prefix + "step_count"};
  for (int i = 0; i < opt.size(); ++i) {
    const optim::param_record& p = opt.param(i);
    require(names.insert(p.name).second, errc::invalid_argument,
            "save_optimizer_state: two parameters are named '" + p.name + "'; names must be unique to be saved");
    const std::string base = prefix + p.name + ".";
    for (int s = 1; s <= n_states; ++s) {
      const optim::storage_view& st = s == 1 ? p.state1 : p.state2;
      keys.push_back(base + "state" + std::to_string(s));
      if (st.is_blockwise()) {
        require(!st.q.layout.nested, errc::unsupported,
                "save_optimizer_state: state" + std::to_string(s) + " of '" + p.name +
                    "' has double-quantized scales, which optimizer checkpoints do not store");
        keys.push_back(base + "qmap" + std::to_string(s));
        keys.push_back(base + "absmax" + std::to_string(s));
      }
    }
    keys.push_back(base + "step");
    keys.push_back(base + "skipped");
    if (master) keys.push_back(base + "master");
  }
  std::set<std::string> unique;
  for (const std::string& k : keys) {
    require(!w.contains(k), errc::invalid_argument,
            "save_optimizer_state: the writer already holds a tensor named '" + k + "'");
    require(unique.insert(k).second, errc::invalid_argument,
            "save_optimizer_state: parameter names produce the key '" + k + "' twice");
  }

  // Host bytes of an optimizer-owned buffer: borrowed, or copied off the device.
  auto add_buffer = [&](const std::string& key, dtype t, std::vector<int64_t> shape, const void* data,
                        std::size_t bytes) {
    if constexpr (M::runs_on_device) {
      std::vector<uint8_t> host(bytes);
      io_detail::state_to_host(opt, host.data(), data, bytes);
      w.add_owned(key, t, std::move(shape), std::move(host));
    } else {
      (void)bytes;
      w.add(key, t, std::move(shape), data);
    }
  };

  nlohmann::json params = nlohmann::json::array();
  for (int i = 0; i < opt.size(); ++i) {
    const optim::param_record& p = opt.param(i);
    const std::string base = prefix + p.name + ".";
    nlohmann::json pj = nlohmann::json::object();
    pj["name"] = p.name;
    pj["numel"] = p.weight.n;
    pj["shape"] = p.shape;
    pj["group"] = p.group;
    for (int s = 1; s <= n_states; ++s) {
      const optim::storage_view& st = s == 1 ? p.state1 : p.state2;
      const std::string idx = std::to_string(s);
      pj["state" + idx] = io_detail::storage_json(st);
      if (st.is_blockwise()) {
        const blockwise_layout& l = st.q.layout;
        add_buffer(base + "state" + idx, dtype::u8, {l.code_bytes()}, st.q.codes, std::size_t(l.code_bytes()));
        const std::vector<float> map = stored_quant_map(l.fmt);
        w.add_owned(base + "qmap" + idx, dtype::f32, {int64_t(map.size())}, io_detail::float_bytes(map));
        add_buffer(base + "absmax" + idx, dtype::f32, {l.n_blocks()}, st.q.absmax, std::size_t(l.n_blocks()) * 4);
      } else {
        const dtype t = st.kind == optim::storage_kind::f32 ? dtype::f32 : dtype::bf16;
        require(st.kind == optim::storage_kind::f32 || st.kind == optim::storage_kind::bf16, errc::unsupported,
                "save_optimizer_state: state" + idx + " of '" + p.name + "' is stored as " +
                    optim::storage_kind_name(st.kind));
        add_buffer(base + "state" + idx, t, p.shape, st.data, std::size_t(st.bytes()));
      }
    }
    w.add_owned(base + "step", dtype::i64, {1}, io_detail::int64_bytes(p.steps));
    w.add_owned(base + "skipped", dtype::i64, {1}, io_detail::int64_bytes(p.skipped));
    if constexpr (master) {
      pj["master"] = true;
      add_buffer(base + "master", dtype::f32, p.shape, p.weight.data, std::size_t(p.weight.bytes()));
    }
    params.push_back(std::move(pj));
  }
  w.add_owned(prefix + "step_count", dtype::i64, {1}, io_detail::int64_bytes(opt.step_count()));
  w.set_metadata(version_key, optimizer_state_version);
  w.set_metadata(prefix + "rule", traits::rule::name);
  w.set_metadata(prefix + "state_policy", traits::state_policy::name);
  w.set_metadata(prefix + "weight_policy", traits::weight_policy_name());
  w.set_metadata(prefix + "memory_policy", M::name);
  w.set_metadata(prefix + "seed", std::to_string(opt.options().seed));
  w.set_metadata(prefix + "params", params.dump());
}

// Writes the state of `opt` alone to `path` atomically (temporary file,
// fsync, rename).
template <class Opt>
void save_optimizer_state(const Opt& opt, const std::string& path, const std::string& prefix = "optimizer.") {
  safetensors_writer w;
  save_optimizer_state(opt, w, prefix);
  w.write(path);
}

// Restores the state of `opt` from `r` (saved under `prefix` by an optimizer
// of the same rule, state policy and weight policy with the same parameters
// in the same order). Restores states, per-parameter step and skip counters,
// the global step count and the fp32 master weights; the caller restores its
// own weights. Validates the whole file first: on error nothing is changed.
template <class Opt>
void load_optimizer_state(Opt& opt, const safetensors_reader& r, const std::string& prefix = "optimizer.") {
  using traits = optimizer_state_traits<Opt>;
  io_detail::require_host_reachable<Opt>("loading");
  constexpr int n_states = traits::rule::n_states;
  constexpr bool master = traits::weight_policy::has_master;
  const io_detail::state_file f{r};
  const std::map<std::string, std::string>& meta = r.metadata();
  auto meta_at = [&](const std::string& k) -> const std::string& {
    auto it = meta.find(prefix + k);
    if (it == meta.end()) f.malformed("__metadata__ lacks '" + prefix + k + "'");
    return it->second;
  };

  // 1. The composition.
  const std::string version_key = prefix + "lowbit_optimizer_state";
  if (!meta.count(version_key))
    f.malformed("no lowbit optimizer state under prefix '" + prefix + "' (__metadata__ lacks '" + version_key + "')");
  if (meta.at(version_key) != optimizer_state_version)
    throw error(errc::unsupported, r.source() + ": optimizer state version '" + meta.at(version_key) +
                                       "' is not supported (this lowbit reads version " + optimizer_state_version +
                                       ")");
  auto compare = [&](const char* what, const std::string& key, const std::string& mine) {
    const std::string& theirs = meta_at(key);
    if (theirs != mine) f.mismatch(std::string(what) + " " + theirs + " in file, optimizer uses " + mine);
  };
  compare("rule", "rule", traits::rule::name);
  compare("state policy", "state_policy", traits::state_policy::name);
  compare("weight policy", "weight_policy", traits::weight_policy_name());

  // 2. The parameters, in registration order.
  const std::string& params_text = meta_at("params");
  const auto* params_bytes = reinterpret_cast<const uint8_t*>(params_text.data());
  const nlohmann::json params = io_detail::parse_json(params_bytes, params_bytes + params_text.size(),
                                                      r.source() + ": __metadata__ '" + prefix + "params'");
  if (!params.is_array()) f.malformed("__metadata__ '" + prefix + "params' is not a JSON array");
  if (int64_t(params.size()) != opt.size())
    f.mismatch("file holds " + std::to_string(params.size()) + " parameters under '" + prefix + "', optimizer has " +
               std::to_string(opt.size()));

  const int64_t step_count = f.counter(prefix + "step_count");
  std::vector<io_detail::param_load_plan> plans(size_t(opt.size()));
  for (int i = 0; i < opt.size(); ++i) {
    const optim::param_record& p = opt.param(i);
    const nlohmann::json& pj = params[size_t(i)];
    const std::string pos = "parameter " + std::to_string(i);
    if (!pj.is_object()) f.malformed("__metadata__ '" + prefix + "params': entry " + std::to_string(i) + " is not an object");
    auto field = [&](const char* k) -> const nlohmann::json& {
      auto it = pj.find(k);
      if (it == pj.end()) f.malformed("__metadata__ '" + prefix + "params': " + pos + " lacks \"" + k + "\"");
      return *it;
    };
    const nlohmann::json& jn = field("name");
    if (!jn.is_string()) f.malformed("__metadata__ '" + prefix + "params': " + pos + " has a non-string name");
    const std::string name = jn.get<std::string>();
    if (name != p.name) f.mismatch(pos + " is '" + name + "' in file, optimizer has '" + p.name + "'");
    const std::string what = "parameter '" + p.name + "'";
    const int64_t numel = io_detail::json_nonneg_int(field("numel"));
    if (numel < 0) f.malformed("__metadata__ '" + prefix + "params': " + what + " has an invalid numel");
    if (numel != p.weight.n)
      f.mismatch(what + " has " + std::to_string(numel) + " elements in file, optimizer has " +
                 std::to_string(p.weight.n));
    const nlohmann::json& js = field("shape");
    std::vector<int64_t> shape;
    int64_t prod = 1;
    if (!js.is_array()) f.malformed("__metadata__ '" + prefix + "params': " + what + " has a non-array shape");
    for (const nlohmann::json& d : js) {
      const int64_t s = io_detail::json_nonneg_int(d);
      if (s < 0 || !io_detail::mul_checked(prod, s, prod))
        f.malformed("__metadata__ '" + prefix + "params': " + what + " has an invalid shape (entry " +
                    std::to_string(shape.size()) + " is " + io_detail::json_excerpt(d) + ")");
      shape.push_back(s);
    }
    if (prod != numel)
      f.malformed("__metadata__ '" + prefix + "params': " + what + " has shape " + io_detail::shape_string(shape) +
                  " but numel " + std::to_string(numel));
    // Same element count is not enough: a [4, 8] state is not a [8, 4] one.
    if (shape != p.shape)
      f.mismatch(what + " has shape " + io_detail::shape_string(shape) + " in file, optimizer has " +
                 io_detail::shape_string(p.shape));

    const std::string base = prefix + p.name + ".";
    io_detail::param_load_plan& plan = plans[size_t(i)];
    for (int s = 1; s <= 2; ++s) {
      const std::string idx = std::to_string(s);
      if (s > n_states) {
        for (const char* k : {"state", "qmap", "absmax"})
          f.absent(base + k + idx, std::string("rule ") + traits::rule::name + " keeps one state");
        continue;
      }
      const optim::storage_view& st = s == 1 ? p.state1 : p.state2;
      const nlohmann::json mine = io_detail::storage_json(st);
      const nlohmann::json& theirs = field(("state" + idx).c_str());
      if (theirs != mine)
        f.mismatch("state" + idx + " of " + what + " is " + io_detail::storage_description(theirs) +
                   " in file, optimizer uses " + io_detail::storage_description(mine));
      if (st.is_blockwise()) {
        const blockwise_layout& l = st.q.layout;
        if (l.nested)
          throw error(errc::unsupported, "load_optimizer_state: state" + idx + " of " + what +
                                             " has double-quantized scales, which optimizer checkpoints do not store");
        const safetensors_tensor& codes = f.expect(base + "state" + idx, dtype::u8, {l.code_bytes()});
        const std::vector<float> want = stored_quant_map(l.fmt);
        const std::vector<float> got =
            f.expect(base + "qmap" + idx, dtype::f32, {int64_t(want.size())}).template to_vector<float>();
        for (std::size_t c = 0; c < want.size(); ++c)
          if (!io_detail::same_table_entry(got[c], want[c]))
            f.mismatch("'" + base + "qmap" + idx + "' differs from lowbit's " + format_name(l.fmt) +
                       " table at entry " + std::to_string(c) + " (file " + nlohmann::json(double(got[c])).dump() +
                       ", lowbit " + nlohmann::json(double(want[c])).dump() + ")");
        const safetensors_tensor& absmax = f.expect(base + "absmax" + idx, dtype::f32, {l.n_blocks()});
        const std::vector<float> scales = absmax.template to_vector<float>();
        for (std::size_t b = 0; b < scales.size(); ++b)
          if (!(std::isfinite(scales[b]) && scales[b] >= 0.0f))
            f.malformed("'" + base + "absmax" + idx + "' block " + std::to_string(b) + " holds " +
                        nlohmann::json(double(scales[b])).dump() + ", scales must be finite and >= 0");
        plan.copies.push_back({st.q.codes, codes.data, codes.nbytes});
        plan.copies.push_back({st.q.absmax, absmax.data, absmax.nbytes});
      } else {
        const dtype t = st.kind == optim::storage_kind::f32 ? dtype::f32 : dtype::bf16;
        const safetensors_tensor& data = f.expect(base + "state" + idx, t, shape);
        if (int64_t(data.nbytes) != st.bytes())
          f.malformed("'" + base + "state" + idx + "' holds " + std::to_string(data.nbytes) + " bytes, the state needs " +
                      std::to_string(st.bytes()));
        f.absent(base + "qmap" + idx, "state" + idx + " is not blockwise");
        f.absent(base + "absmax" + idx, "state" + idx + " is not blockwise");
        plan.copies.push_back({st.data, data.data, data.nbytes});
      }
    }
    if constexpr (master) {
      const safetensors_tensor& m = f.expect(base + "master", dtype::f32, shape);
      plan.copies.push_back({p.weight.data, m.data, m.nbytes});
    } else {
      f.absent(base + "master", std::string("weight policy ") + traits::weight_policy_name() + " has no fp32 master");
    }
    plan.steps = f.counter(base + "step");
    plan.skipped = f.counter(base + "skipped");
  }

  // 3. Everything checked: write.
  for (int i = 0; i < opt.size(); ++i) {
    const io_detail::param_load_plan& plan = plans[size_t(i)];
    for (const io_detail::param_load_plan::copy& c : plan.copies) io_detail::state_from_host(opt, c.dst, c.src, c.bytes);
    optim::param_record& p = opt.param_mutable(i);
    p.steps = plan.steps;
    p.skipped = plan.skipped;
    // The step-numbers at which apply() last counted `steps` and `skipped`
    // are not saved: reset them as a fresh optimizer has them. Left as they
    // were, an optimizer rolled back to an earlier step would find the next
    // step "already counted" and use the wrong bias-correction t.
    p.counted_step = p.previous_counted_step = p.skip_step = 0;
  }
  opt.set_step_count(step_count);
}

// Restores the state of `opt` from the safetensors file at `path`.
template <class Opt>
void load_optimizer_state(Opt& opt, const std::string& path, const std::string& prefix = "optimizer.") {
  const safetensors_reader r = safetensors_reader::open(path);
  load_optimizer_state(opt, r, prefix);
}

}  // namespace lowbit
