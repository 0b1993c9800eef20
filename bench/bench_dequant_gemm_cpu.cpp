// bench/bench_dequant_gemm_cpu.cpp
// Google Benchmark throughput of lowbit::cpu::dequant_gemm_forward and
// lowbit::cpu::dequant_gemm_backward_input for a 4096 x 4096 weight (the size
// of one LLM projection) in NF4 with nested scales and in int8 with float32
// scales, float32 activations, M in {1, 16, 64} (and 2048, a training
// step's rows, for int8), beside the dense float32 products a trainer runs
// on the same kernel (cpu::gemm_forward, and cpu::gemm_weight_grad: dW =
// dY^T X, M the reduction), and those three dense products on the default
// trainer's shapes (tiny_*: M = 2048 tokens, N x K = 128 x 128, 352 x 128
// and 128 x 352, the attention, gate/up and down projections of
// examples/llama's tiny preset). Each row reports GFLOPs
// (2 M N K flops over wall time) and GBps: the least traffic the call must
// make (the quantized weight's layout.total_bytes() plus X and Y once) over
// wall time; at M = 1 the call is a GEMV bound by reading W. Runs on
// lowbit::cpu::parallel_for's threads (LOWBIT_NUM_THREADS or all hardware
// threads), timed on the wall clock (UseRealTime).
#include <benchmark/benchmark.h>

#include <lowbit/cpu/dequant_gemm.hpp>
#include <lowbit/cpu/gemm.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace {

constexpr int64_t N = 4096, K = 4096;


// The quantized weight of normal values, built once per format.
lowbit::quantized_tensor& weight_of(lowbit::format f, bool nested) {
  static lowbit::quantized_tensor nf4, i8;
  lowbit::quantized_tensor& q = f == lowbit::format::nf4 ? nf4 : i8;
  if (q.layout.n == 0) {
    std::vector<float> w(size_t(N * K));
    std::mt19937_64 rng(7);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (auto& v : w) v = d(rng);
    q = lowbit::quantized_tensor(lowbit::make_layout(f, N * K, 64, nested));
    lowbit::cpu::quantize(lowbit::make_flat_view(w.data(), N * K), q.view());
  }
  return q;
}

void run(benchmark::State& state, lowbit::format f, bool nested, bool backward) {
  const int64_t M = state.range(0);
  lowbit::quantized_tensor& q = weight_of(f, nested);
  std::vector<float> x(size_t(M * (backward ? N : K)), 0.5f), y(size_t(M * (backward ? K : N)));
  for (auto _ : state) {
    if (backward)
      lowbit::cpu::dequant_gemm_backward_input(lowbit::make_view(x.data(), {M, N}), q.view(), N, K,
                                               lowbit::make_view(y.data(), {M, K}));
    else
      lowbit::cpu::dequant_gemm_forward(lowbit::make_view(x.data(), {M, K}), q.view(), N, K, nullptr,
                                        lowbit::make_view(y.data(), {M, N}));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations());
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * double(M) * N * K * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GBps"] = benchmark::Counter(
      (double(q.layout.total_bytes()) + 4.0 * double(x.size() + y.size())) * iters / 1e9, benchmark::Counter::kIsRate);
}

// Dense float32: Y = X W^T (forward) or dW = dY^T X (weight gradient) on
// the 4096 x 4096 shape; GBps counts W (or dW), X and Y (or dY) once.
void dense(benchmark::State& state, bool weight_grad) {
  const int64_t M = state.range(0);
  std::vector<float> w(size_t(N * K), 0.25f), x(size_t(M * K), 0.5f), y(size_t(M * N), 0.75f);
  for (auto _ : state) {
    if (weight_grad)
      lowbit::cpu::gemm_weight_grad(lowbit::make_view(y.data(), {M, N}), lowbit::make_view(x.data(), {M, K}),
                                    lowbit::make_view(w.data(), {N, K}), false);
    else
      lowbit::cpu::gemm_forward(lowbit::make_view(x.data(), {M, K}), lowbit::make_view(w.data(), {N, K}), nullptr,
                                lowbit::make_view(y.data(), {M, N}));
    benchmark::DoNotOptimize(weight_grad ? w.data() : y.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations());
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * double(M) * N * K * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GBps"] =
      benchmark::Counter(4.0 * double(w.size() + x.size() + y.size()) * iters / 1e9, benchmark::Counter::kIsRate);
}

// The trainer's dense products at M = 2048: which 0 = forward (Y = X W^T),
// 1 = input gradient (dX = dY W), 2 = weight gradient (dW = dY^T X).
// GBps counts W, X and Y once.
void tiny(benchmark::State& state, int which) {
  const int64_t M = 2048, n = state.range(0), k = state.range(1);
  std::vector<float> w(size_t(n * k), 0.25f), x(size_t(M * k), 0.5f), y(size_t(M * n), 0.75f);
  for (auto _ : state) {
    if (which == 0)
      lowbit::cpu::gemm_forward(lowbit::make_view(x.data(), {M, k}), lowbit::make_view(w.data(), {n, k}), nullptr,
                                lowbit::make_view(y.data(), {M, n}));
    else if (which == 1)
      lowbit::cpu::gemm_backward_input(lowbit::make_view(y.data(), {M, n}), lowbit::make_view(w.data(), {n, k}),
                                       lowbit::make_view(x.data(), {M, k}));
    else
      lowbit::cpu::gemm_weight_grad(lowbit::make_view(y.data(), {M, n}), lowbit::make_view(x.data(), {M, k}),
                                    lowbit::make_view(w.data(), {n, k}), false);
    benchmark::DoNotOptimize(x.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations());
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * double(M) * n * k * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GBps"] =
      benchmark::Counter(4.0 * double(w.size() + x.size() + y.size()) * iters / 1e9, benchmark::Counter::kIsRate);
}
void tiny_fwd_f32(benchmark::State& s) { tiny(s, 0); }
void tiny_bwd_f32(benchmark::State& s) { tiny(s, 1); }
void tiny_wgrad_f32(benchmark::State& s) { tiny(s, 2); }

void fwd_f32_dense(benchmark::State& s) { dense(s, false); }
void wgrad_f32_dense(benchmark::State& s) { dense(s, true); }

void fwd_nf4_nested(benchmark::State& s) { run(s, lowbit::format::nf4, true, false); }
void fwd_int8(benchmark::State& s) { run(s, lowbit::format::int8, false, false); }
void bwd_nf4_nested(benchmark::State& s) { run(s, lowbit::format::nf4, true, true); }
void bwd_int8(benchmark::State& s) { run(s, lowbit::format::int8, false, true); }

}  // namespace

BENCHMARK(fwd_nf4_nested)->Arg(1)->Arg(16)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(fwd_int8)->Arg(1)->Arg(16)->Arg(64)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bwd_nf4_nested)->Arg(1)->Arg(16)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(bwd_int8)->Arg(1)->Arg(16)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(fwd_f32_dense)->Arg(64)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(wgrad_f32_dense)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);
#define LOWBIT_TINY_SHAPES ->Args({128, 128})->Args({352, 128})->Args({128, 352})->UseRealTime()->Unit(benchmark::kMicrosecond)
BENCHMARK(tiny_fwd_f32) LOWBIT_TINY_SHAPES;
BENCHMARK(tiny_bwd_f32) LOWBIT_TINY_SHAPES;
BENCHMARK(tiny_wgrad_f32) LOWBIT_TINY_SHAPES;
BENCHMARK_MAIN();
