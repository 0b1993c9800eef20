// bench/bench_optimizer_cpu.cpp
// Google Benchmark step throughput of lowbit's composed optimizers on CPU
// threads (memory::host): Lion and AdamW with fp32 / int8 / int4 states and
// fp32 / bf16 / int8 / NF4 (block 64, nested) weights, one tensor of n
// elements (default 16M; --n=N) with a float32 gradient. Counters:
// params_per_second, bytes_per_second (the least traffic a step must make:
// gradient read once, weight and states read once and written once) and
// copy_ratio, that rate over a multithreaded memcpy of the same traffic
// measured once in this binary (median of 9 copies after a warm-up). The
// gradient-statistics pass (finite check and norm) is part of each step, as
// in real use, except in the /unchecked rows (check_gradients = false).
// The /stable_scales rows keep quantized weights' block scales
// (optimizer_options::stable_weight_scales), as the trainer's qft and nf4
// modes do.
#include <benchmark/benchmark.h>

#include <lowbit/optim/optimizer.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace lowbit;
using namespace lowbit::optim;

int64_t g_n = int64_t(16) << 20;

const std::vector<float>& normal(int64_t n, unsigned seed) {
  static std::vector<std::vector<float>> cache(4);
  std::vector<float>& v = cache[seed % 4];
  if (int64_t(v.size()) != n) {
    v.resize(size_t(n));
    std::mt19937 g(seed);
    std::normal_distribution<float> d(0.0f, 0.02f);
    for (auto& x : v) x = d(g);
  }
  return v;
}

// Bandwidth (bytes of traffic per second, read + write) of a threaded memcpy.
double copy_bandwidth() {
  static double bw = [] {
    const size_t bytes = size_t(256) << 20;
    std::vector<char> a(bytes, 1), b(bytes, 2);
    auto copy = [&] {
      cpu::parallel_for(int64_t(bytes >> 20), 1, [&](int64_t c0, int64_t c1) {
        std::memcpy(b.data() + (c0 << 20), a.data() + (c0 << 20), size_t(c1 - c0) << 20);
      });
    };
    copy();
    std::vector<double> t;
    for (int i = 0; i < 9; ++i) {
      const auto s = std::chrono::steady_clock::now();
      copy();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
    }
    std::sort(t.begin(), t.end());
    return 2.0 * double(bytes) / t[4];
  }();
  return bw;
}

// Counters of one optimizer benchmark; copy_ratio is the step's traffic rate
// divided by the memcpy rate (a rate counter of traffic / copy_bandwidth).
template <class Opt>
void report(benchmark::State& state, const Opt& opt, int64_t n) {
  const memory_report m = opt.memory();
  const double traffic = double(n) * 4 + 2.0 * double(m.weight_bytes + m.master_bytes + m.state_bytes);
  state.counters["params_per_second"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_second"] = benchmark::Counter(traffic, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_param"] = m.bytes_per_param();
  state.counters["copy_GBps"] = copy_bandwidth() / 1e9;
}

template <class Opt>
void finish(benchmark::State& state, const Opt& opt, int64_t n) {
  report(state, opt, n);
  // copy_ratio from the measured mean time per iteration
  state.counters["copy_ratio"] = benchmark::Counter(
      (double(n) * 4 + 2.0 * double(opt.memory().weight_bytes + opt.memory().master_bytes + opt.memory().state_bytes)) /
          copy_bandwidth(),
      benchmark::Counter::kIsIterationInvariantRate);
}

// Checked = false: optimizer_options::check_gradients off (no gradient pass;
// the like of PyTorch's fused AdamW without a GradScaler).
template <class Rule, class States, class Weights, bool Checked = true>
void bm_dense(benchmark::State& state) {
  const int64_t n = g_n;
  using T = std::conditional_t<Weights::weight_dtype == dtype::f32, float, bf16>;
  std::vector<T> w(static_cast<size_t>(n));
  const std::vector<float>& init = normal(n, 1);
  for (int64_t i = 0; i < n; ++i) w[size_t(i)] = from_float<T>(init[size_t(i)]);
  const std::vector<float>& g = normal(n, 2);
  optimizer_options o;
  o.check_gradients = Checked;
  optimizer<Rule, States, Weights> opt({}, o);
  opt.add_param(make_flat_view(w.data(), n));
  opt.step({make_flat_view(g.data(), n)});  // warm-up: first touch of the states' pages is not part of a step
  for (auto _ : state) opt.step({make_flat_view(g.data(), n)});
  finish(state, opt, n);
}

// Stable = optimizer_options::stable_weight_scales (what the trainer's qft
// and nf4 modes use): a block keeps its scale unless its values outgrow it.
template <class Rule, class States, format F, bool Stable = false>
void bm_quantized(benchmark::State& state) {
  const int64_t n = g_n;
  quantized_tensor q(make_layout(F, n, F == format::int8 ? 256 : 64, F == format::nf4));
  cpu::quantize(make_flat_view(normal(n, 1).data(), n), q.view());
  const std::vector<float>& g = normal(n, 2);
  optimizer_options o;
  o.stable_weight_scales = Stable;
  optimizer<Rule, States, weights::quantized<F>> opt({}, o);
  opt.add_param(q.view());
  opt.step({make_flat_view(g.data(), n)});  // warm-up, as above
  for (auto _ : state) opt.step({make_flat_view(g.data(), n)});
  finish(state, opt, n);
}

void bm_memcpy(benchmark::State& state) {
  const size_t bytes = size_t(g_n) * 4;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  for (auto _ : state)
    cpu::parallel_for(int64_t(bytes >> 20), 1, [&](int64_t c0, int64_t c1) {
      std::memcpy(b.data() + (c0 << 20), a.data() + (c0 << 20), size_t(std::min<int64_t>(c1 << 20, int64_t(bytes)) - (c0 << 20)));
    });
  state.counters["bytes_per_second"] = benchmark::Counter(2.0 * double(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

#define LOWBIT_BENCH(fn, name) BENCHMARK(fn)->Name(name)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5)

LOWBIT_BENCH(bm_memcpy, "memcpy_f32_tensor");
LOWBIT_BENCH((bm_dense<adamw, states::fp32, weights::fp32>), "adamw/states:fp32/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::fp32, weights::fp32, false>), "adamw/states:fp32/weights:fp32/unchecked");
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::fp32>), "adamw/states:int8/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::int4, weights::fp32>), "adamw/states:int4/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::bf16>), "adamw/states:int8/weights:bf16");
LOWBIT_BENCH((bm_quantized<adamw, states::int8, format::int8>), "adamw/states:int8/weights:int8");
LOWBIT_BENCH((bm_quantized<adamw, states::int8, format::nf4>), "adamw/states:int8/weights:nf4");
LOWBIT_BENCH((bm_dense<lion, states::fp32, weights::fp32>), "lion/states:fp32/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::fp32, weights::fp32, false>), "lion/states:fp32/weights:fp32/unchecked");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::fp32>), "lion/states:int8/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int4, weights::fp32>), "lion/states:int4/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::bf16>), "lion/states:int8/weights:bf16");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8>), "lion/states:int8/weights:int8");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4>), "lion/states:int8/weights:nf4");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8, true>), "lion/states:int8/weights:int8/stable_scales");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4, true>), "lion/states:int8/weights:nf4/stable_scales");

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--n=", 4) == 0) g_n = std::atoll(argv[i] + 4);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
