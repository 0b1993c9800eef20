// bench/bench_quantize_cpu.cpp
// Google Benchmark throughput of lowbit::cpu::quantize and
// lowbit::cpu::dequantize for every format (nf4, fp4, int4, int8, dynamic8,
// udynamic8, dynamic4, ulinear4) with float32 block scales, plus nf4 with
// nested (double-quantized) scales, on float32, bfloat16 and float16 dense tensors of n elements (default 64M:
// even the smallest case, bf16 to nf4, moves 164 MiB, five times a 32 MiB L3;
// --n=N changes it). Each row reports
// bytes_per_second counting the least traffic the call must make (the dense
// tensor once plus the quantized storage, layout.total_bytes(), once) and
// `copy_ratio`: that rate over the rate of a multithreaded memcpy that moves
// the same traffic (half as many bytes copied, each read once and written
// once), measured in this binary on first use for each traffic size (median
// of at least 15 timed copies spanning at least 0.25 s, after one warm-up;
// cached) and shown as `copy_GBps`.
// Both sides run on lowbit::cpu::parallel_for's threads (LOWBIT_NUM_THREADS
// or all hardware threads) and are timed on the wall clock (UseRealTime);
// `cpu_util` (process CPU time / (wall time x threads)) flags rows that other
// load on the machine slowed down.
#include <benchmark/benchmark.h>

#include <lowbit/cpu/quantize.hpp>

#include "quantize_bench_variants.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using lowbit_bench::quantize_variant;
using lowbit_bench::quantize_variant_suffix;
using lowbit_bench::quantize_variants;

constexpr int64_t default_n = int64_t(64) << 20;
constexpr int block_size = 64;  // bitsandbytes' default for 4-bit weights

bool g_failed = false;  // a benchmark reported an error: main returns 1

// Normally distributed inputs (|x| for the unsigned formats udynamic8 and
// ulinear4), generated once per dtype, size and sign; never zeros, which
// could run faster than real data.
template <class T>
const std::vector<T>& normal_input(int64_t n, bool non_negative) {
  static std::map<std::pair<int64_t, bool>, std::vector<T>> cache;
  auto key = std::make_pair(n, non_negative);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<T> v(static_cast<size_t>(n));
  std::mt19937_64 rng(0x10b17 + uint64_t(n));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& x : v) {
    float f = dist(rng);
    x = lowbit::from_float<T>(non_negative ? std::fabs(f) : f);
  }
  return cache.emplace(key, std::move(v)).first->second;
}

// Copies `bytes` from src to dst on lowbit's CPU threads, 64 KiB chunks.
void parallel_memcpy(uint8_t* dst, const uint8_t* src, size_t bytes) {
  constexpr int64_t chunk = 64 << 10;
  const int64_t chunks = int64_t((bytes + chunk - 1) / chunk);
  lowbit::cpu::parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    const size_t b = size_t(c0 * chunk), e = std::min(bytes, size_t(c1 * chunk));
    std::memcpy(dst + b, src + b, e - b);
  });
}

using wall_clock = std::chrono::steady_clock;

double seconds_since(wall_clock::time_point t0) {
  return std::chrono::duration<double>(wall_clock::now() - t0).count();
}

// CPU time of the whole process (all threads), in seconds.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Wall clock and process CPU clock, started together around a timed loop.
// util() is process CPU time over wall time x lowbit's thread count: near 1
// when every worker ran all the time, well below 1 when other load on the
// machine took cores away (then a figure says more about the machine than
// about the code).
struct loop_timer {
  wall_clock::time_point wall0 = wall_clock::now();
  double cpu0 = process_cpu_seconds();
  double wall() const { return seconds_since(wall0); }
  double cpu() const { return process_cpu_seconds() - cpu0; }
  double util() const { return cpu() / (wall() * double(lowbit::cpu::thread_count())); }
};

struct copy_ceiling {
  double bytes_per_second;  // bytes read + bytes written
  double cpu_util;          // loop_timer::util() over the timed copies
};

// The multithreaded memcpy ceiling for `traffic` bytes of traffic, i.e.
// copying traffic/2 bytes. Measured on first use for each traffic size: one
// warm-up, then the median of at least 15 copies and of as many as fit in
// 0.25 s (a longer window than a handful of copies, so that a burst of load on
// a shared machine moves it less).
copy_ceiling copy_bandwidth(size_t traffic) {
  static std::map<size_t, copy_ceiling> cache;
  auto it = cache.find(traffic);
  if (it != cache.end()) return it->second;
  const size_t bytes = traffic / 2;
  std::vector<uint8_t> src(bytes), dst(bytes, 0);
  for (size_t i = 0; i < bytes; ++i) src[i] = uint8_t(i * 2654435761u >> 13);
  parallel_memcpy(dst.data(), src.data(), bytes);
  std::vector<double> secs;
  const loop_timer timer;
  for (int r = 0; r < 15 || timer.wall() < 0.25; ++r) {
    const auto t0 = wall_clock::now();
    parallel_memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
    secs.push_back(seconds_since(t0));
  }
  const double util = timer.util();
  std::sort(secs.begin(), secs.end());
  const copy_ceiling c{double(2 * bytes) / secs[secs.size() / 2], util};
  if (std::memcmp(dst.data(), src.data(), bytes) != 0) {
    std::fprintf(stderr, "bench_quantize_cpu: memcpy baseline copied wrong bytes\n");
    std::exit(1);
  }
  cache.emplace(traffic, c);
  return c;
}

// Sets bytes_per_second (Google Benchmark's, over its real time) and the
// plain counters GBps, copy_GBps and copy_ratio for `bytes` of traffic per
// iteration, over the wall time of the whole timed loop; cpu_util and
// copy_cpu_util (loop_timer::util) of the loop and of the copy ceiling.
void report(benchmark::State& state, size_t bytes, const loop_timer& timer) {
  const double loop_seconds = timer.wall();
  const double util = timer.util();
  const double total = double(bytes) * double(state.iterations());
  const double rate = total / loop_seconds;
  const copy_ceiling copy = copy_bandwidth(bytes);
  state.SetBytesProcessed(int64_t(total));
  state.counters["GBps"] = rate / 1e9;
  state.counters["copy_GBps"] = copy.bytes_per_second / 1e9;
  state.counters["copy_ratio"] = rate / copy.bytes_per_second;
  state.counters["cpu_util"] = util;
  state.counters["copy_cpu_util"] = copy.cpu_util;
}

void fail(benchmark::State& state, const char* what) {
  g_failed = true;
  state.SkipWithError(what);
}

template <class T>
void bm_quantize(benchmark::State& state, lowbit::format fmt, bool nested) {
  const int64_t n = state.range(0);
  try {
    const auto& x = normal_input<T>(n, lowbit::is_unsigned_format(fmt));
    lowbit::quantized_tensor q(lowbit::make_layout(fmt, n, block_size, nested));
    const lowbit::tensor_view in = lowbit::make_flat_view(x.data(), n);
    const lowbit::quantized_view out = q.view();
    lowbit::cpu::quantize(in, out);  // warm-up (and first-touch of q)
    const loop_timer timer;
    for (auto _ : state) {
      lowbit::cpu::quantize(in, out);
      benchmark::DoNotOptimize(q.codes.data());
      benchmark::ClobberMemory();
    }
    report(state, size_t(n) * sizeof(T) + size_t(q.layout.total_bytes()), timer);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

template <class T>
void bm_dequantize(benchmark::State& state, lowbit::format fmt, bool nested) {
  const int64_t n = state.range(0);
  try {
    const auto& x = normal_input<T>(n, lowbit::is_unsigned_format(fmt));
    lowbit::quantized_tensor q(lowbit::make_layout(fmt, n, block_size, nested));
    lowbit::cpu::quantize(lowbit::make_flat_view(x.data(), n), q.view());
    // poisoned output: a NaN pattern that every element must overwrite
    std::vector<T> y(static_cast<size_t>(n), lowbit::from_float<T>(std::nanf("")));
    const lowbit::tensor_view out = lowbit::make_flat_view(y.data(), n);
    lowbit::cpu::dequantize(q.view(), out);
    for (int64_t i = 0; i < n; i += 4093) {
      if (std::isnan(lowbit::to_float(y[size_t(i)]))) {
        fail(state, "dequantize left a poisoned element");
        return;
      }
    }
    const loop_timer timer;
    for (auto _ : state) {
      lowbit::cpu::dequantize(q.view(), out);
      benchmark::DoNotOptimize(y.data());
      benchmark::ClobberMemory();
    }
    report(state, size_t(n) * sizeof(T) + size_t(q.layout.total_bytes()), timer);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}

void bm_memcpy(benchmark::State& state) {
  const size_t bytes = size_t(state.range(0));
  std::vector<uint8_t> src(bytes, 0x5a), dst(bytes, 0);
  parallel_memcpy(dst.data(), src.data(), bytes);
  const loop_timer timer;
  for (auto _ : state) {
    parallel_memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
  }
  const double secs = timer.wall();
  const double total = 2.0 * double(bytes) * double(state.iterations());
  state.SetBytesProcessed(int64_t(total));
  state.counters["GBps"] = total / secs / 1e9;
  state.counters["cpu_util"] = timer.util();
}

template <class T>
void register_dtype(const char* dtype_name, int64_t n) {
  for (const quantize_variant& v : quantize_variants) {
    const std::string suffix = quantize_variant_suffix(v, dtype_name);
    benchmark::RegisterBenchmark(("quantize/" + suffix).c_str(), bm_quantize<T>, v.fmt, v.nested)
        ->ArgName("n")
        ->Arg(n)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("dequantize/" + suffix).c_str(), bm_dequantize<T>, v.fmt, v.nested)
        ->ArgName("n")
        ->Arg(n)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = default_n;
  // lowbit's own flag --n=N (elements); the rest goes to Google Benchmark.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--n=", 4) == 0) {
      n = std::atoll(argv[i] + 4);
      if (n <= 0) {
        std::fprintf(stderr, "bench_quantize_cpu: --n must be a positive element count\n");
        return 2;
      }
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;

  benchmark::RegisterBenchmark("memcpy_mt", bm_memcpy)
      ->ArgName("bytes")
      ->Arg(n * 4)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  register_dtype<float>("f32", n);
  register_dtype<lowbit::bf16>("bf16", n);
  register_dtype<lowbit::fp16>("f16", n);  // Hugging Face checkpoints in float16

  benchmark::AddCustomContext("lowbit_threads", std::to_string(lowbit::cpu::thread_count()));
  benchmark::AddCustomContext("lowbit_block_size", std::to_string(block_size));
  benchmark::AddCustomContext("lowbit_copy_baseline",
                              "multithreaded memcpy moving the same read+write traffic, median of >= 15 copies "
                              "spanning >= 0.25 s after a warm-up, measured once per traffic size on first use");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (g_failed) {
    std::fprintf(stderr, "bench_quantize_cpu: at least one benchmark failed (see error_message above)\n");
    return 1;
  }
  return 0;
}
