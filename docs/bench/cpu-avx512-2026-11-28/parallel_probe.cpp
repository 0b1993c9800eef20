// Probe of cpu::parallel_for's start-up: two chunks of a fixed serial loop
// (about 390 microseconds each on the Intel Xeon VM), timed per chunk and
// per call, with the CPU each chunk ran on. Build against the include/
// of the commit to probe:
//   g++ -O2 -std=c++17 -I<repo>/include parallel_probe.cpp -o probe -pthread
#include <lowbit/cpu/parallel.hpp>
#include <chrono>
#include <cstdio>
#include <sched.h>
volatile float sink;
int main() {
  using clk = std::chrono::steady_clock;
  double total = 0;
  int same = 0;
  const int calls = 200;
  for (int c = 0; c < calls; ++c) {
    int cpu[2] = {-1, -1};
    const auto t0 = clk::now();
    lowbit::cpu::parallel_for(2, 1, [&](int64_t b, int64_t) {
      float a = 1.0f;
      for (long j = 0; j < 250000; ++j) a = a * 0.999999f + 1e-7f;
      sink = a;
      cpu[b] = sched_getcpu();
    });
    total += std::chrono::duration<double, std::micro>(clk::now() - t0).count();
    same += cpu[0] == cpu[1];
  }
  // one chunk alone, on the calling thread
  const auto t0 = clk::now();
  for (int c = 0; c < calls; ++c) {
    float a = 1.0f;
    for (long j = 0; j < 250000; ++j) a = a * 0.999999f + 1e-7f;
    sink = a;
  }
  const double one = std::chrono::duration<double, std::micro>(clk::now() - t0).count() / calls;
  std::printf("two chunks: %.1f us per call, both on one CPU in %d of %d calls; one chunk alone: %.1f us\n",
              total / calls, same, calls, one);
}
