// tests/cpu/test_parallel.cpp
// cpu::parallel_for on its worker pool: every index is visited exactly once
// whatever the size and grain, pieces run on distinct threads at the same
// time, an exception in any piece reaches the caller (and the pool keeps
// working afterwards), nested calls run inline, several user threads
// calling at once all get complete, correct results (one of them has the
// pool, the others fall back to threads of their own), and a stalled
// thread's share is run by the others.
#include <doctest/doctest.h>

#include <lowbit/cpu/parallel.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <map>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace lowbit;

namespace {

// Visits [0, n) with the given grain; returns how often each index was seen
// (an empty or out-of-range piece, which must never be passed, adds 100 to
// index 0). Safe to call from any thread: no doctest assertion inside.
std::vector<int> visit_counts(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
  cpu::parallel_for(n, grain, [&](int64_t b, int64_t e) {
    if (!(0 <= b && b < e && e <= n)) {
      seen[0].fetch_add(100);
      return;
    }
    for (int64_t i = b; i < e; ++i) seen[size_t(i)].fetch_add(1);
  });
  std::vector<int> out;
  for (auto& s : seen) out.push_back(s.load());
  return out;
}

}  // namespace

TEST_CASE("parallel_for: every index exactly once, repeatedly") {
  for (int round = 0; round < 50; ++round) {
    for (const int64_t n : {1, 2, 3, 7, 64, 1000, 4097}) {
      for (const int64_t grain : {1, 5, 1 << 20}) {
        CAPTURE(n);
        CAPTURE(grain);
        const std::vector<int> counts = visit_counts(n, grain);
        for (int64_t i = 0; i < n; ++i) REQUIRE(counts[size_t(i)] == 1);
      }
    }
  }
  int calls = 0;
  cpu::parallel_for(0, 1, [&](int64_t, int64_t) { ++calls; });
  CHECK(calls == 0);
}

TEST_CASE("parallel_for: pieces run on distinct threads at the same time") {
  const int threads = cpu::thread_count();
  if (threads < 2) {
    MESSAGE("one hardware thread (or LOWBIT_NUM_THREADS=1): the whole range runs inline");
    int calls = 0;
    cpu::parallel_for(10, 1, [&](int64_t b, int64_t e) {
      ++calls;
      CHECK(b == 0);
      CHECK(e == 10);
    });
    CHECK(calls == 1);
    return;
  }
  // Each piece waits until every piece has started: this can only finish if
  // they all run at once (a pool that ran them one after another would
  // time out and fail).
  std::atomic<int> started{0};
  std::mutex m;
  std::set<std::thread::id> ids;
  bool all_started = true;
  cpu::parallel_for(threads, 1, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lock(m);
      ids.insert(std::this_thread::get_id());
    }
    started.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (started.load() < threads) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::lock_guard<std::mutex> lock(m);
        all_started = false;
        break;
      }
      std::this_thread::yield();
    }
  });
  CHECK(all_started);
  CHECK(int(ids.size()) == threads);
  CHECK(ids.count(std::this_thread::get_id()) == 1);  // the caller takes a piece
}

TEST_CASE("parallel_for: an exception in a piece reaches the caller; the pool goes on") {
  for (const int64_t bad : {int64_t(0), int64_t(99)}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(cpu::parallel_for(100, 1,
                                           [&](int64_t b, int64_t e) {
                                             if (b <= bad && bad < e) throw std::runtime_error("piece failed");
                                           }),
                         "piece failed", std::runtime_error);
    const std::vector<int> counts = visit_counts(1000, 1);
    for (int c : counts) REQUIRE(c == 1);
  }
}

TEST_CASE("parallel_for: a nested call runs inline and completes") {
  const int64_t outer = 8, inner = 100;
  std::vector<std::atomic<int>> seen(static_cast<size_t>(outer * inner));
  std::atomic<int> elsewhere{0}, inner_calls{0};
  cpu::parallel_for(outer, 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const std::thread::id me = std::this_thread::get_id();
      cpu::parallel_for(inner, 1, [&](int64_t ib, int64_t ie) {
        inner_calls.fetch_add(1);
        if (std::this_thread::get_id() != me) elsewhere.fetch_add(1);
        for (int64_t i = ib; i < ie; ++i) seen[size_t(o * inner + i)].fetch_add(1);
      });
    }
  });
  CHECK(elsewhere.load() == 0);       // inline on the piece's thread
  CHECK(inner_calls.load() == outer);  // one whole-range call per outer index
  for (auto& s : seen) REQUIRE(s.load() == 1);
}

TEST_CASE("parallel_for: user threads calling at once all get their full range") {
  constexpr int users = 4;
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int u = 0; u < users; ++u)
    callers.emplace_back([&, u] {
      for (int round = 0; round < 200; ++round) {
        const int64_t n = 500 + u * 37 + round % 13;
        const std::vector<int> counts = visit_counts(n, 1);
        for (int c : counts)
          if (c != 1) wrong.fetch_add(1);
      }
    });
  for (auto& t : callers) t.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("parallel_for: the other threads take over a stalled thread's share") {
  const int threads = cpu::thread_count();
  if (threads < 2) {
    MESSAGE("one hardware thread (or LOWBIT_NUM_THREADS=1): nothing to take over");
    return;
  }
  // n = pieces_per_thread pieces per thread, one index each. The first
  // piece a worker runs stalls for half a second (as a thread sharing its
  // core with a busy one would); the caller's first piece waits until that
  // stall has begun, so a worker surely takes part. With equal chunks the
  // stalled thread would own pieces_per_thread indices; with claimed pieces
  // it runs its one and the others run the rest meanwhile.
  const int64_t n = int64_t(threads) * cpu::pieces_per_thread;
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> stall_begun{false};
  std::mutex m;
  std::map<std::thread::id, int64_t> ran;
  std::thread::id stalled;
  bool waited_too_long = false;
  cpu::parallel_for(n, 1, [&](int64_t b, int64_t e) {
    const std::thread::id me = std::this_thread::get_id();
    {
      std::lock_guard<std::mutex> lock(m);
      ran[me] += e - b;
    }
    if (me != caller && !stall_begun.exchange(true)) {
      {
        std::lock_guard<std::mutex> lock(m);
        stalled = me;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    } else if (me == caller && b == 0) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (!stall_begun.load()) {
        if (std::chrono::steady_clock::now() > deadline) {
          waited_too_long = true;
          break;
        }
        std::this_thread::yield();
      }
    }
  });
  REQUIRE_FALSE(waited_too_long);
  int64_t total = 0;
  for (const auto& kv : ran) total += kv.second;
  CHECK(total == n);
  CHECK(ran[stalled] == 1);
  if (threads == 2) CHECK(ran[caller] == n - 1);
}
