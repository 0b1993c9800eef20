// bench/cuda_bench_support.cuh
// What every CUDA benchmark binary here shares, so that their figures are
// measured the same way: one non-blocking stream with two timing events, an
// L2 flush before each timed region (a memset over twice the L2 size, a new
// byte each time), CUDA-event timing of the work a callable enqueues, the
// device-to-device copy ceiling (median of 21 L2-flushed copies after 3
// warm-ups, once per traffic size), device storage for a quantized tensor,
// normally distributed test data drawn on
// the device (real data: constant bytes would make every warp take the same
// branches and read the same table entries), a NaN count for poisoned
// outputs, failure bookkeeping (a failed benchmark makes main return 1),
// the GPU's description in the JSON context, and the start and end of each
// binary's main (no device: exit 77). Each binary is one translation
// unit, so the definitions here are inline. Kernels launch through
// LOWBIT_LAUNCH, so the binaries also build against the CPU emulator
// (tests/emulation; bench/CMakeLists.txt runs them there as smoke tests).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <lowbit/core/dtype.hpp>
#include <lowbit/cuda/check.cuh>
#include <lowbit/cuda/launch.cuh>
#include <lowbit/formats/layout.hpp>
#include <lowbit/formats/quantized_view.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

namespace lowbit_bench {

// Owning cudaMalloc'd bytes (none for a size of 0).
class device_buffer {
 public:
  explicit device_buffer(size_t bytes) : bytes_(bytes) {
    if (bytes) LOWBIT_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~device_buffer() {
    if (ptr_) cudaFree(ptr_);
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Per-process GPU state: the stream everything runs on, the two timing
// events and the L2 flush buffer. Created on first use, never destroyed (the
// CUDA runtime may already be unloading at static destruction).
struct gpu_state {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  int l2_bytes = 0;
  device_buffer* flush = nullptr;
  unsigned flush_value = 0;
};

inline gpu_state& gpu() {
  static gpu_state* s = [] {
    auto* g = new gpu_state;
    int dev = 0;
    LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
    LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&g->l2_bytes, cudaDevAttrL2CacheSize, dev));
    LOWBIT_CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    LOWBIT_CUDA_CHECK(cudaEventCreate(&g->start));
    LOWBIT_CUDA_CHECK(cudaEventCreate(&g->stop));
    g->flush = new device_buffer(std::max<size_t>(size_t(2) * size_t(g->l2_bytes), size_t(8) << 20));
    return g;
  }();
  return *s;
}

// Overwrites a buffer twice the size of L2 so that the next timed region
// starts with no useful lines of its operands in the cache.
inline void flush_l2() {
  gpu_state& g = gpu();
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(g.flush->as<void>(), int(++g.flush_value & 0xFF), g.flush->bytes(), g.stream));
}

// Flushes L2, then returns the seconds that the work f enqueues on
// gpu().stream took, between two CUDA events.
template <class F>
double timed_on_stream(F&& f) {
  gpu_state& g = gpu();
  flush_l2();
  LOWBIT_CUDA_CHECK(cudaEventRecord(g.start, g.stream));
  f();
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  LOWBIT_CUDA_CHECK(cudaEventRecord(g.stop, g.stream));
  LOWBIT_CUDA_CHECK(cudaEventSynchronize(g.stop));
  float ms = 0.0f;
  LOWBIT_CUDA_CHECK(cudaEventElapsedTime(&ms, g.start, g.stop));
  return double(ms) * 1e-3;
}

// Median seconds of `runs` L2-flushed runs after `warm` unrecorded ones.
template <class F>
double median_seconds(F&& f, int warm, int runs) {
  for (int r = 0; r < warm; ++r) timed_on_stream(f);
  std::vector<double> s;
  for (int r = 0; r < runs; ++r) s.push_back(timed_on_stream(f));
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// A benchmark loop whose iteration time is the timed_on_stream of f (for
// UseManualTime benchmarks); returns the sum of those times.
template <class F>
double run_timed_loop(benchmark::State& state, F&& f) {
  double sum = 0.0;
  for (auto _ : state) {
    const double t = timed_on_stream(f);
    state.SetIterationTime(t);
    sum += t;
  }
  return sum;
}

// Bytes/s (read + written) of a device-to-device cudaMemcpyAsync moving
// `traffic` bytes of traffic, i.e. copying traffic/2 bytes: median of 21
// L2-flushed copies after 3 warm-ups, measured once per traffic size.
inline double copy_bandwidth(size_t traffic) {
  static std::map<size_t, double> cache;
  auto it = cache.find(traffic);
  if (it != cache.end()) return it->second;
  const size_t bytes = std::max<size_t>(traffic / 2, 1);
  device_buffer src(bytes), dst(bytes);
  cudaStream_t s = gpu().stream;
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(src.as<void>(), 0x5a, bytes, s));
  const double sec = median_seconds(
      [&] { LOWBIT_CUDA_CHECK(cudaMemcpyAsync(dst.as<void>(), src.as<void>(), bytes, cudaMemcpyDeviceToDevice, s)); },
      3, 21);
  const double bw = double(2 * bytes) / sec;
  cache.emplace(traffic, bw);
  return bw;
}

// A benchmark row of a plain device-to-device copy of `bytes` bytes, timed
// like the kernels' rows (GBps counts read + written), beside the ceiling
// copy_bandwidth measures for the same traffic.
inline void time_copy_d2d(benchmark::State& state, size_t bytes) {
  device_buffer src(bytes), dst(bytes);
  cudaStream_t s = gpu().stream;
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(src.as<void>(), 0x5a, bytes, s));
  auto copy = [&] {
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(dst.as<void>(), src.as<void>(), bytes, cudaMemcpyDeviceToDevice, s));
  };
  timed_on_stream(copy);
  const double secs = run_timed_loop(state, copy);
  const double total = 2.0 * double(bytes) * double(state.iterations());
  state.SetBytesProcessed(int64_t(total));
  state.counters["GBps"] = total / secs / 1e9;
  state.counters["copy_GBps"] = copy_bandwidth(2 * bytes) / 1e9;
  state.counters["pct_of_copy"] = 100.0 * (total / secs) / copy_bandwidth(2 * bytes);
}

// Device storage for one quantized tensor and a quantized_view of it.
struct device_quantized {
  lowbit::blockwise_layout layout;
  device_buffer codes, absmax, absmax_codes, nested_absmax, nested_offset;
  explicit device_quantized(const lowbit::blockwise_layout& l)
      : layout(l),
        codes(size_t(l.code_bytes())),
        absmax(l.nested ? 0 : size_t(4 * l.n_blocks())),
        absmax_codes(l.nested ? size_t(l.n_blocks()) : 0),
        nested_absmax(size_t(4 * l.n_nested_blocks())),
        nested_offset(l.nested ? 4 : 0) {}
  lowbit::quantized_view view() const {
    lowbit::quantized_view v;
    v.layout = layout;
    v.codes = codes.as<uint8_t>();
    v.absmax = absmax.as<float>();
    v.absmax_codes = absmax_codes.as<uint8_t>();
    v.nested_absmax = nested_absmax.as<float>();
    v.nested_offset = nested_offset.as<float>();
    v.dev = lowbit::device::cuda();
    return v;
  }
};

// Set by fail(); main returns 1 when it is set after the run.
inline bool g_failed = false;

inline void fail(benchmark::State& state, const std::string& what) {
  g_failed = true;
  state.SkipWithError(what.c_str());
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// x[i] = sd times a standard normal draw (Box-Muller on a hash of i and
// seed), its absolute value when non_negative; never exactly zero.
template <class T>
__global__ void fill_normal(T* x, int64_t n, uint64_t seed, float sd, bool non_negative) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t h = splitmix64(seed ^ (uint64_t(i) * 0xD1B54A32D192ED03ull));
    const float u1 = float((h >> 40) + 1) * 0x1p-24f;  // (0, 1]
    const float u2 = float((h >> 8) & 0xFFFFFFu) * 0x1p-24f;
    const float z = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
    x[i] = lowbit::from_float<T>(sd * (non_negative ? fabsf(z) : z));
  }
}

// Fills n elements of x on gpu().stream (see fill_normal).
template <class T>
void fill_device(T* x, int64_t n, uint64_t seed, float sd = 1.0f, bool non_negative = false) {
  LOWBIT_LAUNCH(fill_normal<T>, 1024, 256, 0, gpu().stream)(x, n, seed, sd, non_negative);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// Counts NaN elements of x into *count (outputs are poisoned with NaN bytes
// first, so a NaN left behind is an element never written).
template <class T>
__global__ void count_nan(const T* x, int64_t n, unsigned long long* count) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  unsigned long long local = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = lowbit::to_float(x[i]);
    local += v != v ? 1 : 0;  // NaN (spelled so for both nvcc and the emulator's host build)
  }
  if (local) atomicAdd(count, local);
}

// The GPU, its L2 and the CUDA versions, in the benchmark JSON's context.
inline void add_gpu_context() {
  int dev = 0, sms = 0, l2 = 0, driver = 0, runtime = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  LOWBIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  LOWBIT_CUDA_CHECK(cudaDriverGetVersion(&driver));
  LOWBIT_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  benchmark::AddCustomContext("gpu_name", prop.name);
  benchmark::AddCustomContext("gpu_sm_count", std::to_string(sms));
  benchmark::AddCustomContext("gpu_l2_bytes", std::to_string(l2));
  benchmark::AddCustomContext("gpu_global_mem_bytes", std::to_string(prop.totalGlobalMem));
  benchmark::AddCustomContext("cuda_driver_version", std::to_string(driver));
  benchmark::AddCustomContext("cuda_runtime_version", std::to_string(runtime));
}

// The start of every CUDA benchmark's main, after its own flags: 77
// (skipped, said on stderr) without a CUDA device or driver, 1 when the
// device cannot be described, 0 when the run can go on (the GPU's
// description is then in the JSON context).
inline int start_gpu_benchmarks(const char* binary) {
  if (lowbit::cuda::device_count() == 0) {
    std::fprintf(stderr,
                 "%s: no CUDA device (or no driver) is available; nothing was measured. "
                 "Exiting with code 77 (skipped).\n",
                 binary);
    return 77;
  }
  try {
    add_gpu_context();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", binary, e.what());
    return 1;
  }
  return 0;
}

// The end of every CUDA benchmark's main: hands the remaining flags to
// Google Benchmark and runs what is registered; 2 for a flag it does not
// know, 1 when any benchmark failed (fail() above), else 0.
inline int run_gpu_benchmarks(int argc, char** argv, const char* binary) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_failed) {
    std::fprintf(stderr, "%s: at least one benchmark failed (see error_message above)\n", binary);
    return 1;
  }
  return 0;
}

}  // namespace lowbit_bench
