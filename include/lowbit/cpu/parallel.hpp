// lowbit/cpu/parallel.hpp
// The CPU kernels' only threading primitive: parallel_for over an index range
// cut into equal contiguous pieces, up to a few per hardware thread, that
// the calling thread and the pool's workers claim in order from a shared
// counter until none is left (so a thread slowed by another process on its
// core does less of the work). Work below `grain` items per thread runs
// inline. Results never depend on the thread count or on which thread ran
// which piece because every kernel's items are independent. The workers
// are long-lived, started on the first parallel call and kept for the
// process; a call the pool cannot take (another thread is using it, or a
// parallel_for nested inside a piece) falls back to threads of its own, or
// runs inline when nested.
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

// True while this thread runs a piece of a parallel_for: a nested call then
// runs inline rather than oversubscribing the cores.
inline bool& inside_piece() {
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

  // Runs job() on the caller and on `helpers` workers (helpers <=
  // workers()); false (nothing run) when another thread holds the pool.
  // job must be safe to run any number of times, concurrently, and must
  // finish the work whoever runs it (parallel_for's job claims pieces until
  // none is left): the caller returns once its own job() has returned and
  // no worker is still inside one. A worker that wakes after that finds
  // the job closed and leaves it alone, so a worker that the system has not
  // yet scheduled never delays the caller.
  bool try_run(int helpers, const std::function<void()>& job) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const uint64_t id = ++last_id_;
    job_.store(&job, std::memory_order_relaxed);
    open_.store(id, std::memory_order_seq_cst);
    for (int w = 0; w < helpers; ++w) boxes_[size_t(w)].ticket.store(id, std::memory_order_release);
    { std::lock_guard<std::mutex> lock(mutex_); }  // a worker about to sleep has checked its ticket
    wake_.notify_all();
    job();
    // Close, then wait for the workers inside. A worker announces itself
    // (active_ + 1) before it checks that the job is open, and both sides
    // use sequentially consistent operations: either the caller sees it
    // active and waits, or it sees the job closed and never touches it.
    open_.store(0, std::memory_order_seq_cst);
    auto done = [&] { return active_.load(std::memory_order_seq_cst) == 0; };
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
    std::atomic<uint64_t> ticket{0};  // id of the last job posted to this worker
  };

  void work(int w) {
    inside_piece() = true;
    mailbox& box = boxes_[size_t(w)];
    uint64_t seen = 0;
    for (;;) {
      auto posted = [&] { return box.ticket.load(std::memory_order_acquire) != seen; };
      if (!spin_until(posted, spin_time)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, posted);
      }
      seen = box.ticket.load(std::memory_order_acquire);
      active_.fetch_add(1, std::memory_order_seq_cst);
      if (open_.load(std::memory_order_seq_cst) == seen) (*job_.load(std::memory_order_relaxed))();
      if (active_.fetch_sub(1, std::memory_order_seq_cst) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::vector<mailbox> boxes_;
  std::mutex busy_;   // held by the one caller using the pool
  std::mutex mutex_;  // guards the sleeps and wake-ups
  std::condition_variable wake_, done_;
  uint64_t last_id_ = 0;                   // under busy_
  std::atomic<uint64_t> open_{0};          // id of the job workers may join; 0: none
  std::atomic<const std::function<void()>*> job_{nullptr};
  std::atomic<int> active_{0};             // workers inside a job (or checking whether to enter)
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

// Pieces per thread. Why more than one: a thread that shares its core with
// another busy thread runs at half speed, and with one equal chunk per
// thread the call waits for it. That is the usual case under PyTorch, whose
// OpenMP workers spin for a while after each of its operations: a lowbit
// product called between two torch operations took twice its time alone
// (docs/PERFORMANCE.md, 2026-11-29). With several pieces each, the other
// threads take over the slow one's share; four keeps the per-piece cost
// (a claim, a kernel's setup) small.
constexpr int64_t pieces_per_thread = 4;

// Calls body(begin, end) on disjoint, non-empty sub-ranges covering [0, n):
// equal pieces of at least `grain` items (the last may be shorter), at most
// pieces_per_thread per thread, or the whole range at once when n is below
// two grains, with one thread, or nested in another call's piece.
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body&& body) {
  if (n <= 0) return;
  const int64_t max_pieces = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int threads = int(std::min<int64_t>(thread_count(), max_pieces));
  bool& inside = parallel_detail::inside_piece();
  if (threads <= 1 || inside) {
    body(int64_t(0), n);
    return;
  }
  const int64_t wanted = std::min<int64_t>(max_pieces, threads * pieces_per_thread);
  const int64_t piece = (n + wanted - 1) / wanted;
  const int64_t pieces = (n + piece - 1) / piece;  // every piece non-empty
  std::atomic<int64_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(pieces));
  auto run_pieces = [&] {
    for (int64_t p = next.fetch_add(1, std::memory_order_relaxed); p < pieces;
         p = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t b = p * piece, e = std::min(n, b + piece);
      try {
        body(b, e);
      } catch (...) {
        errors[size_t(p)] = std::current_exception();
      }
    }
  };
  const std::function<void()> job = run_pieces;
  struct inside_scope {  // reset even if the pool cannot start its threads
    bool& flag;
    explicit inside_scope(bool& f) : flag(f) { flag = true; }
    ~inside_scope() { flag = false; }
  } scope(inside);
  const bool pooled = parallel_detail::pool().try_run(threads - 1, job);
  if (!pooled) {
    // The pool is busy with another caller's work: threads of our own.
    std::vector<std::thread> own;
    own.reserve(size_t(threads - 1));
    for (int t = 1; t < threads; ++t)
      own.emplace_back([&] {
        parallel_detail::inside_piece() = true;
        run_pieces();
      });
    run_pieces();
    for (auto& th : own) th.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace cpu
}  // namespace lowbit
