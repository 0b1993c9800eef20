// capi/src/optimizer_api.cpp
// The C entry points for optimizers: create one by composition name from the
// table of instantiated compositions (erased_optimizer.hpp), register the
// caller's weights, step (whole or per tensor), report memory, save and load
// states. Every call checks its arguments before it changes anything.
#include <set>
#include <sstream>

#include "c_api_support.hpp"
#include "erased_optimizer.hpp"

using namespace lowbit_capi;

struct lowbit_c_optimizer {
  std::unique_ptr<erased_optimizer> impl;
  std::string composition;
};

namespace {

const composition_table& compositions() {
  static const composition_table table = [] {
    composition_table t;
    add_adamw_compositions(t);
    add_adam_compositions(t);
    add_lion_compositions(t);
    add_sgd_compositions(t);
#ifdef LOWBIT_C_WITH_CUDA
    add_device_adamw_compositions(t);
    add_device_adam_compositions(t);
    add_device_lion_compositions(t);
    add_device_sgd_compositions(t);
#endif
    return t;
  }();
  return table;
}

const std::string& composition_list() {
  static const std::string list = [] {
    std::string s;
    for (const auto& kv : compositions()) s += (s.empty() ? "" : " ") + kv.first;
    return s;
  }();
  return list;
}

// Part `part` (0 rule, 1 states, 2 weights, 3 memory) of a composition name.
std::string part_of(const std::string& key, int part) {
  std::stringstream ss(key);
  std::string piece;
  for (int i = 0; i <= part; ++i) std::getline(ss, piece, '/');
  return piece;
}

// The values of one part that some composition has, for error messages
// ("rule 'adamx' is not one of adam, adamw, lion, sgd").
std::set<std::string> choices(int part) {
  std::set<std::string> seen;
  for (const auto& kv : compositions()) seen.insert(part_of(kv.first, part));
  return seen;
}

std::string joined(const std::set<std::string>& s) {
  std::string out;
  for (const std::string& v : s) out += (out.empty() ? "" : ", ") + v;
  return out;
}

erased_optimizer& impl_of(lowbit_c_optimizer* opt) {
  require_pointer(opt, "optimizer");
  return *opt->impl;
}
const erased_optimizer& impl_of(const lowbit_c_optimizer* opt) {
  require_pointer(opt, "optimizer");
  return *opt->impl;
}

void fill_report(const lowbit::optim::step_report& r, lowbit_c_step_report* out) {
  if (!out) return;
  out->step = r.step;
  out->grad_norm = r.grad_norm;
  out->grad_scale = r.grad_scale;
  out->skipped = r.skipped;
}

std::string name_or_empty(const char* name) { return name ? std::string(name) : std::string(); }

}  // namespace

extern "C" {

const char* lowbit_c_optimizer_compositions(void) { return composition_list().c_str(); }

int lowbit_c_optimizer_create(const lowbit_c_optimizer_config* config, lowbit_c_optimizer** out) {
  return guarded([&] {
    require_pointer(out, "lowbit_c_optimizer_create: out");
    *out = nullptr;
    require_pointer(config, "lowbit_c_optimizer_create: config");
    require_pointer(config->rule, "optimizer config: rule");
    require_pointer(config->states, "optimizer config: states");
    require_pointer(config->weights, "optimizer config: weights");
    const std::string memory = config->memory ? config->memory : "host";
    const std::string key = std::string(config->rule) + "/" + config->states + "/" + config->weights + "/" + memory;
    const auto it = compositions().find(key);
    if (it == compositions().end()) {
      const std::string parts[4] = {config->rule, config->states, config->weights, memory};
      const char* part_names[4] = {"rule", "states", "weights", "memory"};
      if (memory == "device" && !built_with_cuda())
        throw lowbit::error(lowbit::errc::unsupported,
                            "optimizer config: memory 'device' needs CUDA, and this build of liblowbit_c has no CUDA "
                            "support (built without nvcc)");
      for (int p = 0; p < 4; ++p) {
        const std::set<std::string> known = choices(p);
        lowbit::require(known.count(parts[p]) != 0, lowbit::errc::invalid_argument,
                        std::string("optimizer config: ") + part_names[p] + " '" + parts[p] + "' is not one of " +
                            joined(known));
      }
      throw lowbit::error(lowbit::errc::unsupported,
                          "optimizer composition '" + key + "' is not instantiated in liblowbit_c (available: " +
                              composition_list() + ")");
    }
    lowbit::optim::optimizer_options options;
    options.seed = config->seed;
    options.max_grad_norm = config->max_grad_norm;
    options.max_update = config->max_update;
    options.stable_weight_scales = config->stable_weight_scales != 0;
    options.check_gradients = config->check_gradients != 0;
    auto made = std::make_unique<lowbit_c_optimizer>();
    made->impl = it->second(config->hparams, options);  // validates hparams and options
    made->composition = key;
    *out = made.release();
  });
}

void lowbit_c_optimizer_destroy(lowbit_c_optimizer* opt) { delete opt; }

const char* lowbit_c_optimizer_composition(const lowbit_c_optimizer* opt) {
  return opt ? opt->composition.c_str() : "";
}

int lowbit_c_optimizer_set_stream(lowbit_c_optimizer* opt, void* stream) {
  return guarded([&] { impl_of(opt).set_stream(stream); });
}

int lowbit_c_optimizer_add_group(lowbit_c_optimizer* opt, const lowbit_c_hparams* hparams, int32_t* index) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(hparams, "add_group: hparams");
    require_pointer(index, "add_group: index");
    *index = o.add_group(*hparams);
  });
}

int lowbit_c_optimizer_set_hparams(lowbit_c_optimizer* opt, int32_t group, const lowbit_c_hparams* hparams) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(hparams, "set_hparams: hparams");
    lowbit::require(group >= 0 && group < o.groups(), lowbit::errc::invalid_argument,
                    "set_hparams: no parameter group " + std::to_string(group));
    o.set_hparams(group, *hparams);
  });
}

int lowbit_c_optimizer_get_hparams(const lowbit_c_optimizer* opt, int32_t group, lowbit_c_hparams* hparams) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(hparams, "get_hparams: hparams");
    lowbit::require(group >= 0 && group < o.groups(), lowbit::errc::invalid_argument,
                    "get_hparams: no parameter group " + std::to_string(group));
    *hparams = o.get_hparams(group);
  });
}

int lowbit_c_optimizer_add_param(lowbit_c_optimizer* opt, const DLTensor* weight, int32_t group, const char* name,
                                 int32_t* index) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(index, "add_param: index");
    const lowbit::tensor_view w = view_on(o.where(), weight, "add_param: weight");
    *index = o.add_param(w, group, name_or_empty(name));
  });
}

int lowbit_c_optimizer_add_quantized_param(lowbit_c_optimizer* opt, const lowbit_c_quantized* weight, int32_t group,
                                           const char* name, int32_t* index) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(index, "add_quantized_param: index");
    const lowbit::quantized_view w = quantized_view_of(o.where(), weight, "add_quantized_param: weight");
    *index = o.add_param(w, group, name_or_empty(name));
  });
}

int lowbit_c_optimizer_size(const lowbit_c_optimizer* opt, int32_t* count) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(count, "size: count");
    *count = o.size();
  });
}

int lowbit_c_optimizer_param_info(const lowbit_c_optimizer* opt, int32_t index, lowbit_c_param_info* info) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(info, "param_info: info");
    const lowbit::optim::param_record& r = o.param(index);
    info->numel = r.weight.n;
    info->group = r.group;
    info->steps = r.steps;
    info->skipped = r.skipped;
  });
}

int lowbit_c_optimizer_step(lowbit_c_optimizer* opt, const DLTensor* const* grads, int32_t count,
                            lowbit_c_step_report* report) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    lowbit::require(count == o.size(), lowbit::errc::invalid_argument,
                    "step: " + std::to_string(count) + " gradients for " + std::to_string(o.size()) + " parameters");
    lowbit::require(count == 0 || grads != nullptr, lowbit::errc::invalid_argument, "step: grads is NULL");
    std::vector<lowbit::tensor_view> views;
    views.reserve(size_t(count));
    for (int32_t i = 0; i < count; ++i)
      views.push_back(view_on(o.where(), grads[i], "step: gradient " + std::to_string(i) + " ('" + o.param(i).name + "')"));
    fill_report(o.step(views), report);
  });
}

int lowbit_c_optimizer_begin_step(lowbit_c_optimizer* opt) {
  return guarded([&] { impl_of(opt).begin_step(); });
}

int lowbit_c_optimizer_step_param(lowbit_c_optimizer* opt, int32_t index, const DLTensor* grad, float grad_scale,
                                  int32_t* applied) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    const lowbit::optim::param_record& r = o.param(index);
    const lowbit::tensor_view g = view_on(o.where(), grad, "step_param: gradient of '" + r.name + "'");
    const bool done = o.step_param(index, g, grad_scale);
    if (applied) *applied = done ? 1 : 0;
  });
}

int lowbit_c_optimizer_end_step(lowbit_c_optimizer* opt, lowbit_c_step_report* report) {
  return guarded([&] {
    fill_report(impl_of(opt).end_step(), report);
    if (report) report->grad_norm = -1.0;  // a per-tensor step computes no global norm
  });
}

int lowbit_c_optimizer_memory(const lowbit_c_optimizer* opt, lowbit_c_memory_report* report) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(report, "memory: report");
    const lowbit::optim::memory_report m = o.memory();
    report->params = m.params;
    report->weight_bytes = m.weight_bytes;
    report->master_bytes = m.master_bytes;
    report->state_bytes = m.state_bytes;
  });
}

int lowbit_c_optimizer_save(const lowbit_c_optimizer* opt, const char* path) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(path, "save: path");
    o.save(path);
  });
}

int lowbit_c_optimizer_load(lowbit_c_optimizer* opt, const char* path) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(path, "load: path");
    o.load(path);
  });
}

int lowbit_c_optimizer_save_to_memory(const lowbit_c_optimizer* opt, void* buffer, uint64_t capacity,
                                      uint64_t* size) {
  return guarded([&] {
    const erased_optimizer& o = impl_of(opt);
    require_pointer(size, "save_to_memory: size");
    const std::size_t need = o.save_to_memory(buffer, std::size_t(capacity));
    *size = uint64_t(need);
    if (buffer && capacity < need)
      throw lowbit::error(lowbit::errc::invalid_argument,
                          "save_to_memory: buffer of " + std::to_string(capacity) + " bytes, the state image needs " +
                              std::to_string(need) + " (nothing written)");
  });
}

int lowbit_c_optimizer_load_from_memory(lowbit_c_optimizer* opt, const void* data, uint64_t size) {
  return guarded([&] {
    erased_optimizer& o = impl_of(opt);
    require_pointer(data, "load_from_memory: data");
    o.load_from_memory(data, std::size_t(size));
  });
}

}  // extern "C"
