// tests/emulation/emulator_options.hpp
// Run-time settings of the CPU CUDA emulator, the fake CUDA runtime and the
// fake cuBLAS, read once from the environment so that any program built
// against them (the emulated tests, llama_train_emulated) can be pointed at
// another device without a rebuild:
//   LOWBIT_EMULATOR_SKIP_COMPUTE=1  kernel launches and cuBLAS GEMMs return
//     at once (arguments still checked). Allocations, copies and memsets
//     still happen, so a program's sequence of device allocations, and with
//     it its peak device memory, can be traced on shapes far too large to
//     compute on a CPU (an "allocation dry run"). Outputs are garbage:
//     whatever the memory held, usually zeros.
//   LOWBIT_EMULATOR_MEMORY_REPORT=1  the fake runtime prints its peak device
//     and pinned host memory to stderr at exit (always on with
//     SKIP_COMPUTE).
//   LOWBIT_EMULATOR_ALLOCATION_LOG_MIB=N  the fake runtime prints every
//     device, managed or pinned allocation and free of at least N MiB, with
//     the memory in use after it, to stderr (where a peak comes from).
//   LOWBIT_EMULATOR_ROUND_KIB=N     device and managed allocations of at least
//     N KiB count as whole multiples of N KiB in the memory in use (default
//     0: exact sizes). A model of a GPU driver that maps large allocations
//     in pages (2048: 2 MiB pages) and packs small ones; the real rounding
//     is the driver's and is not documented, so this is a what-if.
//   LOWBIT_EMULATOR_DEVICE_MIB=N    the device's memory in MiB (default 1024):
//     cudaMemGetInfo's total, with free = total less what is in use.
//   LOWBIT_EMULATOR_SM_COUNT=N      the multiprocessor count (default 4, so
//     grid-stride loops take several laps in tests; 132 is an H100 SXM).
// Unset or empty variables give the defaults; a malformed value aborts with
// a message naming the variable (a silently ignored setting would make a
// dry run describe another device than the one asked for).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace emulator_options {

// The value of a non-negative integer variable, or fallback when unset.
inline long long env_integer(const char* name, long long fallback, long long min_value) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (*end != '\0' || x < min_value) {
    std::fprintf(stderr, "emulator: %s must be an integer >= %lld, got '%s'\n", name, min_value, v);
    std::abort();
  }
  return x;
}

inline bool skip_compute() {
  static const bool skip = env_integer("LOWBIT_EMULATOR_SKIP_COMPUTE", 0, 0) != 0;
  return skip;
}
inline bool memory_report() {
  static const bool report = env_integer("LOWBIT_EMULATOR_MEMORY_REPORT", 0, 0) != 0;
  return report;
}
inline long long allocation_log_mib() {  // -1: no log
  static const long long mib = env_integer("LOWBIT_EMULATOR_ALLOCATION_LOG_MIB", -1, 0);
  return mib;
}
inline size_t round_bytes() {
  static const size_t bytes = size_t(env_integer("LOWBIT_EMULATOR_ROUND_KIB", 0, 0)) << 10;
  return bytes;
}
inline size_t device_bytes() {
  static const size_t bytes = size_t(env_integer("LOWBIT_EMULATOR_DEVICE_MIB", 1024, 1)) << 20;
  return bytes;
}
inline int sm_count() {
  static const int n = int(env_integer("LOWBIT_EMULATOR_SM_COUNT", 4, 1));
  return n;
}

}  // namespace emulator_options
