// GPU optimizer steps against the CPU executor: for a spread of rules, state
// policies and weight policies, N steps with memory::device, memory::paged
// (with and without eviction) and memory::cpu_offload must leave weights and
// states bit-identical to memory::host given the same inputs; gradient
// statistics must match bit for bit; a non-finite gradient is skipped on the
// GPU with everything untouched.
#include <doctest/doctest.h>

#include <lowbit/lowbit.cuh>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "device_buffer.cuh"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

std::vector<float> normal(size_t n, unsigned seed, float sd = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

// Bytes of a storage, fetched from wherever it lives.
std::vector<uint8_t> fetch(const void* p, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  if (bytes) LOWBIT_CUDA_CHECK(cudaMemcpy(out.data(), p, bytes, cudaMemcpyDefault));
  return out;
}

std::vector<uint8_t> fetch_storage(const storage_view& s) {
  if (s.kind == storage_kind::none) return {};
  if (!s.is_blockwise()) return fetch(s.data, size_t(s.bytes()));
  std::vector<uint8_t> a = fetch(s.q.codes, size_t(s.q.layout.code_bytes()));
  std::vector<uint8_t> b = s.q.layout.nested ? fetch(s.q.absmax_codes, size_t(s.q.layout.n_blocks()))
                                             : fetch(s.q.absmax, size_t(s.q.layout.n_blocks()) * 4);
  a.insert(a.end(), b.begin(), b.end());
  if (s.q.layout.nested) {
    std::vector<uint8_t> c = fetch(s.q.nested_absmax, size_t(s.q.layout.n_nested_blocks()) * 4), d = fetch(s.q.nested_offset, 4);
    a.insert(a.end(), c.begin(), c.end());
    a.insert(a.end(), d.begin(), d.end());
  }
  return a;
}

template <class Opt>
std::vector<uint8_t> fetch_all(const Opt& o) {
  std::vector<uint8_t> out;
  for (int i = 0; i < o.size(); ++i)
    for (const storage_view* s : {&o.param(i).weight, &o.param(i).weight_copy, &o.param(i).state1, &o.param(i).state2}) {
      std::vector<uint8_t> b = fetch_storage(*s);
      out.insert(out.end(), b.begin(), b.end());
    }
  return out;
}

constexpr int sizes[] = {5000, 1000, 70001};  // quantized states, fp32 fallback, odd large

// Runs `steps` steps with dense weights of dtype T on memory policy M.
template <class Rule, class S, class W, class M, class T>
std::vector<uint8_t> run_dense(int steps, const typename Rule::hparams& h, optimizer_options o,
                               void (*configure)(M&) = nullptr) {
  optimizer<Rule, S, W, M> opt(h, o);
  if (configure) configure(opt.memory_policy());
  const bool on_gpu = !std::is_same<M, memory::host>::value;
  std::vector<std::vector<T>> host_w;
  std::vector<std::unique_ptr<device_buffer<T>>> dev_w;
  for (int k = 0; k < 3; ++k) {
    std::vector<float> init = normal(size_t(sizes[k]), unsigned(10 + k), 0.2f);
    std::vector<T> w(init.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = from_float<T>(init[i]);
    host_w.push_back(w);
    if (on_gpu) {
      dev_w.push_back(std::make_unique<device_buffer<T>>(w.size()));
      dev_w.back()->upload(w);
      opt.add_param(make_flat_view(dev_w.back()->ptr, sizes[k], device::cuda()), 0, "w" + std::to_string(k));
    } else {
      opt.add_param(make_flat_view(host_w.back().data(), sizes[k]), 0, "w" + std::to_string(k));
    }
  }
  std::vector<std::unique_ptr<device_buffer<float>>> dev_g;
  for (int t = 0; t < steps; ++t) {
    std::vector<tensor_view> grads;
    std::vector<std::vector<float>> host_g;
    for (int k = 0; k < 3; ++k) host_g.push_back(normal(size_t(sizes[k]), unsigned(1000 * t + k)));
    dev_g.clear();
    for (int k = 0; k < 3; ++k) {
      if (on_gpu) {
        dev_g.push_back(std::make_unique<device_buffer<float>>(host_g[size_t(k)].size()));
        dev_g.back()->upload(host_g[size_t(k)]);
        grads.push_back(make_flat_view(dev_g.back()->ptr, sizes[k], device::cuda()));
      } else {
        grads.push_back(make_flat_view(host_g[size_t(k)].data(), sizes[k]));
      }
    }
    opt.step(grads);
  }
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  return fetch_all(opt);
}

template <class Rule, class S, class W>
void dense_all_policies(const typename Rule::hparams& h, optimizer_options o) {
  using T = std::conditional_t<W::weight_dtype == dtype::f32, float, bf16>;
  const std::vector<uint8_t> ref = run_dense<Rule, S, W, memory::host, T>(4, h, o);
  CHECK(run_dense<Rule, S, W, memory::device, T>(4, h, o) == ref);
  // states carved from 64 KiB slabs: the small tensors' arrays share
  // slabs, the 70001-element ones get their own (over half a slab)
  CHECK(run_dense<Rule, S, W, memory::device, T>(4, h, o, [](memory::device& d) { d.slab_bytes = 64 << 10; }) == ref);
  CHECK(run_dense<Rule, S, W, memory::paged, T>(4, h, o) == ref);
  CHECK(run_dense<Rule, S, W, memory::paged, T>(4, h, o, [](memory::paged& p) { p.evict_after_step = true; }) == ref);
  CHECK(run_dense<Rule, S, W, memory::cpu_offload, T>(4, h, o) == ref);
}

template <class Rule, class S, format F, class M>
std::vector<uint8_t> run_quantized(int steps, bool nested, optimizer_options o,
                                   const typename Rule::hparams& h = typename Rule::hparams{}, int block = 64) {
  const int n = 70001;
  std::vector<float> init = normal(n, 3, 0.2f);
  const blockwise_layout l = make_layout(F, n, block, nested);
  quantized_tensor q(l);
  cpu::quantize(make_flat_view(init.data(), n), q.view());
  optimizer<Rule, S, weights::quantized<F>, M> opt(h, o);
  const bool on_gpu = !std::is_same<M, memory::host>::value;
  std::unique_ptr<device_quantized> dq;
  if (on_gpu) {
    dq = std::make_unique<device_quantized>(l);
    dq->codes.upload(q.codes);
    if (nested) {
      dq->absmax_codes.upload(q.absmax_codes);
      dq->nested_absmax.upload(q.nested_absmax);
      dq->offset.upload({q.nested_offset});
    } else {
      dq->absmax.upload(q.absmax);
    }
    opt.add_param(dq->view());
  } else {
    opt.add_param(q.view());
  }
  for (int t = 0; t < steps; ++t) {
    std::vector<float> g = normal(n, unsigned(77 + t));
    if (on_gpu) {
      device_buffer<float> dg(g.size());
      dg.upload(g);
      opt.step({make_flat_view(dg.ptr, n, device::cuda())});
      LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
    } else {
      opt.step({make_flat_view(g.data(), n)});
    }
  }
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  return fetch_all(opt);
}

}  // namespace

TEST_CASE("GPU gradient statistics equal the CPU's bit for bit") {
  for (int64_t n : {int64_t(1), int64_t(4095), int64_t(4097), int64_t(1000003)}) {
    std::vector<float> g = normal(size_t(n), unsigned(n));
    device_buffer<float> dg(g.size());
    dg.upload(g);
    const grad_stats c = cpu_grad_stats(g.data(), dtype::f32, n);
    const grad_stats d = cuda_grad_stats(dg.ptr, dtype::f32, n, nullptr);
    CHECK(std::memcmp(&c.sumsq, &d.sumsq, sizeof(double)) == 0);
    CHECK(d.finite);
  }
}

TEST_CASE("device, paged and offloaded steps equal the CPU step: dense weights") {
  optimizer_options o;
  o.seed = 123;
  o.max_grad_norm = 50.0f;
  dense_all_policies<adamw, states::int8, weights::fp32>({}, o);
  dense_all_policies<adamw, states::int4, weights::bf16>({}, o);
  dense_all_policies<lion, states::bf16, weights::bf16>({}, o);
  dense_all_policies<sgd_momentum, states::fp32, weights::fp32_master_bf16>({}, o);
  o.max_update = 1e-3f;
  dense_all_policies<adam, states::fp32, weights::fp32>({}, o);
}

TEST_CASE("device, paged and offloaded steps equal the CPU step: quantized weights") {
  optimizer_options o;
  o.seed = 9;
  for (bool nested : {false, true}) {
    const auto ref = run_quantized<lion, states::int8, format::nf4, memory::host>(3, nested, o);
    CHECK(run_quantized<lion, states::int8, format::nf4, memory::device>(3, nested, o) == ref);
    CHECK(run_quantized<lion, states::int8, format::nf4, memory::paged>(3, nested, o) == ref);
    CHECK(run_quantized<lion, states::int8, format::nf4, memory::cpu_offload>(3, nested, o) == ref);
    const auto ref8 = run_quantized<adamw, states::int4, format::int8, memory::host>(3, nested, o);
    CHECK(run_quantized<adamw, states::int4, format::int8, memory::device>(3, nested, o) == ref8);
  }
}

TEST_CASE("memory::device slabs: states carved from one allocation, zeroed, released with it") {
  // Three tensors' int8 Adam states (codes and float32 absmax, 4 arrays
  // each) in one slab of their total size plus alignment: one allocation,
  // all steps equal to the CPU's (checked above for every rule); the
  // arrays zeroed like cudaMalloc + cudaMemset ones; the accounting
  // unchanged.
  optimizer<adamw, states::int8, weights::fp32, memory::device> opt({}, {});
  size_t total = 0;
  for (int k = 0; k < 3; ++k) total += size_t(decltype(opt)::allocated_bytes_for(sizes[k]));
  opt.memory_policy().slab_bytes = total;
  std::vector<std::unique_ptr<device_buffer<float>>> w;
  for (int k = 0; k < 3; ++k) {
    w.push_back(std::make_unique<device_buffer<float>>(size_t(sizes[k])));
    w.back()->upload(normal(size_t(sizes[k]), unsigned(k)));
    opt.add_param(make_flat_view(w.back()->ptr, sizes[k], device::cuda()), 0, "w" + std::to_string(k));
  }
  CHECK(opt.memory_policy().slab_count() == 1);
  for (int i = 0; i < opt.size(); ++i)
    for (const storage_view* st : {&opt.param(i).state1, &opt.param(i).state2}) {
      const std::vector<uint8_t> b = fetch_storage(*st);
      CHECK(!b.empty());
      CHECK(std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; }));
    }
  int64_t expect = 0;
  for (int k = 0; k < 3; ++k) expect += decltype(opt)::state_bytes_for(sizes[k]);
  CHECK(opt.memory().state_bytes == expect);
}

// Whether the optimizer's storages for a 70001-element tensor (dense
// weights of dtype T, or blockwise weights in format F with `block`) select
// a fixed-shape kernel instantiation.
template <class Rule, class S, class W, class T>
bool dense_uses_fixed_kernel() {
  std::vector<T> w(70001);
  optimizer<Rule, S, W, memory::host> opt;
  opt.add_param(make_flat_view(w.data(), int64_t(w.size())));
  return has_fixed_shape_kernel<Rule>(opt.param(0).weight, opt.param(0).state1, opt.param(0).state2);
}
template <class Rule, class S, format F>
bool quantized_uses_fixed_kernel(int block, bool nested) {
  quantized_tensor q(make_layout(F, 70001, block, nested));
  optimizer<Rule, S, weights::quantized<F>, memory::host> opt;
  opt.add_param(q.view());
  return has_fixed_shape_kernel<Rule>(opt.param(0).weight, opt.param(0).state1, opt.param(0).state2);
}

// The step kernel has instantiations for fixed storage shapes (the
// trainer's modes); each must pick its storages and compute the generic
// kernel's bytes, which the CPU step's equal. Sizes 5000 and 70001 take the
// fixed kernels (70001 with a scalar tail), 1000 the generic one (float32
// states under 4096 elements).
TEST_CASE("fixed-shape step kernels: selected for their storages, equal to the CPU step") {
  optimizer_options o;
  o.seed = 77;
  CHECK(dense_uses_fixed_kernel<lion, states::int8, weights::fp32, float>());
  CHECK(dense_uses_fixed_kernel<lion, states::int8, weights::bf16, bf16>());
  CHECK(dense_uses_fixed_kernel<adamw, states::int8, weights::fp32, float>());
  CHECK(dense_uses_fixed_kernel<adamw, states::int8, weights::bf16, bf16>());
  CHECK(dense_uses_fixed_kernel<adamw, states::int4, weights::fp32, float>());
  CHECK(quantized_uses_fixed_kernel<lion, states::int8, format::int8>(256, false));
  CHECK(quantized_uses_fixed_kernel<lion, states::int8, format::nf4>(64, true));
  CHECK(quantized_uses_fixed_kernel<adamw, states::int8, format::int8>(256, false));
  CHECK(!quantized_uses_fixed_kernel<lion, states::int8, format::int8>(64, false));  // generic
  CHECK(!dense_uses_fixed_kernel<lion, states::bf16, weights::bf16, bf16>());        // generic

  const auto device_equals_host_dense = [&](auto rule, auto states, auto weights_policy, auto value) {
    using R = decltype(rule);
    using S = decltype(states);
    using W = decltype(weights_policy);
    using T = decltype(value);
    CHECK(run_dense<R, S, W, memory::device, T>(3, {}, o) == run_dense<R, S, W, memory::host, T>(3, {}, o));
  };
  device_equals_host_dense(lion{}, states::int8{}, weights::fp32{}, float{});
  device_equals_host_dense(lion{}, states::int8{}, weights::bf16{}, bf16{});
  device_equals_host_dense(adamw{}, states::int8{}, weights::bf16{}, bf16{});
  device_equals_host_dense(adamw{}, states::int4{}, weights::fp32{}, float{});
  CHECK(run_quantized<lion, states::int8, format::int8, memory::device>(3, false, o, {}, 256) ==
        run_quantized<lion, states::int8, format::int8, memory::host>(3, false, o, {}, 256));
  CHECK(run_quantized<adamw, states::int8, format::int8, memory::device>(3, false, o, {}, 256) ==
        run_quantized<adamw, states::int8, format::int8, memory::host>(3, false, o, {}, 256));
}

// Stable weight scales: small steps keep most blocks' scales (and snap
// unmoved weights), large ones grow blocks past their nested group's range,
// which takes the re-quantization path. Both must equal the CPU step's bytes.
TEST_CASE("stable weight scales: device, paged and offloaded steps equal the CPU step") {
  optimizer_options o;
  o.seed = 21;
  o.stable_weight_scales = true;
  for (bool nested : {false, true})
    for (float lr : {1e-5f, 3e-2f}) {
      CAPTURE(nested);
      CAPTURE(lr);
      lion::hparams h;
      h.lr = lr;
      const auto ref = run_quantized<lion, states::int8, format::nf4, memory::host>(4, nested, o, h);
      CHECK(run_quantized<lion, states::int8, format::nf4, memory::device>(4, nested, o, h) == ref);
      CHECK(run_quantized<lion, states::int8, format::nf4, memory::paged>(4, nested, o, h) == ref);
      CHECK(run_quantized<lion, states::int8, format::nf4, memory::cpu_offload>(4, nested, o, h) == ref);
      // the trainer's qft mode: int8 weights, Lion with int8 momentum
      const auto ref_qft = run_quantized<lion, states::int8, format::int8, memory::host>(4, nested, o, h);
      CHECK(run_quantized<lion, states::int8, format::int8, memory::device>(4, nested, o, h) == ref_qft);
      adamw::hparams ha;
      ha.lr = lr;
      const auto ref8 = run_quantized<adamw, states::int8, format::int8, memory::host>(4, nested, o, ha);
      CHECK(run_quantized<adamw, states::int8, format::int8, memory::device>(4, nested, o, ha) == ref8);
    }
}

TEST_CASE("a non-finite gradient is skipped on the GPU") {
  const int n = 8192;
  std::vector<float> w = normal(n, 1), g = normal(n, 2);
  device_buffer<float> dw(n), dg(n);
  dw.upload(w);
  optimizer<adamw, states::int8, weights::fp32, memory::device> opt;
  opt.add_param(make_flat_view(dw.ptr, n, device::cuda()));
  dg.upload(g);
  opt.step({make_flat_view(dg.ptr, n, device::cuda())});
  const std::vector<uint8_t> before = fetch_all(opt);
  g[77] = NAN;
  dg.upload(g);
  const step_report r = opt.step({make_flat_view(dg.ptr, n, device::cuda())});
  CHECK(r.skipped == 1);
  CHECK(fetch_all(opt) == before);
}
