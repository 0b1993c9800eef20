// tests/emulation/cuda_emulator.hpp
// A small, deterministic CUDA execution emulator, so that CUDA kernels (all
// of the library's: quantize / dequantize, dequantize_rows, the fused
// optimizer step, the three dequant-GEMM regimes; the llama example's) run
// unchanged, compiled by g++
// against CUDA's host headers, on a machine without a GPU. Include it before
// any kernel header: it defines LOWBIT_CUDA_EMULATION (and, for the example,
// LLAMA_CUDA_EMULATION), which makes <lowbit/cuda/launch.cuh>'s
// LOWBIT_LAUNCH(kernel, grid, block, smem, stream)(args...) call
// cuda_emulator::launch, and it supplies what device code needs and host
// headers lack: threadIdx / blockIdx / blockDim / gridDim (globals, set
// before the emulator switches into a thread), __shared__ (a function-local
// static: one array per kernel, right because blocks run one at a time),
// __syncthreads(), __shfl_xor_sync(), __ldg() and dynamic shared memory
// (LOWBIT_DYNAMIC_SHARED of <lowbit/cuda/launch.cuh>: one buffer of the
// launch's size, zeroed per launch). Everything runs on the calling OS
// thread: the blocks of the grid one after another (x fastest, then y, z);
// within a block every thread is a ucontext fiber (stacks reused across
// blocks and launches), run round-robin in thread order, each until it
// reaches a barrier or returns, then switching straight to the next; a
// barrier opens when every thread of the block waits at it, and a barrier
// reached by some threads while others have returned (divergence) throws
// cuda_emulator::error. Barriers are told apart by call site (file, line)
// and kind (__syncthreads, or a shuffle and its lane mask): a barrier that
// opens with threads waiting at different call sites throws
// cuda_emulator::error too, so non-uniform barriers or shuffles fail loudly
// (two barriers on the same source line are not told apart).
// Restrictions: a shuffle is an exchange through a per-block buffer with a
// barrier, so every thread of the block must call it (full mask, width 32),
// as the block reductions of kernels.cuh and the library do; a shuffle
// called by some warps only (inside a branch other warps skip) is such a
// non-uniform barrier and throws, never returns garbage. As a shuffle
// synchronizes the whole block, not one warp, a __syncthreads missing
// between warp-level steps can go unnoticed. Atomics are plain
// read-modify-writes (one OS thread runs everything). Warp-collective
// instructions (ldmatrix, mma.sync of gemm/mma_gemm.cuh) are built on
// warp_allgather, a per-warp barrier exchanging up to 32 bytes per lane,
// under the same uniformity checks as shuffles. Not emulated: streams
// (ignored; launches are synchronous), warp votes, memory spaces (device
// pointers are host pointers). Shared arrays keep their contents from
// block to block.
// A CUDA runtime and a cuBLAS for emulated host code (cudaMalloc on host
// memory, cublasGemmEx on the CPU and so on) are not part of this header:
// see fake_cuda_runtime.cpp and fake_cublas.cpp.
#pragma once

#define LOWBIT_CUDA_EMULATION 1
#define LLAMA_CUDA_EMULATION 1

#include <cuda_runtime.h>
#include <ucontext.h>

#include "emulator_options.hpp"
#include "kernel_attributes.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __grid_constant__
#define __grid_constant__
#undef __launch_bounds__
#define __launch_bounds__(...)

// CUDA's built-in variables: the scheduler sets them before each switch.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace cuda_emulator {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failure inside a fiber cannot unwind into the scheduler's stack: abort.
[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "cuda_emulator: %s\n", what);
  std::abort();
}

// The block being run. One per process; launches are not reentrant.
struct block_state {
  enum status : uint8_t { runnable, at_barrier, done };
  static constexpr size_t stack_bytes = 256 * 1024;
  std::vector<std::unique_ptr<char[]>> stacks;  // one per thread index, kept for later blocks
  std::vector<ucontext_t> ctx;
  std::vector<status> st;
  std::vector<uint64_t> shfl[2];  // __shfl_xor_sync's exchange buffers, by linear thread index
  static constexpr size_t gather_bytes = 32;  // the largest warp_allgather payload
  std::vector<uint8_t> gather[2];  // warp_allgather's exchange buffers, gather_bytes per thread
  std::vector<uint8_t> parity;    // per thread: the buffer its next shuffle or gather uses
  struct site {
    const char* file;
    int line;
    int kind;  // -1: __syncthreads; 0..31: a shuffle's lane mask; 32: warp_allgather
  };
  std::vector<site> waits_at;     // per thread: the barrier it waits at
  ucontext_t sched;               // the scheduler's context
  int current = -1;               // linear index of the running thread; -1 outside a kernel
  void (*body)(void*) = nullptr;  // runs the kernel once for the current thread
  void* arg = nullptr;
  std::vector<uint64_t> dynamic_shared;  // the launch's dynamic shared memory (8-byte aligned words)
  size_t dynamic_shared_bytes = 0;
};
inline block_state& state() {
  static block_state s;
  return s;
}

// Makes thread i (linear index) the running one.
inline void enter(size_t i) {
  block_state& s = state();
  threadIdx = uint3{unsigned(i) % blockDim.x, (unsigned(i) / blockDim.x) % blockDim.y,
                    unsigned(i) / (blockDim.x * blockDim.y)};
  s.current = int(i);
}

// The running thread, now at a barrier or finished, hands over to the next
// runnable thread of this pass (in thread order) or, when there is none,
// back to the scheduler: one context switch per thread and pass. `from`
// saves the leaving thread (nullptr: finished, never resumed).
inline void pass_on(ucontext_t* from) {
  block_state& s = state();
  size_t j = size_t(s.current) + 1;
  while (j < s.st.size() && s.st[j] != block_state::runnable) ++j;
  ucontext_t* to = &s.sched;
  if (j < s.st.size()) {
    enter(j);
    to = &s.ctx[j];
  } else {
    s.current = -1;
  }
  if ((from ? swapcontext(from, to) : setcontext(to)) != 0) die("swapcontext failed");
}

inline void fiber_entry() {
  block_state& s = state();
  s.body(s.arg);
  s.st[size_t(s.current)] = block_state::done;
  pass_on(nullptr);
}

// Runs one block of n threads (blockIdx / blockDim already set).
inline void run_block(unsigned n) {
  block_state& s = state();
  for (unsigned i = 0; i < n; ++i) {
    ucontext_t& c = s.ctx[i];
    if (getcontext(&c) != 0) throw error("getcontext failed");
    c.uc_stack.ss_sp = s.stacks[i].get();
    c.uc_stack.ss_size = block_state::stack_bytes;
    c.uc_link = &s.sched;
    makecontext(&c, fiber_entry, 0);
    s.st[i] = block_state::runnable;
    s.parity[i] = 0;
  }
  for (;;) {
    // one pass: every runnable thread, in order, runs to its next barrier or its end
    unsigned first = 0;
    while (first < n && s.st[first] != block_state::runnable) ++first;
    if (first < n) {
      enter(first);
      if (swapcontext(&s.sched, &s.ctx[first]) != 0) throw error("swapcontext failed");
    }
    unsigned waiting = 0, finished = 0;
    for (unsigned i = 0; i < n; ++i) {
      waiting += s.st[i] == block_state::at_barrier;
      finished += s.st[i] == block_state::done;
    }
    if (finished == n) return;
    auto name = [](const block_state::site& x) {
      return std::string(x.kind < 0    ? "__syncthreads"
                         : x.kind >= 32 ? "a warp-collective instruction (ldmatrix / mma)"
                                        : "__shfl_xor_sync(lane mask " + std::to_string(x.kind) + ")") +
             " at " + x.file + ":" + std::to_string(x.line);
    };
    auto where = [] {
      return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
             std::to_string(blockIdx.z) + ")";
    };
    auto same = [](const block_state::site& a, const block_state::site& b) {
      return a.line == b.line && a.kind == b.kind && std::strcmp(a.file, b.file) == 0;
    };
    // Shuffles first: a warp whose lanes all wait at one shuffle goes on.
    bool opened = false;
    for (unsigned w0 = 0; w0 < n; w0 += 32) {
      const unsigned w1 = w0 + 32 < n ? w0 + 32 : n;
      bool any_shuffle = false;
      for (unsigned i = w0; i < w1; ++i) any_shuffle |= s.st[i] == block_state::at_barrier && s.waits_at[i].kind >= 0;
      if (!any_shuffle) continue;
      for (unsigned i = w0; i < w1; ++i) {
        if (s.st[i] != block_state::at_barrier)
          throw error("divergent warp in " + where() + ": lane " + std::to_string(i - w0) + " of warp " +
                      std::to_string(w0 / 32) + " has returned while others wait at " + name(s.waits_at[w0]));
        if (!same(s.waits_at[i], s.waits_at[w0]))
          throw error("non-uniform shuffle in " + where() + ": lane 0 of warp " + std::to_string(w0 / 32) +
                      " waits at " + name(s.waits_at[w0]) + ", lane " + std::to_string(i - w0) + " at " +
                      name(s.waits_at[i]));
      }
      for (unsigned i = w0; i < w1; ++i) s.st[i] = block_state::runnable;
      opened = true;
    }
    if (opened) continue;
    // Otherwise every thread waits at one __syncthreads.
    if (finished > 0)
      throw error("divergent __syncthreads in " + where() + ": " + std::to_string(waiting) +
                  " threads wait at a barrier that " + std::to_string(finished) + " exited threads never reach");
    const block_state::site& w0 = s.waits_at[0];
    for (unsigned i = 1; i < n; ++i)
      if (!same(s.waits_at[i], w0))
        throw error("non-uniform barrier in " + where() + ": thread 0 waits at " + name(w0) + ", thread " +
                    std::to_string(i) + " at " + name(s.waits_at[i]));
    for (unsigned i = 0; i < n; ++i) s.st[i] = block_state::runnable;  // every thread arrived: open
  }
}

// Runs body(arg) as every thread of every block of the grid, with CUDA's
// launch limits checked (only those under LOWBIT_EMULATOR_SKIP_COMPUTE).
inline void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
  block_state& s = state();
  if (s.current >= 0) die("kernel launch from device code");
  const uint64_t n = uint64_t(block.x) * block.y * block.z;
  if (n == 0 || n > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    throw error("invalid launch configuration: grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                ", " + std::to_string(grid.z) + "), block (" + std::to_string(block.x) + ", " +
                std::to_string(block.y) + ", " + std::to_string(block.z) + ")");
  if (emulator_options::skip_compute()) return;  // an allocation dry run (emulator_options.hpp): checked, not run
  while (s.stacks.size() < n) s.stacks.emplace_back(new char[block_state::stack_bytes]);
  s.ctx.resize(n);
  s.st.resize(n);
  s.shfl[0].assign(n, 0);
  s.shfl[1].assign(n, 0);
  s.gather[0].assign(n * block_state::gather_bytes, 0);
  s.gather[1].assign(n * block_state::gather_bytes, 0);
  s.parity.resize(n);
  s.waits_at.resize(n);
  s.body = body;
  s.arg = arg;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(unsigned(n));
      }
}

// LLAMA_LAUNCH(kernel, grid, block, stream) is launch(kernel, grid, block,
// stream); calling the result with the arguments runs the grid. As on a GPU,
// the arguments are converted to the kernel's parameter types once, and
// each thread receives its own copies.
template <class... P>
struct launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  template <class... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct call {
      void (*k)(P...);
      std::tuple<P...> params;
    } c{kernel, std::tuple<P...>(std::forward<Args>(args)...)};
    run_grid(grid, block, [](void* a) {
      call* c = static_cast<call*>(a);
      std::apply(c->k, c->params);  // tuple elements are lvalues: copied into the by-value parameters
    }, &c);
  }
};
template <class... P>
launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t /*stream*/) {
  return launcher<P...>{kernel, grid, block};
}
// LOWBIT_LAUNCH(kernel, grid, block, smem, stream): `smem` bytes of dynamic
// shared memory (at most 227 KiB, the sm_90 limit, and above 48 KiB only
// after cudaFuncSetAttribute raised the kernel's limit, as on a GPU:
// kernel_attributes.hpp), zeroed, shared by the blocks of the launch one
// after another (kernels must not rely on its contents at entry, as on a
// GPU).
template <class... P>
launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  if (smem > kernel_attributes::max_dynamic_shared_bytes)
    throw error("too much dynamic shared memory: " + std::to_string(smem) + " bytes (227 KiB at most)");
  const size_t limit = kernel_attributes::dynamic_shared_limit(reinterpret_cast<const void*>(kernel));
  if (smem > limit)
    throw error("a launch requests " + std::to_string(smem) + " bytes of dynamic shared memory, above the kernel's " +
                "limit of " + std::to_string(limit) + " bytes (48 KiB unless cudaFuncSetAttribute(kernel, " +
                "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) raised it; a GPU refuses such a launch)");
  block_state& s = state();
  s.dynamic_shared.assign((smem + 7) / 8, 0);
  s.dynamic_shared_bytes = smem;
  return launch(kernel, grid, block, stream);
}

// The running kernel's dynamic shared memory (LOWBIT_DYNAMIC_SHARED).
inline unsigned char* dynamic_shared() {
  block_state& s = state();
  if (s.current < 0) die("dynamic shared memory outside a kernel");
  return s.dynamic_shared_bytes ? reinterpret_cast<unsigned char*>(s.dynamic_shared.data()) : nullptr;
}

}  // namespace cuda_emulator

// ---- device intrinsics ----------------------------------------------------------
// file / line: the call site (filled in by the compiler), which tells barriers apart.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE(), int kind = -1) {
  cuda_emulator::block_state& s = cuda_emulator::state();
  if (s.current < 0) cuda_emulator::die("__syncthreads outside a kernel");
  s.waits_at[size_t(s.current)] = cuda_emulator::block_state::site{file, line, kind};
  s.st[size_t(s.current)] = cuda_emulator::block_state::at_barrier;
  cuda_emulator::pass_on(&s.ctx[size_t(s.current)]);
}

// Lane (t & 31) ^ lane_mask of the caller's warp. Every lane of the warp
// must call it (see the restriction at the top). A shuffle writes the
// caller's value to an exchange buffer, waits at its warp's barrier, reads
// the source lane's value. Consecutive shuffles alternate between two
// buffers, so no second barrier is needed: a lane writes buffer b again only
// after passing the next shuffle's barrier, when every lane of its warp (the
// only readers of its slot) has done its read of buffer b.
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t), "shuffle of this type");
  cuda_emulator::block_state& s = cuda_emulator::state();
  if (s.current < 0) cuda_emulator::die("__shfl_xor_sync outside a kernel");
  if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask >= 32)
    cuda_emulator::die("__shfl_xor_sync: only the full mask, width 32 and lane masks < 32 are emulated");
  const size_t me = size_t(s.current), src = me ^ size_t(lane_mask);
  if (s.parity.size() % 32 != 0) cuda_emulator::die("__shfl_xor_sync in a block that is not whole warps");
  std::vector<uint64_t>& buf = s.shfl[s.parity[me]];
  s.parity[me] ^= 1;
  std::memcpy(&buf[me], &v, sizeof(T));
  __syncthreads(file, line, lane_mask);
  T r;
  std::memcpy(&r, &buf[src], sizeof(T));
  return r;
}

namespace cuda_emulator {
// The calling thread's lane (linear thread index mod 32; warps are 32
// consecutive linear indices, as on a GPU).
inline int lane_id() {
  block_state& s = state();
  if (s.current < 0) die("lane_id outside a kernel");
  return s.current % 32;
}

// The building block of warp-collective instructions (ldmatrix, mma.sync;
// see gemm/mma_gemm.cuh's emulation branches): every lane of the caller's
// warp contributes `bytes` bytes (at most gather_bytes), and all[32 * bytes]
// receives the contributions in lane order. Same barrier and double-buffer
// discipline as __shfl_xor_sync: every lane of the warp must call it at the
// same call site. The payload carries values, not addresses, so no lane
// reads memory that another lane may already have overwritten after
// leaving the barrier.
inline void warp_allgather(const void* mine, size_t bytes, void* all, const char* file = __builtin_FILE(),
                           int line = __builtin_LINE()) {
  block_state& s = state();
  if (s.current < 0) die("warp-collective instruction outside a kernel");
  if (bytes > block_state::gather_bytes) die("warp_allgather: payload too large");
  if (s.parity.size() % 32 != 0) die("warp-collective instruction in a block that is not whole warps");
  const size_t me = size_t(s.current), w0 = me - me % 32;
  const int buffer = s.parity[me];
  s.parity[me] ^= 1;
  std::memcpy(&s.gather[buffer][me * block_state::gather_bytes], mine, bytes);
  __syncthreads(file, line, 32);
  for (size_t l = 0; l < 32; ++l)
    std::memcpy(static_cast<uint8_t*>(all) + l * bytes, &s.gather[buffer][(w0 + l) * block_state::gather_bytes], bytes);
}
}  // namespace cuda_emulator

// A trap ends the emulated program as it ends a kernel.
[[noreturn]] inline void __trap() { cuda_emulator::die("__trap() in device code"); }

// A read through the read-only cache is a plain read here.
template <class T>
T __ldg(const T* p) {
  return *p;
}

// Atomics: every thread runs on the one OS thread and is never preempted
// between the read and the write, so a plain read-modify-write is atomic.
namespace cuda_emulator {
template <class T, class F>
T atomic_rmw(T* p, F f) {
  if (state().current < 0) die("atomic outside a kernel");
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace cuda_emulator
#define LOWBIT_EMU_ATOMIC(name, expr)                                                                      \
  inline int name(int* p, int v) { return cuda_emulator::atomic_rmw(p, [v](int o) { return expr; }); } \
  inline unsigned name(unsigned* p, unsigned v) {                                                       \
    return cuda_emulator::atomic_rmw(p, [v](unsigned o) { return expr; });                              \
  }                                                                                                     \
  inline unsigned long long name(unsigned long long* p, unsigned long long v) {                         \
    return cuda_emulator::atomic_rmw(p, [v](unsigned long long o) { return expr; });                    \
  }
LOWBIT_EMU_ATOMIC(atomicOr, o | v)
LOWBIT_EMU_ATOMIC(atomicAnd, o & v)
LOWBIT_EMU_ATOMIC(atomicXor, o ^ v)
LOWBIT_EMU_ATOMIC(atomicAdd, o + v)
LOWBIT_EMU_ATOMIC(atomicMin, v < o ? v : o)
LOWBIT_EMU_ATOMIC(atomicMax, v > o ? v : o)
LOWBIT_EMU_ATOMIC(atomicExch, (void(o), v))
#undef LOWBIT_EMU_ATOMIC
inline float atomicAdd(float* p, float v) { return cuda_emulator::atomic_rmw(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) { return cuda_emulator::atomic_rmw(p, [v](double o) { return o + v; }); }
