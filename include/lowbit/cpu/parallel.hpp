// lowbit/cpu/parallel.hpp
// The CPU kernels' only threading primitive: parallel_for over an index range
// split into equal contiguous chunks, one per hardware thread, run on
// std::threads (the calling thread takes the first chunk). Work below `grain`
// items per thread runs inline. Results never depend on the thread count
// because every kernel's items are independent.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace lowbit {
namespace cpu {

// Number of worker threads: LOWBIT_NUM_THREADS if set, else the hardware's.
inline int thread_count() {
  static const int n = [] {
    if (const char* e = std::getenv("LOWBIT_NUM_THREADS")) {
      const int v = std::atoi(e);
      if (v > 0) return v;
    }
    const unsigned h = std::thread::hardware_concurrency();
    return h ? int(h) : 1;
  }();
  return n;
}

// Calls body(begin, end) on disjoint sub-ranges covering [0, n).
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body&& body) {
  if (n <= 0) return;
  const int64_t max_threads = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int threads = int(std::min<int64_t>(thread_count(), max_threads));
  if (threads <= 1) {
    body(int64_t(0), n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  pool.reserve(size_t(threads - 1));
  for (int t = 1; t < threads; ++t) {
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    pool.emplace_back([&, t, b, e] {
      try {
        if (b < e) body(b, e);
      } catch (...) {
        errors[size_t(t)] = std::current_exception();
      }
    });
  }
  try {
    body(int64_t(0), std::min(n, chunk));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace cpu
}  // namespace lowbit
