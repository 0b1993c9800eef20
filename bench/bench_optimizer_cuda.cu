// bench/bench_optimizer_cuda.cu
// Google Benchmark step throughput of lowbit's fused optimizer kernel on the
// GPU (memory::device): Lion and AdamW with fp32 / int8 / int4 states (and
// int8 re-encoded to nearest, bitsandbytes' rounding) and fp32 / bf16 /
// int8 / NF4 (block 64, nested) weights, one tensor of n
// elements (default 256M; --n=N) with a bf16 gradient. The data are real:
// weights and gradient drawn from N(0, 0.02^2) on the device (quantized
// weights are that draw quantized), as the CPU benchmark's; three untimed
// steps first give the states values. Timing is manual with CUDA events
// around the fused kernel launch only (cuda_fused_step; the
// gradient-statistics pass of optimizer::step is excluded so the figure is
// the update kernel's), with the L2 cache flushed before each iteration
// (cuda_bench_support.cuh, shared with the other CUDA benchmarks).
// Counters: params_per_second, bytes_per_second (gradient read once; weight
// and states read and written once), copy_GBps (a device-to-device copy
// moving the same traffic, median of 21, measured in this binary) and
// pct_of_copy. The /stable_scales rows keep quantized weights' block scales
// (stable_weight_scales), as the trainer's qft and nf4 modes do. Exits 77
// with a message when no CUDA device is present.
#include <benchmark/benchmark.h>

#include <lowbit/lowbit.cuh>

#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_bench_support.cuh"

namespace {

using namespace lowbit;
using namespace lowbit::optim;
using namespace lowbit_bench;

int64_t g_n = int64_t(256) << 20;
constexpr float data_sd = 0.02f;  // weights and gradients, as bench_optimizer_cpu
constexpr int warm_steps = 3;     // untimed steps before the timed ones: states with values

// Records the step's traffic and rates; the copy ceiling is measured here,
// after the step's buffers are freed.
void counters(benchmark::State& state, int64_t n, double traffic, double bytes_per_param) {
  const double copy = copy_bandwidth(size_t(traffic));
  state.counters["params_per_second"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_second"] = benchmark::Counter(traffic, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GBps"] = copy / 1e9;
  state.counters["pct_of_copy"] =
      benchmark::Counter(100.0 * traffic / copy, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_param"] = bytes_per_param;
}

// Warm-up steps, then the timed loop, each step one fused kernel on
// gpu().stream.
template <class Rule>
void time_steps(benchmark::State& state, fused_step_args& a) {
  const auto c = Rule::make_consts(typename Rule::hparams{}, 1);
  auto step = [&] {
    cuda_fused_step<Rule>(a, c, gpu().stream);
    ++a.step;
  };
  for (int i = 0; i < warm_steps; ++i) step();
  run_timed_loop(state, step);
}

// Generic: run the generic instantiation of the step kernel even where a
// fixed-shape one exists (cuda_detail::fixed_shape_list), to measure what
// the specialization buys in the same binary.
struct generic_kernel_scope {
  bool was;
  explicit generic_kernel_scope(bool on) : was(cuda_detail::generic_step_kernel_only.exchange(on)) {}
  ~generic_kernel_scope() { cuda_detail::generic_step_kernel_only = was; }
};

template <class Rule, class States, class Weights, bool Generic>
void run_dense(benchmark::State& state) {
  const generic_kernel_scope scope(Generic);
  const int64_t n = g_n;
  const dtype wt = Weights::weight_dtype;
  double traffic = 0.0, bytes_per_param = 0.0;
  {
    device_buffer w(size_t(n) * dtype_size(wt)), g(size_t(n) * 2);
    if (wt == dtype::bf16) fill_device(w.as<bf16>(), n, 1, data_sd);
    else fill_device(w.as<float>(), n, 1, data_sd);
    fill_device(g.as<bf16>(), n, 2, data_sd);
    optimizer<Rule, States, Weights, memory::device> opt;
    opt.add_param(make_view(w.as<void>(), wt, {n}, device::cuda()));
    fused_step_args a = step_args_for(opt.param(0));
    a.grad = g.as<void>();
    a.grad_type = dtype::bf16;
    a.weight_stochastic = Weights::stochastic;
    a.state_stochastic = States::stochastic;
    time_steps<Rule>(state, a);
    const memory_report m = opt.memory();
    traffic = double(n) * 2 + 2.0 * double(m.weight_bytes + m.master_bytes + m.state_bytes);
    bytes_per_param = m.bytes_per_param();
  }
  counters(state, n, traffic, bytes_per_param);
}

template <class Rule, class States, format F, bool Generic, bool Stable>
void run_quantized(benchmark::State& state) {
  const generic_kernel_scope scope(Generic);
  const int64_t n = g_n;
  const blockwise_layout l = make_layout(F, n, F == format::int8 ? 256 : 64, F == format::nf4);
  double traffic = 0.0, bytes_per_param = 0.0;
  {
    device_quantized storage(l);
    device_buffer g(size_t(n) * 2);
    const quantized_view q = storage.view();
    {
      device_buffer w(size_t(n) * 4);  // the weights' draw, quantized and dropped
      fill_device(w.as<float>(), n, 1, data_sd);
      lowbit::cuda::quantize(make_view(w.as<void>(), dtype::f32, {n}, device::cuda()), q, gpu().stream);
      LOWBIT_CUDA_CHECK(cudaStreamSynchronize(gpu().stream));
    }
    fill_device(g.as<bf16>(), n, 2, data_sd);
    optimizer<Rule, States, weights::quantized<F>, memory::device> opt;
    opt.add_param(q);
    fused_step_args a = step_args_for(opt.param(0));
    a.grad = g.as<void>();
    a.grad_type = dtype::bf16;
    a.state_stochastic = States::stochastic;
    a.stable_weight_scales = Stable;  // the trainer's qft and nf4 modes
    time_steps<Rule>(state, a);
    const memory_report m = opt.memory();
    traffic = double(n) * 2 + 2.0 * double(m.weight_bytes + m.state_bytes);
    bytes_per_param = m.bytes_per_param();
  }
  counters(state, n, traffic, bytes_per_param);
}

// Runs one benchmark body; an error (a CUDA failure, an allocation too large
// for the device) marks the row failed instead of ending the process.
template <class Body>
void guarded(benchmark::State& state, Body body) {
  try {
    body();
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

template <class Rule, class States, class Weights, bool Generic = false>
void bm_dense(benchmark::State& state) {
  guarded(state, [&] { run_dense<Rule, States, Weights, Generic>(state); });
}

template <class Rule, class States, format F, bool Generic = false, bool Stable = false>
void bm_quantized(benchmark::State& state) {
  guarded(state, [&] { run_quantized<Rule, States, F, Generic, Stable>(state); });
}

void bm_copy(benchmark::State& state) {
  const size_t bytes = size_t(g_n) * 4;
  device_buffer a(bytes), b(bytes);
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(a.as<void>(), 0x5a, bytes, gpu().stream));
  run_timed_loop(state, [&] {
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice, gpu().stream));
  });
  state.counters["bytes_per_second"] = benchmark::Counter(2.0 * double(bytes), benchmark::Counter::kIsIterationInvariantRate);
}

#define LOWBIT_BENCH(fn, name) BENCHMARK(fn)->Name(name)->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(0.2)

LOWBIT_BENCH(bm_copy, "d2d_copy_f32_tensor");
LOWBIT_BENCH((bm_dense<adamw, states::fp32, weights::fp32>), "cuda/adamw/states:fp32/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::fp32>), "cuda/adamw/states:int8/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::int4, weights::fp32>), "cuda/adamw/states:int4/weights:fp32");
// int8 states re-encoded to nearest, as bitsandbytes' 8-bit optimizers do
// (lowbit's default re-encodes stochastically: one Philox draw per 8
// elements and state): the like-for-like row for a bitsandbytes comparison.
LOWBIT_BENCH((bm_dense<adamw, states::int8_nearest, weights::fp32>), "cuda/adamw/states:int8+rn/weights:fp32");
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::bf16>), "cuda/adamw/states:int8/weights:bf16");
LOWBIT_BENCH((bm_quantized<adamw, states::int8, format::int8>), "cuda/adamw/states:int8/weights:int8");
LOWBIT_BENCH((bm_quantized<adamw, states::int8, format::nf4>), "cuda/adamw/states:int8/weights:nf4");
LOWBIT_BENCH((bm_dense<lion, states::fp32, weights::fp32>), "cuda/lion/states:fp32/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::fp32>), "cuda/lion/states:int8/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int4, weights::fp32>), "cuda/lion/states:int4/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int8_nearest, weights::fp32>), "cuda/lion/states:int8+rn/weights:fp32");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::bf16>), "cuda/lion/states:int8/weights:bf16");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8>), "cuda/lion/states:int8/weights:int8");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4>), "cuda/lion/states:int8/weights:nf4");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8, false, true>),
             "cuda/lion/states:int8/weights:int8/stable_scales");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4, false, true>),
             "cuda/lion/states:int8/weights:nf4/stable_scales");
// The same steps through the generic kernel (storage shapes read at run
// time), beside the fixed-shape rows above.
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::fp32, true>), "cuda/adamw/states:int8/weights:fp32/generic");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::fp32, true>), "cuda/lion/states:int8/weights:fp32/generic");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8, true>), "cuda/lion/states:int8/weights:int8/generic");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4, true>), "cuda/lion/states:int8/weights:nf4/generic");

}  // namespace

int main(int argc, char** argv) {
  int kept = 1;  // lowbit's --n=N is taken out; the rest goes to Google Benchmark
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--n=", 4) == 0) {
      g_n = std::atoll(argv[i] + 4);
      if (g_n <= 0) {
        std::fprintf(stderr, "bench_optimizer_cuda: --n must be a positive element count, got '%s'\n", argv[i] + 4);
        return 2;
      }
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  if (const int rc = start_gpu_benchmarks("bench_optimizer_cuda")) return rc;
  benchmark::AddCustomContext("lowbit_data", "weights and bf16 gradient drawn from N(0, 0.02^2); 3 untimed steps");
  return run_gpu_benchmarks(argc, argv, "bench_optimizer_cuda");
}
