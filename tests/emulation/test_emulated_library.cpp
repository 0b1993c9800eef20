// The library's own CUDA code (cuda/quantize.cuh, cuda/dequantize_rows.cuh,
// optim/cuda_step.cuh and memory::device of optim/cuda_memory.cuh), compiled
// unchanged by g++ and run on the CPU under tests/emulation/cuda_emulator.hpp
// with the host-memory CUDA runtime of fake_cuda_runtime.cpp (no GPU, no
// libcudart), checked bit for bit against the CPU twins: cpu::quantize /
// dequantize / dequantize_rows, cpu_grad_stats and the memory::host
// optimizer. The kernels' element math is the shared host/device code, so
// this checks everything around it: thread / block indexing, vector and
// tail paths, the absmax reductions (shuffles and shared memory), nested
// scales, packing of 4-bit codes, grid-stride loops over a 4-SM grid, the
// stochastic-rounding streams, stable scales. What it cannot check: the
// device-only branches of core/config.hpp and core/dtype.hpp
// (__CUDA_ARCH__ intrinsics such as __fmul_rn) and nvcc's code generation;
// tests/gpu does that on a device. Every output is poisoned before a call.
#include "cuda_emulator.hpp"  // first: the library's kernels launch through it

#include <doctest/doctest.h>

#include <lowbit/cpu/dequantize_rows.hpp>
#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cuda/dequantize_rows.cuh>
#include <lowbit/cuda/quantize.cuh>
#include <lowbit/optim/cuda_memory.cuh>
#include <lowbit/optim/optimizer.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "fake_cuda_runtime.hpp"

using namespace lowbit;
using namespace lowbit::optim;

namespace {

constexpr uint8_t poison = 0xA5;
const float nan_ = std::numeric_limits<float>::quiet_NaN();

std::vector<float> normal(size_t n, unsigned seed, float sd = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

template <class T>
std::vector<T> convert(const std::vector<float>& x) {
  std::vector<T> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = from_float<T>(x[i]);
  return r;
}

template <class T>
std::vector<uint8_t> bytes_of(const T* p, size_t n) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n * sizeof(T));
}

// A quantized tensor's buffers, poisoned, with a view claiming device memory.
struct poisoned_quantized {
  blockwise_layout l;
  std::vector<uint8_t> codes, absmax_codes;
  std::vector<float> absmax, nested_absmax;
  float offset;
  explicit poisoned_quantized(const blockwise_layout& layout) : l(layout) {
    codes.assign(size_t(l.code_bytes()), poison);
    absmax_codes.assign(size_t(l.n_blocks()), poison);
    absmax.assign(size_t(l.n_blocks()), nan_);
    nested_absmax.assign(size_t(l.n_nested_blocks()), nan_);
    offset = nan_;
  }
  quantized_view view() {
    quantized_view v;
    v.layout = l;
    v.codes = codes.data();
    v.absmax = l.nested ? nullptr : absmax.data();
    v.absmax_codes = l.nested ? absmax_codes.data() : nullptr;
    v.nested_absmax = l.nested ? nested_absmax.data() : nullptr;
    v.nested_offset = l.nested ? &offset : nullptr;
    v.dev = device::cuda();
    return v;
  }
};

// The bytes a quantized tensor stores (codes, then its scales).
std::vector<uint8_t> stored_bytes(const quantized_view& q) {
  const blockwise_layout& l = q.layout;
  std::vector<uint8_t> out = bytes_of(q.codes, size_t(l.code_bytes()));
  auto add = [&](std::vector<uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); };
  if (l.nested) {
    add(bytes_of(q.absmax_codes, size_t(l.n_blocks())));
    add(bytes_of(q.nested_absmax, size_t(l.n_nested_blocks())));
    add(bytes_of(q.nested_offset, 1));
  } else {
    add(bytes_of(q.absmax, size_t(l.n_blocks())));
  }
  return out;
}

const format all_formats[] = {format::nf4,      format::fp4,       format::int4,     format::int8,
                              format::dynamic8, format::udynamic8, format::dynamic4, format::ulinear4};

// Quantize on both sides, compare the stored bytes, dequantize both, compare.
template <class T>
void quantize_case(format f, int64_t n, int block_size, bool nested, size_t misalign) {
  std::vector<float> src = normal(size_t(n), unsigned(n * 131 + block_size), 2.0f);
  if (is_unsigned_format(f))
    for (float& v : src) v = std::fabs(v);
  // the dense input, `misalign` elements into its buffer (misaligned: the scalar path)
  std::vector<T> buf(size_t(n) + misalign + 8);
  const std::vector<T> x = convert<T>(src);
  std::copy(x.begin(), x.end(), buf.begin() + std::ptrdiff_t(misalign));
  T* xp = buf.data() + misalign;
  const blockwise_layout l = make_layout(f, n, block_size, nested);

  quantized_tensor ref(l);
  cpu::quantize(make_flat_view(xp, n), ref.view());
  poisoned_quantized got(l);
  cuda::quantize(make_flat_view(xp, n, device::cuda()), got.view());
  CHECK(stored_bytes(got.view()) == stored_bytes(ref.view()));

  std::vector<T> yref(static_cast<size_t>(n)), ybuf(static_cast<size_t>(n) + misalign + 8);
  cpu::dequantize(ref.view(), make_flat_view(yref.data(), n));
  std::memset(ybuf.data(), poison, ybuf.size() * sizeof(T));
  T* yp = ybuf.data() + misalign;
  cuda::dequantize(got.view(), make_flat_view(yp, n, device::cuda()));
  CHECK(bytes_of(yp, size_t(n)) == bytes_of(yref.data(), size_t(n)));
  // nothing written outside the output
  for (size_t i = 0; i < misalign; ++i) CHECK(bytes_of(ybuf.data() + i, 1) == std::vector<uint8_t>(sizeof(T), poison));
}

}  // namespace

TEST_CASE("emulated cuda::quantize / dequantize match cpu:: bit for bit") {
  struct shape {
    int64_t n;
    int block_size;
  };
  // sizes not multiples of the block, blocks of 32..4096 (one to 512 threads
  // per quantization block), more blocks than a 4-SM grid covers in one lap
  const shape shapes[] = {{1, 64}, {37, 32}, {4999, 64}, {4999, 256}, {9001, 2048}, {8195, 4096}, {70001, 64}};
  for (format f : all_formats)
    for (const shape& s : shapes)
      for (bool nested : {false, true}) {
        if (nested && !has_zero_code(f)) continue;
        if (s.n == 70001 && (nested || f != format::nf4)) continue;  // one large case
        CAPTURE(format_name(f));
        CAPTURE(s.n);
        CAPTURE(s.block_size);
        CAPTURE(nested);
        quantize_case<float>(f, s.n, s.block_size, nested, 0);
        quantize_case<bf16>(f, s.n, s.block_size, nested, 0);
        if (s.n == 4999 && s.block_size == 64) {
          quantize_case<fp16>(f, s.n, s.block_size, nested, 0);
          quantize_case<float>(f, s.n, s.block_size, nested, 1);  // misaligned: scalar loads and stores
          quantize_case<bf16>(f, s.n, s.block_size, nested, 3);
        }
      }
  CHECK(fake_cuda::live_allocations() == 0);
}

TEST_CASE("emulated cuda::dequantize_range matches cpu::dequantize_range bit for bit") {
  // ranges at group boundaries (wide path), mid-block, mid-byte (odd first
  // with 4-bit codes), single elements, the whole tensor, and an empty one
  const int64_t n = 5000;
  struct range {
    int64_t first, count;
  };
  const range ranges[] = {{0, n}, {0, 1}, {64, 640}, {8, 4000}, {3, 77}, {1, 4999}, {4997, 3}, {130, 0}, {2561, 1200}};
  for (format f : all_formats)
    for (bool nested : {false, true}) {
      if (nested && !has_zero_code(f)) continue;
      CAPTURE(format_name(f));
      CAPTURE(nested);
      std::vector<float> src = normal(size_t(n), 77);
      if (is_unsigned_format(f))
        for (float& v : src) v = std::fabs(v);
      quantized_tensor q(make_layout(f, n, 64, nested));
      cpu::quantize(make_flat_view(src.data(), n), q.view());
      quantized_view dq = q.view();
      dq.dev = device::cuda();
      for (const range& r : ranges) {
        CAPTURE(r.first);
        CAPTURE(r.count);
        std::vector<float> want(size_t(r.count) + 1), got(size_t(r.count) + 1, nan_);
        cpu::dequantize_range(q.view(), r.first, r.count, want.data());
        cuda::dequantize_range(dq, r.first, r.count, make_flat_view(got.data(), r.count, device::cuda()));
        CHECK(bytes_of(got.data(), size_t(r.count)) == bytes_of(want.data(), size_t(r.count)));
        CHECK(std::isnan(got[size_t(r.count)]));  // nothing written past the range
        std::vector<bf16> got16(size_t(r.count));
        cuda::dequantize_range(dq, r.first, r.count, make_flat_view(got16.data(), r.count, device::cuda()));
        bool same = true;
        for (int64_t i = 0; i < r.count; ++i) same &= got16[size_t(i)].bits == from_float<bf16>(want[size_t(i)]).bits;
        CHECK(same);
      }
      // a range outside the tensor, or an output of the wrong size, is refused
      std::vector<float> out(16);
      CHECK_THROWS_AS(cuda::dequantize_range(dq, n - 8, 16, make_flat_view(out.data(), 16, device::cuda())), error);
      CHECK_THROWS_AS(cuda::dequantize_range(dq, -1, 16, make_flat_view(out.data(), 16, device::cuda())), error);
      CHECK_THROWS_AS(cuda::dequantize_range(dq, 0, 8, make_flat_view(out.data(), 16, device::cuda())), error);
    }
}

TEST_CASE("emulated cuda::quantize refuses non-finite input like cpu::quantize") {
  for (float bad : {nan_, std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = normal(1000, 5);
    x[777] = bad;
    const blockwise_layout l = make_layout(format::nf4, 1000, 64, false);
    quantized_tensor ref(l);
    poisoned_quantized got(l);
    bool cpu_threw = false, cuda_threw = false;
    try {
      cpu::quantize(make_flat_view(x.data(), 1000), ref.view());
    } catch (const error& e) {
      cpu_threw = e.code() == errc::non_finite;
    }
    try {
      cuda::quantize(make_flat_view(x.data(), 1000, device::cuda()), got.view());
    } catch (const error& e) {
      cuda_threw = e.code() == errc::non_finite;
    }
    CHECK(cpu_threw);
    CHECK(cuda_threw);
    // without the check, the block holding it has a NaN scale (quantize.cuh's contract)
    cuda::quantize(make_flat_view(x.data(), 1000, device::cuda()), got.view(), nullptr, false);
    CHECK(std::isnan(got.absmax[777 / 64]));
    CHECK(std::isfinite(got.absmax[0]));
  }
  CHECK(fake_cuda::live_allocations() == 0);
}

TEST_CASE("emulated cuda::dequantize_rows matches cpu::dequantize_rows bit for bit") {
  const int64_t rows = 37, cols = 101;  // rows start mid-block and mid-byte
  // idx is a host vector: a device that reads pageable memory (HMM / ATS)
  // accepts it; the refusal on other devices is test_dequantize_rows_gpu's
  fake_cuda::set_pageable_memory_access(true);
  std::vector<int32_t> idx = {0, 36, 5, 5, 17, 1, 36, 0, 22};
  for (format f : all_formats)
    for (bool nested : {false, true})
      for (int bs : {32, 256}) {
        if (nested && !has_zero_code(f)) continue;
        CAPTURE(format_name(f));
        CAPTURE(nested);
        CAPTURE(bs);
        std::vector<float> src = normal(size_t(rows * cols), 9);
        if (is_unsigned_format(f))
          for (float& v : src) v = std::fabs(v);
        const blockwise_layout l = make_layout(f, rows * cols, bs, nested);
        quantized_tensor q(l);
        cpu::quantize(make_flat_view(src.data(), rows * cols), q.view());
        quantized_view dq = q.view();
        dq.dev = device::cuda();
        const int64_t count = int64_t(idx.size());
        {
          std::vector<float> ref(size_t(count * cols)), got(size_t(count * cols), nan_);
          cpu::dequantize_rows(q.view(), rows, cols, idx.data(), count, make_view(ref.data(), {count, cols}));
          cuda::dequantize_rows(dq, rows, cols, idx.data(), count, make_view(got.data(), {count, cols}, device::cuda()));
          CHECK(bytes_of(got.data(), got.size()) == bytes_of(ref.data(), ref.size()));
        }
        {
          std::vector<bf16> ref(size_t(count * cols)), got(size_t(count * cols), bf16{0xA5A5});
          cpu::dequantize_rows(q.view(), rows, cols, idx.data(), count, make_view(ref.data(), {count, cols}));
          cuda::dequantize_rows(dq, rows, cols, idx.data(), count, make_view(got.data(), {count, cols}, device::cuda()));
          CHECK(bytes_of(got.data(), got.size()) == bytes_of(ref.data(), ref.size()));
        }
      }
  // an index out of range: the CUDA path writes NaN for that row and throws
  const blockwise_layout l = make_layout(format::nf4, rows * cols, 64, false);
  quantized_tensor q(l);
  std::vector<float> src = normal(size_t(rows * cols), 10);
  cpu::quantize(make_flat_view(src.data(), rows * cols), q.view());
  quantized_view dq = q.view();
  dq.dev = device::cuda();
  std::vector<int32_t> bad = {3, 37, 2, -1};
  std::vector<float> got(size_t(4 * cols), 0.0f);
  CHECK_THROWS_AS(cuda::dequantize_rows(dq, rows, cols, bad.data(), 4, make_view(got.data(), {4, cols}, device::cuda())),
                  error);
  for (int64_t j = 0; j < cols; ++j) {
    CHECK(std::isnan(got[size_t(cols + j)]));
    CHECK(std::isnan(got[size_t(3 * cols + j)]));
    CHECK(std::isfinite(got[size_t(j)]));
  }
  CHECK(fake_cuda::live_allocations() == 0);
}

TEST_CASE("emulated cuda_grad_stats matches cpu_grad_stats") {
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(4096), int64_t(4097), int64_t(50001)}) {
    CAPTURE(n);
    std::vector<float> g = normal(size_t(n), unsigned(n), 3.0f);
    const std::vector<bf16> gb = convert<bf16>(g);
    const std::vector<fp16> gh = convert<fp16>(g);
    const grad_stats a = cpu_grad_stats(g.data(), dtype::f32, n), b = cuda_grad_stats(g.data(), dtype::f32, n, nullptr);
    CHECK(a.finite);
    CHECK(b.finite);
    CHECK(bytes_of(&a.sumsq, 1) == bytes_of(&b.sumsq, 1));
    const grad_stats c = cpu_grad_stats(gb.data(), dtype::bf16, n), d = cuda_grad_stats(gb.data(), dtype::bf16, n, nullptr);
    CHECK(bytes_of(&c.sumsq, 1) == bytes_of(&d.sumsq, 1));
    const grad_stats e = cpu_grad_stats(gh.data(), dtype::f16, n), f = cuda_grad_stats(gh.data(), dtype::f16, n, nullptr);
    CHECK(bytes_of(&e.sumsq, 1) == bytes_of(&f.sumsq, 1));
    for (float bad : {nan_, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
      std::vector<float> h = g;
      h[size_t(n - 1)] = bad;
      CHECK_FALSE(cpu_grad_stats(h.data(), dtype::f32, n).finite);
      CHECK_FALSE(cuda_grad_stats(h.data(), dtype::f32, n, nullptr).finite);
    }
  }
  CHECK(fake_cuda::live_allocations() == 0);
}

namespace {

// Every storage of every parameter of an optimizer (weights, master, states).
template <class Opt>
std::vector<uint8_t> all_bytes(const Opt& o) {
  std::vector<uint8_t> out;
  for (int i = 0; i < o.size(); ++i)
    for (const storage_view* s : {&o.param(i).weight, &o.param(i).weight_copy, &o.param(i).state1, &o.param(i).state2}) {
      if (s->kind == storage_kind::none) continue;
      std::vector<uint8_t> b = s->is_blockwise() ? stored_bytes(s->q) : bytes_of(static_cast<const uint8_t*>(s->data), size_t(s->bytes()));
      out.insert(out.end(), b.begin(), b.end());
    }
  return out;
}

struct run_result {
  std::vector<std::vector<uint8_t>> after_step;  // all bytes after each step
  std::vector<int> skipped;
  std::vector<double> norms;
};

// How the step's inputs are laid out: the gradient dtype, and how many
// elements into their buffers the dense weights and the gradients start
// (1: misaligned, so the kernel's wide 16-byte accesses cannot be used and
// its scalar path runs instead).
struct input_layout {
  dtype grad_type = dtype::f32;
  size_t misalign = 0;
};

// A gradient of `g`'s values in dtype t, `misalign` elements into a buffer.
struct grad_buffer {
  std::vector<uint8_t> bytes;
  tensor_view view;
  grad_buffer(const std::vector<float>& g, dtype t, size_t misalign, device dev) {
    const size_t es = t == dtype::f32 ? 4 : 2;
    bytes.assign((g.size() + misalign + 8) * es, 0);
    uint8_t* base = bytes.data() + misalign * es;
    if (t == dtype::f32) std::memcpy(base, g.data(), g.size() * 4);
    else if (t == dtype::bf16) std::memcpy(base, convert<bf16>(g).data(), g.size() * 2);
    else std::memcpy(base, convert<fp16>(g).data(), g.size() * 2);
    const int64_t n = int64_t(g.size());
    if (t == dtype::f32) view = make_flat_view(reinterpret_cast<float*>(base), n, dev);
    else if (t == dtype::bf16) view = make_flat_view(reinterpret_cast<bf16*>(base), n, dev);
    else view = make_flat_view(reinterpret_cast<fp16*>(base), n, dev);
  }
};

// Steps 3 times; the second step's gradient of the second tensor has a NaN
// (skipped). Dense weights: three tensors (quantized states only for the
// one over 4096 elements); quantized weights: one tensor.
template <class Rule, class S, class W, class M>
run_result run(const typename Rule::hparams& h, const optimizer_options& o, input_layout in = {}) {
  constexpr bool on_device = std::is_same<M, memory::device>::value;
  const device dev = on_device ? device::cuda() : device::cpu();
  optimizer<Rule, S, W, M> opt(h, o);
  std::vector<int64_t> sizes;
  std::vector<std::vector<uint8_t>> dense;          // dense weights' bytes
  std::vector<std::unique_ptr<quantized_tensor>> q;  // quantized weights
  std::vector<std::vector<uint8_t>> moved_codes;       // their codes, `misalign` bytes into a buffer
  if constexpr (W::is_quantized) {
    sizes = {5003, 999};
    moved_codes.resize(sizes.size());
    for (size_t k = 0; k < sizes.size(); ++k) {
      const bool nested = W::weight_format == format::nf4;
      q.push_back(std::make_unique<quantized_tensor>(make_layout(W::weight_format, sizes[k], 64, nested)));
      std::vector<float> init = normal(size_t(sizes[k]), unsigned(3 + k), 0.2f);
      cpu::quantize(make_flat_view(init.data(), sizes[k]), q.back()->view());
      quantized_view v = q.back()->view();
      v.dev = dev;
      if (in.misalign > 0) {
        const size_t nb = size_t(v.layout.code_bytes());
        moved_codes[k].assign(nb + in.misalign, 0);
        std::memcpy(moved_codes[k].data() + in.misalign, v.codes, nb);
        v.codes = moved_codes[k].data() + in.misalign;
      }
      opt.add_param(v);
    }
  } else {
    using T = std::conditional_t<W::weight_dtype == dtype::f32, float, bf16>;
    sizes = {5000, 1000, 333};
    for (size_t k = 0; k < sizes.size(); ++k) {
      std::vector<T> w(in.misalign);
      const std::vector<T> values = convert<T>(normal(size_t(sizes[k]), unsigned(10 + k), 0.2f));
      w.insert(w.end(), values.begin(), values.end());
      dense.push_back(bytes_of(w.data(), w.size()));
    }
    for (size_t k = 0; k < sizes.size(); ++k)
      opt.add_param(make_flat_view(reinterpret_cast<T*>(dense[k].data()) + in.misalign, sizes[k], dev));
  }
  run_result r;
  for (int t = 0; t < 3; ++t) {
    std::vector<grad_buffer> g;
    std::vector<tensor_view> grads;
    for (size_t k = 0; k < sizes.size(); ++k) {
      std::vector<float> values = normal(size_t(sizes[k]), unsigned(1000 * t + k));
      if (t == 1 && k == 1) values[7] = nan_;
      g.emplace_back(values, in.grad_type, in.misalign, dev);
    }
    for (size_t k = 0; k < sizes.size(); ++k) grads.push_back(g[k].view);
    const step_report rep = opt.step(grads);
    r.skipped.push_back(rep.skipped);
    r.norms.push_back(rep.grad_norm);
    r.after_step.push_back(all_bytes(opt));
  }
  return r;
}

template <class Rule, class S, class W>
void compare(const typename Rule::hparams& h, optimizer_options o, const char* what, input_layout in = {}) {
  const std::string label = std::string(what) + ", " + dtype_name(in.grad_type) + " gradients, views " +
                            std::to_string(in.misalign) + " elements into their buffers";
  CAPTURE(label);  // (a std::string: doctest prints a captured const char* as a pointer)
  for (float clip : {0.0f, 5.0f}) {
    CAPTURE(clip);
    o.max_grad_norm = clip;
    o.max_update = clip > 0.0f ? 1e-3f : 0.0f;
    const run_result ref = run<Rule, S, W, memory::host>(h, o, in);
    const run_result got = run<Rule, S, W, memory::device>(h, o, in);
    REQUIRE(ref.after_step.size() == got.after_step.size());
    for (size_t t = 0; t < ref.after_step.size(); ++t) {
      CAPTURE(t);
      CHECK(got.after_step[t] == ref.after_step[t]);
      CHECK(got.skipped[t] == ref.skipped[t]);
      CHECK(bytes_of(&got.norms[t], 1) == bytes_of(&ref.norms[t], 1));
    }
    CHECK(ref.skipped[1] == 1);
    CHECK(ref.after_step[0] != ref.after_step[1]);  // the other tensors moved
    CHECK(fake_cuda::live_allocations() == 0);
  }
}

template <class Rule, class S>
void compare_weights(const typename Rule::hparams& h, const char* states) {
  optimizer_options o;
  o.seed = 7;
  const std::string states_label = states;
  CAPTURE(states_label);
  compare<Rule, S, weights::fp32>(h, o, "fp32 weights");
  compare<Rule, S, weights::bf16>(h, o, "bf16 weights (stochastic rounding)");
  compare<Rule, S, weights::fp32_master_bf16>(h, o, "fp32 master, bf16 weights");
  for (bool stable : {false, true}) {
    o.stable_weight_scales = stable;
    compare<Rule, S, weights::quantized<format::int8>>(h, o, stable ? "int8 weights, stable scales" : "int8 weights");
    compare<Rule, S, weights::quantized<format::nf4>>(h, o,
                                                      stable ? "nf4 nested weights, stable scales" : "nf4 nested weights");
  }
}

lion::hparams test_lion() {
  lion::hparams h;
  h.lr = 1e-3f;
  h.weight_decay = 0.1f;
  return h;
}

adamw::hparams test_adamw() {
  adamw::hparams h;
  h.lr = 1e-2f;
  h.weight_decay = 0.01f;
  return h;
}

}  // namespace

TEST_CASE("emulated optimizer<..., memory::device> matches memory::host bit for bit (Lion)") {
  const lion::hparams h = test_lion();
  compare_weights<lion, states::fp32>(h, "fp32 states");
  compare_weights<lion, states::int8>(h, "int8 states");
  compare_weights<lion, states::int4>(h, "int4 states");
}

TEST_CASE("emulated optimizer<..., memory::device> matches memory::host bit for bit (AdamW)") {
  const adamw::hparams h = test_adamw();
  compare_weights<adamw, states::fp32>(h, "fp32 states");
  compare_weights<adamw, states::int8>(h, "int8 states");
  compare_weights<adamw, states::int4>(h, "int4 states");
}

// optimizer::step_param_range on the device: a tensor stepped in ranges
// (the kernel's views start mid-tensor; its random streams keyed by
// whole-tensor indices through fused_step_args::first_element) equals one
// whole step of the CPU executor, bit for bit, over several steps.
namespace {
template <class Rule, class S, class W, class Make>
void check_device_ranges(const typename Rule::hparams& h, Make make_weight) {
  const int64_t n = 5000;
  optimizer_options o;
  o.seed = 21;
  optimizer<Rule, S, W, memory::host> whole(h, o);
  optimizer<Rule, S, W, memory::device> ranged(h, o);
  make_weight(whole, device::cpu());
  make_weight(ranged, device::cuda());
  const std::vector<int64_t> cuts = {0, 256, 1024, 4864, n};
  for (int t = 0; t < 3; ++t) {
    std::vector<float> g = normal(size_t(n), unsigned(77 + t));
    whole.begin_step();
    whole.step_param(0, make_flat_view(g.data(), n));
    whole.end_step();
    ranged.begin_step();
    for (size_t c = 0; c + 1 < cuts.size(); ++c)
      CHECK(ranged.step_param_range(0, cuts[c], make_flat_view(g.data() + cuts[c], cuts[c + 1] - cuts[c],
                                                               device::cuda())));
    ranged.end_step();
    CHECK(all_bytes(ranged) == all_bytes(whole));
  }
}
}  // namespace

TEST_CASE("emulated step_param_range on memory::device equals a whole step on memory::host, bit for bit") {
  std::vector<std::unique_ptr<quantized_tensor>> keep;
  check_device_ranges<lion, states::int8, weights::quantized<format::int8>>(test_lion(), [&](auto& opt, device dev) {
    keep.push_back(std::make_unique<quantized_tensor>(make_layout(format::int8, 5000, 256, false)));
    std::vector<float> init = normal(5000, 5, 0.2f);
    cpu::quantize(make_flat_view(init.data(), 5000), keep.back()->view());
    quantized_view v = keep.back()->view();
    v.dev = dev;
    opt.add_param(v);
  });
  std::vector<std::vector<bf16>> dense;
  check_device_ranges<adamw, states::int8, weights::bf16>(test_adamw(), [&](auto& opt, device dev) {
    dense.push_back(convert<bf16>(normal(5000, 6, 0.2f)));
    opt.add_param(make_flat_view(dense.back().data(), 5000, dev));
  });
}

// The kernel's wide (16-byte) and scalar access paths: bf16 / f16 gradients
// and dense weights, aligned and misaligned by one element.
TEST_CASE("emulated optimizer step: 16-bit gradients and misaligned views match memory::host bit for bit") {
  const lion::hparams hl = test_lion();
  const adamw::hparams ha = test_adamw();
  optimizer_options o;
  o.seed = 11;
  for (dtype gt : {dtype::f32, dtype::bf16, dtype::f16})
    for (size_t misalign : {size_t(0), size_t(1)}) {
      const input_layout in{gt, misalign};
      compare<lion, states::int8, weights::fp32>(hl, o, "lion, int8 states, fp32 weights", in);
      compare<adamw, states::fp32, weights::bf16>(ha, o, "adamw, fp32 states, bf16 weights", in);
      compare<adamw, states::int4, weights::fp32_master_bf16>(ha, o, "adamw, int4 states, fp32 master", in);
      compare<lion, states::int8, weights::quantized<format::nf4>>(hl, o, "lion, int8 states, nf4 weights", in);
    }
}

TEST_CASE("the emulator: shuffles are per warp, non-uniform barriers and shuffles throw") {
  struct k {
    // a shuffle in a branch that whole warps take or skip: valid CUDA
    static void one_warp_shuffles(float* out) {
      float v = float(threadIdx.x);
      if (threadIdx.x < 32) v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
      __syncthreads();
      out[threadIdx.x] = v;
    }
    // a shuffle that half the lanes of a warp never reach
    static void half_warp_shuffles(float* out) {
      float v = float(threadIdx.x);
      if (threadIdx.x < 16) v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
      out[threadIdx.x] = v;
    }
    // a __syncthreads that returned threads never reach
    static void partial_barrier(float* out) {
      if (threadIdx.x >= 32) return;
      __syncthreads();
      out[threadIdx.x] = 1.0f;
    }
    // warps that return early while another warp shuffles: valid CUDA
    static void early_return(float* out) {
      if (threadIdx.x >= 32) return;
      out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, float(threadIdx.x), 3);
    }
  };
  std::vector<float> out(64, -1.0f);
  LOWBIT_LAUNCH(k::one_warp_shuffles, 1, 64, 0, nullptr)(out.data());
  for (unsigned t = 0; t < 64; ++t) CHECK(out[t] == float(t < 32 ? (t ^ 1u) : t));
  out.assign(64, -1.0f);
  LOWBIT_LAUNCH(k::early_return, 1, 64, 0, nullptr)(out.data());
  for (unsigned t = 0; t < 32; ++t) CHECK(out[t] == float(t ^ 3u));
  CHECK(out[40] == -1.0f);
  CHECK_THROWS_AS(LOWBIT_LAUNCH(k::half_warp_shuffles, 1, 64, 0, nullptr)(out.data()), cuda_emulator::error);
  CHECK_THROWS_AS(LOWBIT_LAUNCH(k::partial_barrier, 1, 64, 0, nullptr)(out.data()), cuda_emulator::error);
}

TEST_CASE("the emulator: dynamic shared memory of the launch's size, zeroed, at most 227 KiB") {
  struct k {
    static void sum_through_shared(unsigned* out) {
      LOWBIT_DYNAMIC_SHARED(smem);
      unsigned* s = reinterpret_cast<unsigned*>(smem);
      const unsigned before = s[threadIdx.x];  // zeroed at the launch
      s[threadIdx.x] = threadIdx.x + 1;
      __syncthreads();
      out[threadIdx.x] = before + s[(threadIdx.x + 1) % blockDim.x];
    }
  };
  std::vector<unsigned> out(128);
  LOWBIT_LAUNCH(k::sum_through_shared, 1, 128, 128 * sizeof(unsigned), nullptr)(out.data());
  for (unsigned t = 0; t < 128; ++t) CHECK(out[t] == (t + 1) % 128 + 1);
  CHECK_THROWS_AS(LOWBIT_LAUNCH(k::sum_through_shared, 1, 128, 228 * 1024, nullptr)(out.data()),
                  cuda_emulator::error);
}

// As on a GPU, more than 48 KiB of dynamic shared memory needs the kernel's
// limit raised first (cudaFuncAttributeMaxDynamicSharedMemorySize); the
// library's GEMM kernels do it through gemm_detail::allow_dynamic_smem.
TEST_CASE("the emulator: dynamic shared memory above 48 KiB only after cudaFuncSetAttribute") {
  struct k {
    static void touch_shared(unsigned* out) {
      LOWBIT_DYNAMIC_SHARED(smem);
      smem[threadIdx.x] = 1;
      __syncthreads();
      out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
    }
  };
  std::vector<unsigned> out(32);
  LOWBIT_LAUNCH(k::touch_shared, 1, 32, 48 * 1024, nullptr)(out.data());  // the default limit
  CHECK(out[0] == 1u);
  CHECK_THROWS_AS(LOWBIT_LAUNCH(k::touch_shared, 1, 32, 48 * 1024 + 16, nullptr)(out.data()), cuda_emulator::error);
  const void* fn = reinterpret_cast<const void*>(&k::touch_shared);
  CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) == cudaErrorInvalidValue);
  cudaGetLastError();  // clear the sticky error of the refused call
  REQUIRE(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess);
  out.assign(32, 0u);
  LOWBIT_LAUNCH(k::touch_shared, 1, 32, 100 * 1024, nullptr)(out.data());
  CHECK(out[31] == 1u);
  CHECK_THROWS_AS(LOWBIT_LAUNCH(k::touch_shared, 1, 32, 100 * 1024 + 16, nullptr)(out.data()), cuda_emulator::error);
}
