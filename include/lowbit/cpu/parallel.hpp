// lowbit/cpu/parallel.hpp
// The CPU kernels' only threading primitive: parallel_for over an index range
// split into equal contiguous chunks, one per hardware thread (the calling
// thread takes the first chunk). Work below `grain` items per thread runs
// inline. Results never depend on the thread count because every kernel's
// items are independent. The other chunks run on a pool of long-lived
// worker threads, started on the first parallel call and kept for the
// process; a call the pool cannot take (another thread is using it, or a
// parallel_for nested inside a chunk) falls back to threads of its own, or
// runs inline when nested, with the same chunks.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

namespace parallel_detail {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls ready() for up to `spin` (a pause instruction between polls; a
// pause lasts from about 10 to 140 cycles depending on the core, hence a
// clock rather than a count); returns whether it became true.
template <class Ready>
bool spin_until(Ready&& ready, std::chrono::microseconds spin) {
  const auto end = std::chrono::steady_clock::now() + spin;
  do {
    for (int i = 0; i < 32; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
  } while (std::chrono::steady_clock::now() < end);
  return ready();
}

// True while this thread runs a chunk of a parallel_for: a nested call then
// runs inline rather than oversubscribing the cores.
inline bool& inside_chunk() {
  static thread_local bool inside = false;
  return inside;
}

// Why a pool: a std::thread started per call costs 20 to 40 microseconds to
// start and join, and on a 2-vCPU VM the new thread was placed on the
// caller's CPU in half of the calls, so a parallel_for of two 200-microsecond
// chunks took 665 microseconds against 411 on one thread (measured,
// docs/PERFORMANCE.md, 2026-11-28 late). Long-lived workers stay on their
// own CPUs. They poll for 50 microseconds after each job (a trainer issues
// hundreds of parallel_for calls per step, back to back) and then sleep on
// a condition variable, so an idle process does not hold the cores.
class thread_pool {
 public:
  explicit thread_pool(int workers) : boxes_(size_t(std::max(workers, 0))) {
    for (int w = 0; w < workers; ++w) std::thread([this, w] { work(w); }).detach();
  }

  int workers() const { return int(boxes_.size()); }

  // Runs job(0) on the caller and job(1 .. jobs-1) on workers 0 .. jobs-2
  // (jobs - 1 <= workers()); false (nothing run) when another thread holds
  // the pool.
  bool try_run(int jobs, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    pending_.store(jobs - 1, std::memory_order_relaxed);
    // Each worker has a mailbox of its own: a worker only ever sees the job
    // posted to it, and the next one is posted after it has finished.
    for (int w = 0; w < jobs - 1; ++w) {
      boxes_[size_t(w)].job = &job;
      boxes_[size_t(w)].ticket.fetch_add(1, std::memory_order_release);
    }
    { std::lock_guard<std::mutex> lock(mutex_); }  // a worker about to sleep has checked its ticket
    wake_.notify_all();
    job(0);
    auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(done, spin_time)) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, done);
    }
    return true;
  }

 private:
  // How long a worker polls for its next job, and the caller for the
  // workers' ends, before sleeping: longer than the gaps between a
  // trainer's back-to-back calls, short enough that an idle pool soon
  // leaves the cores to others (e.g. PyTorch's own threads).
  static constexpr std::chrono::microseconds spin_time{50};

  struct alignas(64) mailbox {
    std::atomic<uint64_t> ticket{0};
    const std::function<void(int)>* job = nullptr;
  };

  void work(int w) {
    inside_chunk() = true;
    mailbox& box = boxes_[size_t(w)];
    uint64_t seen = 0;
    for (;;) {
      auto posted = [&] { return box.ticket.load(std::memory_order_acquire) != seen; };
      if (!spin_until(posted, spin_time)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, posted);
      }
      seen = box.ticket.load(std::memory_order_acquire);
      (*box.job)(w + 1);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::vector<mailbox> boxes_;
  std::mutex busy_;   // held by the one caller using the pool
  std::mutex mutex_;  // guards the sleeps and wake-ups
  std::condition_variable wake_, done_;
  std::atomic<int> pending_{0};
};

// The process's pool, made on first use with thread_count() - 1 workers and
// never destroyed (its threads are detached, so nothing waits for them at
// exit). A child made by fork() has none of its parent's threads: it gets a
// pool of its own (the parent's object is abandoned there).
inline thread_pool& pool() {
  static thread_pool* current = nullptr;
  static long owner = 0;
  static std::mutex made;
  std::lock_guard<std::mutex> lock(made);
#if defined(__unix__) || defined(__APPLE__)
  const long pid = long(getpid());
#else
  const long pid = 0;
#endif
  if (!current || owner != pid) {
    current = new thread_pool(thread_count() - 1);
    owner = pid;
  }
  return *current;
}

}  // namespace parallel_detail

// Calls body(begin, end) on disjoint sub-ranges covering [0, n).
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body&& body) {
  if (n <= 0) return;
  const int64_t max_threads = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int threads = int(std::min<int64_t>(thread_count(), max_threads));
  bool& inside = parallel_detail::inside_chunk();
  if (threads <= 1 || inside) {
    body(int64_t(0), n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto run_chunk = [&](int t) {
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    try {
      if (b < e) body(b, e);
    } catch (...) {
      errors[size_t(t)] = std::current_exception();
    }
  };
  const std::function<void(int)> job = [&](int t) { run_chunk(t); };
  struct inside_scope {  // reset even if the pool cannot start its threads
    bool& flag;
    explicit inside_scope(bool& f) : flag(f) { flag = true; }
    ~inside_scope() { flag = false; }
  } scope(inside);
  const bool pooled = parallel_detail::pool().try_run(threads, job);
  if (!pooled) {
    // The pool is busy with another caller's work: threads of our own.
    std::vector<std::thread> own;
    own.reserve(size_t(threads - 1));
    for (int t = 1; t < threads; ++t)
      own.emplace_back([&, t] {
        parallel_detail::inside_chunk() = true;
        run_chunk(t);
      });
    run_chunk(0);
    for (auto& th : own) th.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace cpu
}  // namespace lowbit
