// bench/bench_quantize_cuda.cu
// Google Benchmark throughput of lowbit::cuda::quantize (check_finite=false,
// so no host synchronization inside the timed region) and
// lowbit::cuda::dequantize for every format (nf4, fp4, int4, int8, dynamic8,
// udynamic8, dynamic4, ulinear4; |x| input for the unsigned ones) with
// float32 block scales, plus
// nf4 with nested (double-quantized) scales, on float32 and bfloat16 dense
// tensors of 64M and 256M elements (--n=N runs one size instead). Each
// iteration first flushes L2 (cudaMemsetAsync over twice the device's L2
// size), then times the library call alone with CUDA events
// (UseManualTime). Rows report bytes_per_second and `GBps` for the least
// traffic the call must make (the dense tensor once plus the quantized
// storage, layout.total_bytes(), once), and `pct_of_copy`: that rate as a
// percentage of a device-to-device cudaMemcpyAsync moving the same traffic
// (half as many bytes copied, each read once and written once), measured in
// this binary on first use per traffic size (median of 21 L2-flushed copies
// after 3 warm-ups) and shown as `copy_GBps`; the `copy_d2d` rows time such
// copies as ordinary benchmarks. Without a CUDA device the binary says so on
// stderr and exits 77; a failed benchmark makes it exit 1.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <lowbit/cuda/check.cuh>
#include <lowbit/cuda/quantize.cuh>
#include <lowbit/formats/layout.hpp>
#include <lowbit/formats/quantized_view.hpp>

#include "cuda_bench_support.cuh"
#include "quantize_bench_variants.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

constexpr int block_size = 64;  // bitsandbytes' default for 4-bit weights
constexpr int64_t default_sizes[] = {int64_t(64) << 20, int64_t(256) << 20};

using namespace lowbit_bench;

// Fails the benchmark unless the device has `bytes` free, with 256 MiB spare.
bool have_memory(benchmark::State& state, size_t bytes) {
  size_t free_b = 0, total_b = 0;
  LOWBIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (bytes + (size_t(256) << 20) <= free_b) return true;
  fail(state, "needs " + std::to_string(bytes >> 20) + " MiB of device memory, " + std::to_string(free_b >> 20) +
                  " MiB free");
  return false;
}

// Sets bytes_per_second (Google Benchmark's, over the manual time) and the
// plain counters GBps, copy_GBps and pct_of_copy for `bytes` of traffic per
// iteration over `event_seconds`, the sum of the iterations' CUDA-event
// times (the same sum Google Benchmark reports as the manual time).
void report(benchmark::State& state, size_t bytes, double event_seconds) {
  const double total = double(bytes) * double(state.iterations());
  const double rate = total / event_seconds;
  const double copy_bw = copy_bandwidth(bytes);
  state.SetBytesProcessed(int64_t(total));
  state.counters["GBps"] = rate / 1e9;
  state.counters["copy_GBps"] = copy_bw / 1e9;
  state.counters["pct_of_copy"] = 100.0 * rate / copy_bw;
}

template <class T>
void bm_quantize(benchmark::State& state, lowbit::format fmt, bool nested) {
  const int64_t n = state.range(0);
  try {
    const auto layout = lowbit::make_layout(fmt, n, block_size, nested);
    if (!have_memory(state, size_t(n) * sizeof(T) + size_t(layout.total_bytes()))) return;
    device_buffer x(size_t(n) * sizeof(T));
    device_quantized q(layout);
    fill_device(x.as<T>(), n, 0x10b17 + uint64_t(n), 1.0f, lowbit::is_unsigned_format(fmt));
    const lowbit::tensor_view in = lowbit::make_flat_view(x.as<T>(), n, lowbit::device::cuda());
    const lowbit::quantized_view out = q.view();
    cudaStream_t s = gpu().stream;
    lowbit::cuda::quantize(in, out, s, /*check_finite=*/true);  // warm-up; validates the input once
    const double secs = run_timed_loop(state, [&] { lowbit::cuda::quantize(in, out, s, /*check_finite=*/false); });
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s));
    report(state, size_t(n) * sizeof(T) + size_t(layout.total_bytes()), secs);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

template <class T>
void bm_dequantize(benchmark::State& state, lowbit::format fmt, bool nested) {
  const int64_t n = state.range(0);
  try {
    const auto layout = lowbit::make_layout(fmt, n, block_size, nested);
    if (!have_memory(state, 2 * size_t(n) * sizeof(T) + size_t(layout.total_bytes()))) return;
    device_quantized q(layout);
    device_buffer y(size_t(n) * sizeof(T));
    cudaStream_t s = gpu().stream;
    {
      device_buffer x(size_t(n) * sizeof(T));
      fill_device(x.as<T>(), n, 0x10b17 + uint64_t(n), 1.0f, lowbit::is_unsigned_format(fmt));
      lowbit::cuda::quantize(lowbit::make_flat_view(x.as<T>(), n, lowbit::device::cuda()), q.view(), s, true);
      LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s));
    }
    const lowbit::tensor_view out = lowbit::make_flat_view(y.as<T>(), n, lowbit::device::cuda());
    const lowbit::quantized_view in = q.view();
    // poison the output with NaN bytes, dequantize once, count what is left
    LOWBIT_CUDA_CHECK(cudaMemsetAsync(y.as<void>(), 0xFF, y.bytes(), s));
    lowbit::cuda::dequantize(in, out, s);
    device_buffer nan_count(sizeof(unsigned long long));
    LOWBIT_CUDA_CHECK(cudaMemsetAsync(nan_count.as<void>(), 0, nan_count.bytes(), s));
    LOWBIT_LAUNCH(count_nan<T>, 1024, 256, 0, s)(y.as<T>(), n, nan_count.as<unsigned long long>());
    LOWBIT_CUDA_CHECK(cudaGetLastError());
    unsigned long long unwritten = 0;
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(&unwritten, nan_count.as<void>(), sizeof unwritten, cudaMemcpyDeviceToHost, s));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s));
    if (unwritten) {
      fail(state, "dequantize left " + std::to_string(unwritten) + " poisoned (unwritten) elements");
      return;
    }
    const double secs = run_timed_loop(state, [&] { lowbit::cuda::dequantize(in, out, s); });
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s));
    report(state, size_t(n) * sizeof(T) + size_t(layout.total_bytes()), secs);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

// A plain device-to-device copy of `bytes` bytes; GBps counts read + written.
void bm_copy_d2d(benchmark::State& state) {
  const size_t bytes = size_t(state.range(0));
  try {
    if (!have_memory(state, 2 * bytes)) return;
    time_copy_d2d(state, bytes);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

template <class T>
void register_dtype(const char* dtype_name, int64_t n) {
  for (const quantize_variant& v : quantize_variants) {
    const std::string suffix = quantize_variant_suffix(v, dtype_name);
    benchmark::RegisterBenchmark(("quantize/" + suffix).c_str(), bm_quantize<T>, v.fmt, v.nested)
        ->ArgName("n")
        ->Arg(n)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("dequantize/" + suffix).c_str(), bm_dequantize<T>, v.fmt, v.nested)
        ->ArgName("n")
        ->Arg(n)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes(std::begin(default_sizes), std::end(default_sizes));
  // lowbit's own flag --n=N (elements) runs one size; the rest goes to
  // Google Benchmark.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--n=", 4) == 0) {
      const int64_t n = std::atoll(argv[i] + 4);
      if (n <= 0) {
        std::fprintf(stderr, "bench_quantize_cuda: --n must be a positive element count\n");
        return 2;
      }
      sizes = {n};
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;

  if (const int rc = start_gpu_benchmarks("bench_quantize_cuda")) return rc;
  benchmark::AddCustomContext("lowbit_block_size", std::to_string(block_size));
  benchmark::AddCustomContext("lowbit_timing",
                              "CUDA events around the library call alone; L2 flushed (memset of 2x L2) before "
                              "each iteration; pct_of_copy against a D2D cudaMemcpyAsync moving the same "
                              "read+write traffic (median of 21 after 3 warm-ups)");

  for (int64_t n : sizes) {
    benchmark::RegisterBenchmark("copy_d2d", bm_copy_d2d)
        ->ArgName("bytes")
        ->Arg(n * 4)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    register_dtype<float>("f32", n);
    register_dtype<lowbit::bf16>("bf16", n);
  }

  return run_gpu_benchmarks(argc, argv, "bench_quantize_cuda");
}
