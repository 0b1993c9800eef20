// bench/bench_optimizer_cuda.cu
// Google Benchmark step throughput of lowbit's fused optimizer kernel on the
// GPU (memory::device): Lion and AdamW with fp32 / int8 / int4 states (and
// int8 re-encoded to nearest, bitsandbytes' rounding) and fp32 / bf16 /
// int8 / NF4 (block 64, nested) weights, one tensor of n
// elements (default 256M; --n=N) with a bf16 gradient. Timing is manual with
// CUDA events around the fused kernel launch only (cuda_fused_step; the
// gradient-statistics pass of optimizer::step is excluded so the figure is
// the update kernel's), with the L2 cache flushed before each iteration.
// Counters: params_per_second, bytes_per_second (gradient read once; weight
// and states read and written once) and pct_of_copy against a device-to-
// device cudaMemcpy of the same traffic measured in this binary. Exits 77
// with a message when no CUDA device is present.
#include <benchmark/benchmark.h>

#include <lowbit/lowbit.cuh>

#include <cstdio>
#include <cstring>
#include <vector>

namespace {

using namespace lowbit;
using namespace lowbit::optim;

int64_t g_n = int64_t(256) << 20;

struct l2_flusher {
  void* buf = nullptr;
  size_t bytes = 0;
  l2_flusher() {
    int dev = 0, l2 = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
    bytes = size_t(l2) * 4;
    cudaMalloc(&buf, bytes);
  }
  void flush() { cudaMemsetAsync(buf, int(bytes & 0x7F), bytes); }
};

l2_flusher& flusher() {
  static l2_flusher f;
  return f;
}

// Device-to-device copy bandwidth (read + write bytes per second).
double copy_bandwidth() {
  static double bw = [] {
    const size_t bytes = size_t(1) << 30;
    void *a = nullptr, *b = nullptr;
    LOWBIT_CUDA_CHECK(cudaMalloc(&a, bytes));
    LOWBIT_CUDA_CHECK(cudaMalloc(&b, bytes));
    cudaEvent_t s, e;
    cudaEventCreate(&s);
    cudaEventCreate(&e);
    float best = 1e30f;
    for (int i = 0; i < 10; ++i) {
      flusher().flush();
      cudaEventRecord(s);
      cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
      cudaEventRecord(e);
      cudaEventSynchronize(e);
      float ms = 0;
      cudaEventElapsedTime(&ms, s, e);
      if (i > 0) best = std::min(best, ms);
    }
    cudaFree(a);
    cudaFree(b);
    return 2.0 * double(bytes) / (double(best) * 1e-3);
  }();
  return bw;
}

// Times `body` (which launches on the default stream) with CUDA events.
template <class Body>
void time_loop(benchmark::State& state, Body body) {
  cudaEvent_t s, e;
  cudaEventCreate(&s);
  cudaEventCreate(&e);
  for (auto _ : state) {
    flusher().flush();
    cudaEventRecord(s);
    body();
    cudaEventRecord(e);
    cudaEventSynchronize(e);
    float ms = 0;
    cudaEventElapsedTime(&ms, s, e);
    state.SetIterationTime(double(ms) * 1e-3);
  }
  cudaEventDestroy(s);
  cudaEventDestroy(e);
}

void counters(benchmark::State& state, int64_t n, double traffic, double bytes_per_param) {
  state.counters["params_per_second"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_second"] = benchmark::Counter(traffic, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_of_copy"] =
      benchmark::Counter(100.0 * traffic / copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes_per_param"] = bytes_per_param;
}

void* device_random(size_t bytes) {
  void* p = nullptr;
  LOWBIT_CUDA_CHECK(cudaMalloc(&p, bytes));
  LOWBIT_CUDA_CHECK(cudaMemset(p, 0x3c, bytes));  // 0x3c3c bf16 ~ 0.0115, 0x3c3c3c3c f32 ~ 0.0115
  return p;
}

// Generic: run the generic instantiation of the step kernel even where a
// fixed-shape one exists (cuda_detail::fixed_shape_list), to measure what
// the specialization buys in the same binary.
struct generic_kernel_scope {
  bool was;
  explicit generic_kernel_scope(bool on) : was(cuda_detail::generic_step_kernel_only.exchange(on)) {}
  ~generic_kernel_scope() { cuda_detail::generic_step_kernel_only = was; }
};

template <class Rule, class States, class Weights, bool Generic = false>
void bm_dense(benchmark::State& state) {
  const generic_kernel_scope scope(Generic);
  const int64_t n = g_n;
  const dtype wt = Weights::weight_dtype;
  void* w = device_random(size_t(n) * dtype_size(wt));
  void* g = device_random(size_t(n) * 2);
  {
    optimizer<Rule, States, Weights, memory::device> opt;
    opt.add_param(make_view(w, wt, {n}, device::cuda()));
    fused_step_args a = step_args_for(opt.param(0));
    a.grad = g;
    a.grad_type = dtype::bf16;
    a.weight_stochastic = Weights::stochastic;
    a.state_stochastic = States::stochastic;
    const auto c = Rule::make_consts(typename Rule::hparams{}, 1);
    time_loop(state, [&] { cuda_fused_step<Rule>(a, c, nullptr); ++a.step; });
    const memory_report m = opt.memory();
    counters(state, n, double(n) * 2 + 2.0 * double(m.weight_bytes + m.master_bytes + m.state_bytes), m.bytes_per_param());
  }
  cudaFree(w);
  cudaFree(g);
}

template <class Rule, class States, format F, bool Generic = false>
void bm_quantized(benchmark::State& state) {
  const generic_kernel_scope scope(Generic);
  const int64_t n = g_n;
  const blockwise_layout l = make_layout(F, n, F == format::int8 ? 256 : 64, F == format::nf4);
  quantized_view q;
  q.layout = l;
  q.codes = static_cast<uint8_t*>(device_random(size_t(l.code_bytes())));
  if (l.nested) {
    q.absmax_codes = static_cast<uint8_t*>(device_random(size_t(l.n_blocks())));
    q.nested_absmax = static_cast<float*>(device_random(size_t(l.n_nested_blocks()) * 4));
    q.nested_offset = static_cast<float*>(device_random(4));
  } else {
    q.absmax = static_cast<float*>(device_random(size_t(l.n_blocks()) * 4));
  }
  q.dev = device::cuda();
  void* g = device_random(size_t(n) * 2);
  {
    optimizer<Rule, States, weights::quantized<F>, memory::device> opt;
    opt.add_param(q);
    fused_step_args a = step_args_for(opt.param(0));
    a.grad = g;
    a.grad_type = dtype::bf16;
    a.state_stochastic = States::stochastic;
    const auto c = Rule::make_consts(typename Rule::hparams{}, 1);
    time_loop(state, [&] { cuda_fused_step<Rule>(a, c, nullptr); ++a.step; });
    const memory_report m = opt.memory();
    counters(state, n, double(n) * 2 + 2.0 * double(m.weight_bytes + m.state_bytes), m.bytes_per_param());
  }
  for (void* p : {static_cast<void*>(q.codes), static_cast<void*>(q.absmax), static_cast<void*>(q.absmax_codes),
                  static_cast<void*>(q.nested_absmax), static_cast<void*>(q.nested_offset), g})
    if (p) cudaFree(p);
}

void bm_copy(benchmark::State& state) {
  const size_t bytes = size_t(g_n) * 4;
  void* a = device_random(bytes);
  void* b = device_random(bytes);
  time_loop(state, [&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); });
  state.counters["bytes_per_second"] = benchmark::Counter(2.0 * double(bytes), benchmark::Counter::kIsIterationInvariantRate);
  cudaFree(a);
  cudaFree(b);
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
// The same steps through the generic kernel (storage shapes read at run
// time), beside the fixed-shape rows above.
LOWBIT_BENCH((bm_dense<adamw, states::int8, weights::fp32, true>), "cuda/adamw/states:int8/weights:fp32/generic");
LOWBIT_BENCH((bm_dense<lion, states::int8, weights::fp32, true>), "cuda/lion/states:int8/weights:fp32/generic");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::int8, true>), "cuda/lion/states:int8/weights:int8/generic");
LOWBIT_BENCH((bm_quantized<lion, states::int8, format::nf4, true>), "cuda/lion/states:int8/weights:nf4/generic");

}  // namespace

int main(int argc, char** argv) {
  if (lowbit::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_optimizer_cuda: no CUDA device available; nothing measured\n");
    return 77;
  }
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--n=", 4) == 0) g_n = std::atoll(argv[i] + 4);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
