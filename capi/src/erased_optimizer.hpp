// capi/src/erased_optimizer.hpp
// A run-time face for lowbit's compile-time optimizer compositions. The C
// interface names its composition by strings ("adamw" / "int8" / "fp32"),
// so liblowbit_c instantiates a bounded set of
// optimizer<Rule, StatePolicy, WeightPolicy> types and reaches each through
// one virtual interface (erased_optimizer); erased<Opt> forwards every call
// to the real optimizer. The table of compositions (composition_table) is
// filled by one translation unit per rule (optimizers_<rule>.cpp), so the
// instantiations compile in parallel.
#pragma once

#include <lowbit/lowbit.hpp>
#include <lowbit/io/optimizer_state.hpp>

#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "c_api_support.hpp"
#include "lowbit_c.h"

namespace lowbit_capi {

class erased_optimizer {
 public:
  virtual ~erased_optimizer() = default;
  // Where its weights, gradients and states live: host (memory::host) or
  // the GPU (memory::device).
  virtual side where() const = 0;
  // memory::device: the stream its steps run on (a cudaStream_t).
  virtual void set_stream(void* stream) = 0;
  virtual int add_group(const lowbit_c_hparams& h) = 0;
  virtual void set_hparams(int group, const lowbit_c_hparams& h) = 0;
  virtual lowbit_c_hparams get_hparams(int group) const = 0;
  virtual int groups() const = 0;
  virtual bool quantized_weights() const = 0;
  virtual int add_param(const lowbit::tensor_view& w, int group, const std::string& name) = 0;
  virtual int add_param(const lowbit::quantized_view& w, int group, const std::string& name) = 0;
  virtual int size() const = 0;
  virtual const lowbit::optim::param_record& param(int i) const = 0;
  virtual lowbit::optim::step_report step(const std::vector<lowbit::tensor_view>& grads) = 0;
  virtual int64_t begin_step() = 0;
  virtual bool step_param(int i, const lowbit::tensor_view& grad, float grad_scale) = 0;
  virtual lowbit::optim::step_report end_step() = 0;
  virtual lowbit::optim::memory_report memory() const = 0;
  virtual void save(const std::string& path) const = 0;
  virtual void load(const std::string& path) = 0;
  // save()'s file image: written into `buffer` when `capacity` holds it
  // (buffer may be null for a size query); returns its size either way.
  virtual std::size_t save_to_memory(void* buffer, std::size_t capacity) const = 0;
  virtual void load_from_memory(const void* data, std::size_t size) = 0;
};

// lowbit_c_hparams <-> Rule::hparams: copies the fields Rule has (the two
// structs share the field names, so one function serves both directions).
template <class Rule, class To, class From>
void copy_rule_fields(To& to, const From& from) {
  to.lr = from.lr;
  to.weight_decay = from.weight_decay;
  if constexpr (std::is_same<Rule, lowbit::optim::sgd_momentum>::value) {
    to.momentum = from.momentum;
  } else {
    to.beta1 = from.beta1;
    to.beta2 = from.beta2;
    if constexpr (!std::is_same<Rule, lowbit::optim::lion>::value) to.eps = from.eps;
  }
}

template <class Rule>
typename Rule::hparams rule_hparams(const lowbit_c_hparams& c) {
  typename Rule::hparams h;
  copy_rule_fields<Rule>(h, c);
  return h;
}

template <class Rule>
lowbit_c_hparams c_hparams(const typename Rule::hparams& h) {
  lowbit_c_hparams c{};
  copy_rule_fields<Rule>(c, h);
  return c;
}

template <class Opt>
class erased final : public erased_optimizer {
  using Rule = typename Opt::rule;
  static constexpr bool quantized = std::is_same<typename Opt::weight_arg, lowbit::quantized_view>::value;
  using Memory = std::decay_t<decltype(std::declval<Opt&>().memory_policy())>;
  static constexpr bool on_device = Memory::runs_on_device;

 public:
  erased(const lowbit_c_hparams& h, const lowbit::optim::optimizer_options& o) : opt_(rule_hparams<Rule>(h), o) {}

  side where() const override { return on_device ? side::cuda : side::host; }
  void set_stream(void* stream) override {
    if constexpr (on_device) {
      opt_.memory_policy().stream = static_cast<decltype(opt_.memory_policy().stream)>(stream);
    } else {
      (void)stream;
      throw lowbit::error(lowbit::errc::invalid_argument,
                          "set_stream: this optimizer steps on CPU threads (memory host); streams are for device "
                          "optimizers");
    }
  }
  int add_group(const lowbit_c_hparams& h) override {
    const int g = opt_.add_group(rule_hparams<Rule>(h));
    group_count_ = g + 1;
    return g;
  }
  void set_hparams(int group, const lowbit_c_hparams& h) override {
    const typename Rule::hparams r = rule_hparams<Rule>(h);
    r.validate();  // before anything changes
    opt_.group(group) = r;
  }
  lowbit_c_hparams get_hparams(int group) const override {
    return c_hparams<Rule>(const_cast<Opt&>(opt_).group(group));
  }
  int groups() const override { return group_count_; }
  bool quantized_weights() const override { return quantized; }
  int add_param(const lowbit::tensor_view& w, int group, const std::string& name) override {
    if constexpr (quantized) {
      (void)w, (void)group, (void)name;
      throw lowbit::error(lowbit::errc::invalid_argument,
                          "add_param: this optimizer updates quantized weights; pass a quantized tensor");
    } else {
      return opt_.add_param(w, group, name);
    }
  }
  int add_param(const lowbit::quantized_view& w, int group, const std::string& name) override {
    if constexpr (quantized) {
      return opt_.add_param(w, group, name);
    } else {
      (void)w, (void)group, (void)name;
      throw lowbit::error(lowbit::errc::invalid_argument,
                          "add_quantized_param: this optimizer updates dense weights (fp32 / bf16); pass a dense "
                          "tensor, or create the optimizer with a quantized weight format");
    }
  }
  int size() const override { return opt_.size(); }
  const lowbit::optim::param_record& param(int i) const override {
    lowbit::require(i >= 0 && i < opt_.size(), lowbit::errc::invalid_argument,
                    "parameter index " + std::to_string(i) + " is out of range (the optimizer has " +
                        std::to_string(opt_.size()) + ")");
    return opt_.param(i);
  }
  lowbit::optim::step_report step(const std::vector<lowbit::tensor_view>& grads) override { return opt_.step(grads); }
  int64_t begin_step() override { return opt_.begin_step(); }
  bool step_param(int i, const lowbit::tensor_view& grad, float grad_scale) override {
    return opt_.step_param(i, grad, grad_scale);
  }
  lowbit::optim::step_report end_step() override { return opt_.end_step(); }
  lowbit::optim::memory_report memory() const override { return opt_.memory(); }
  void save(const std::string& path) const override { lowbit::save_optimizer_state(opt_, path); }
  void load(const std::string& path) override { lowbit::load_optimizer_state(opt_, path); }
  std::size_t save_to_memory(void* buffer, std::size_t capacity) const override {
    lowbit::safetensors_writer w;
    lowbit::save_optimizer_state(opt_, w);
    const std::size_t size = w.file_size();
    if (buffer && capacity >= size) w.write_to(buffer, capacity);
    return size;
  }
  void load_from_memory(const void* data, std::size_t size) override {
    lowbit::load_optimizer_state(opt_, lowbit::safetensors_reader::parse(data, size, "optimizer state image"));
  }

 private:
  Opt opt_;
  int group_count_ = 1;  // group 0 is made by the constructor
};

using optimizer_factory = std::unique_ptr<erased_optimizer> (*)(const lowbit_c_hparams&,
                                                                const lowbit::optim::optimizer_options&);

template <class Opt>
std::unique_ptr<erased_optimizer> make_erased(const lowbit_c_hparams& h, const lowbit::optim::optimizer_options& o) {
  return std::unique_ptr<erased_optimizer>(new erased<Opt>(h, o));
}

// "rule/states/weights/memory" -> factory, ordered by name.
using composition_table = std::map<std::string, optimizer_factory>;

// One per rule and memory policy, each in its own translation unit
// (optimizers_<rule>.cpp; optimizers_device_<rule>.cu in CUDA builds).
void add_adamw_compositions(composition_table& t);
void add_adam_compositions(composition_table& t);
void add_lion_compositions(composition_table& t);
void add_sgd_compositions(composition_table& t);
void add_device_adamw_compositions(composition_table& t);
void add_device_adam_compositions(composition_table& t);
void add_device_lion_compositions(composition_table& t);
void add_device_sgd_compositions(composition_table& t);

// Registers Rule under Memory (named `memory`) with every state policy over
// the dense weight policies.
template <class Rule, class Memory>
void add_dense_compositions(composition_table& t, const std::string& rule, const std::string& memory) {
  namespace o = lowbit::optim;
  auto dense = [&](auto states, const std::string& state_name) {
    using S = decltype(states);
    const std::string prefix = rule + "/" + state_name + "/";
    t[prefix + "fp32/" + memory] = &make_erased<o::optimizer<Rule, S, o::weights::fp32, Memory>>;
    t[prefix + "bf16/" + memory] = &make_erased<o::optimizer<Rule, S, o::weights::bf16, Memory>>;
    t[prefix + "fp32_master_bf16/" + memory] = &make_erased<o::optimizer<Rule, S, o::weights::fp32_master_bf16, Memory>>;
  };
  dense(o::states::fp32{}, "fp32");
  dense(o::states::bf16{}, "bf16");
  dense(o::states::int8{}, "int8");
  dense(o::states::int4{}, "int4");
}

// Registers Rule under Memory with 8-bit states over quantized weights of
// every format the weight policy accepts (QFT's int8, NF4, int4, FP4).
template <class Rule, class Memory>
void add_quantized_compositions(composition_table& t, const std::string& rule, const std::string& memory) {
  namespace o = lowbit::optim;
  using lowbit::format;
  const std::string prefix = rule + "/int8/";
  t[prefix + "int8/" + memory] = &make_erased<o::optimizer<Rule, o::states::int8, o::weights::quantized<format::int8>, Memory>>;
  t[prefix + "nf4/" + memory] = &make_erased<o::optimizer<Rule, o::states::int8, o::weights::quantized<format::nf4>, Memory>>;
  t[prefix + "int4/" + memory] = &make_erased<o::optimizer<Rule, o::states::int8, o::weights::quantized<format::int4>, Memory>>;
  t[prefix + "fp4/" + memory] = &make_erased<o::optimizer<Rule, o::states::int8, o::weights::quantized<format::fp4>, Memory>>;
}

}  // namespace lowbit_capi
