// tests/emulation/fake_cuda_runtime.cpp
// A host-only stand-in for the CUDA runtime library, linked (instead of
// libcudart) into tests that run the library's CUDA code under
// cuda_emulator.hpp on a machine without a GPU. It implements the runtime
// calls that code makes, with C linkage and the signatures of CUDA's
// cuda_runtime_api.h, so the linker takes these definitions:
//   memory: every allocation (device, async, managed, pinned host) is host
//     memory from std::malloc; the fake keeps a table of live allocations,
//     so freeing an unknown pointer fails (cudaErrorInvalidValue) and tests
//     can check for leaks (fake_cuda::live_allocations()).
//   copies and memsets of every kind are std::memcpy / std::memset; streams
//     are ignored (kernel launches through the emulator are synchronous, so
//     every stream is always idle).
//   one device, "compute capability 9.0" (the kernels' sm_90 paths): 4
//     multiprocessors (small grids, so grid-stride loops take several
//     laps) and 1 GiB of memory unless emulator_options.hpp's variables say
//     otherwise, no concurrent managed access, no pageable memory access
//     (fake_cuda::set_pageable_memory_access turns it on, for tests that
//     hand host vectors to kernels), 1 MiB of L2; cudaPointerGetAttributes reports the
//     kind of the fake allocation holding a pointer (device, managed,
//     pinned host) and any other pointer as pageable host memory;
//     allocations are 256-byte aligned as cudaMalloc's; memory pools keep
//     freed bytes until trimmed; prefetches do nothing.
//   device memory in use is counted as a GPU's cudaMemGetInfo sees it: the
//     bytes of live device and managed allocations plus the freed bytes
//     memory pools keep (exact requested sizes: no allocation granularity,
//     no CUDA context, no library workspaces). cudaMemGetInfo reports
//     free = total less that; fake_cuda::device_bytes_in_use() and
//     peak_device_bytes() give it and its high-water mark (pinned host
//     memory apart: pinned_host_bytes_in_use(), peak_pinned_host_bytes()).
//     With LOWBIT_EMULATOR_SKIP_COMPUTE or LOWBIT_EMULATOR_MEMORY_REPORT
//     set, the peaks are printed to stderr at exit, so any program can be
//     traced without code of its own.
//   streams and events exist as handles; as launches are synchronous, an
//     event records the host clock, so cudaEventElapsedTime is the host
//     time of the work between two events (the benchmark binaries' smoke
//     tests run on it; no figure is taken from it).
// Errors are the return values; cudaGetLastError / cudaPeekAtLastError
// report the last failing call of this fake (launches cannot fail: the
// emulator throws instead).
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <cstdio>
#include <map>

#include "emulator_options.hpp"
#include "fake_cuda_runtime.hpp"
#include "kernel_attributes.hpp"

namespace {
struct allocation {
  size_t bytes;
  cudaMemoryType type;  // device, managed or (pinned) host
  size_t counted;       // bytes counted as in use (bytes, or rounded: LOWBIT_EMULATOR_ROUND_KIB)
};
size_t counted_bytes(size_t bytes, cudaMemoryType type) {
  const size_t r = emulator_options::round_bytes();
  if (r == 0 || type == cudaMemoryTypeHost || bytes < r) return bytes;
  return (bytes + r - 1) / r * r;
}
std::map<const void*, allocation>& allocations() {
  static std::map<const void*, allocation> a;
  return a;
}
cudaError_t last_error = cudaSuccess;

// Memory in use, as a GPU would count it (see the file comment).
struct memory_counters {
  size_t device = 0, pinned = 0;            // live allocations' bytes (device + managed; pinned host)
  size_t pool_kept = 0;                     // freed bytes kept by memory pools
  size_t peak_device = 0, peak_pinned = 0;  // high-water marks of device + pool_kept, and of pinned
  void note() {
    peak_device = std::max(peak_device, device + pool_kept);
    peak_pinned = std::max(peak_pinned, pinned);
  }
};
// Constant-initialized (no constructor runs, nothing is destroyed), so the
// report at exit below can read it whatever the order of static objects.
memory_counters all_counters;
memory_counters& counters() { return all_counters; }
size_t& counter_of(cudaMemoryType type) {
  return type == cudaMemoryTypeHost ? counters().pinned : counters().device;
}
// LOWBIT_EMULATOR_ALLOCATION_LOG_MIB: one line per large allocation or free.
void log_event(const char* what, size_t bytes, cudaMemoryType type) {
  const long long min_mib = emulator_options::allocation_log_mib();
  if (min_mib < 0 || bytes < (size_t(min_mib) << 20)) return;
  const char* kind = type == cudaMemoryTypeHost ? "pinned" : type == cudaMemoryTypeManaged ? "managed" : "device";
  std::fprintf(stderr, "fake CUDA runtime: %s %.2f MiB %s; device in use %.1f MiB, pool reserve %.1f MiB\n", what,
               double(bytes) / 1048576.0, kind, double(counters().device + counters().pool_kept) / 1048576.0,
               double(counters().pool_kept) / 1048576.0);
}
// Calls that make the host wait for a GPU's queued work (see
// fake_cuda::host_waits).
size_t& waits() {
  static size_t n = 0;
  return n;
}
// Under an allocation dry run, the peaks are the result: print them at exit.
struct dry_run_report {
  ~dry_run_report() {
    if (!emulator_options::skip_compute() && !emulator_options::memory_report()) return;
    const memory_counters& c = counters();
    std::fprintf(stderr,
                 "fake CUDA runtime: peak device memory in use %.1f MiB (%zu bytes: device "
                 "and managed allocations plus memory-pool reserve), peak pinned host memory %.1f MiB\n",
                 double(c.peak_device) / 1048576.0, c.peak_device, double(c.peak_pinned) / 1048576.0);
    std::fprintf(stderr,
                 "fake CUDA runtime: %zu host waits (stream, event and device synchronizations, cudaMemcpy, "
                 "cudaMemset, cudaFree)\n",
                 waits());
  }
} report_at_exit;

struct fake_stream {
  int unused = 0;
};
struct fake_event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};
bool pageable_access = false;  // cudaDevAttrPageableMemoryAccess
cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}
// 256-byte aligned, as cudaMalloc's allocations are (lowbit checks
// workspace alignment against that guarantee).
// pooled: an allocation from a memory pool, which sub-allocates from its
// reserve (counted exactly, never rounded).
cudaError_t alloc(void** p, size_t bytes, cudaMemoryType type = cudaMemoryTypeDevice, bool pooled = false) {
  if (!p) return fail(cudaErrorInvalidValue);
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + (bytes ? 0 : 256));
  if (!*p) return fail(cudaErrorMemoryAllocation);
  const size_t counted = pooled ? bytes : counted_bytes(bytes, type);
  allocations()[*p] = allocation{bytes, type, counted};
  counter_of(type) += counted;
  counters().note();
  log_event("alloc", bytes, type);
  return cudaSuccess;
}
struct fake_pool {
  size_t live = 0, kept = 0;  // bytes of live allocations, freed bytes kept
};
std::map<const void*, fake_pool*>& pool_of() {  // allocations made from a pool
  static std::map<const void*, fake_pool*> m;
  return m;
}
cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  auto it = allocations().find(p);
  if (it == allocations().end()) return fail(cudaErrorInvalidValue);
  auto pit = pool_of().find(p);
  const bool pooled = pit != pool_of().end();
  if (pooled) {  // back to its pool, which keeps the bytes
    pit->second->live -= it->second.bytes;
    pit->second->kept += it->second.bytes;
    counters().pool_kept += it->second.counted;
    pool_of().erase(pit);
  }
  counter_of(it->second.type) -= it->second.counted;
  log_event(pooled ? "free (kept by its pool)" : "free", it->second.bytes, it->second.type);
  allocations().erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t copy(void* dst, const void* src, size_t bytes) {
  if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue);
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t set(void* dst, int value, size_t bytes) {
  if (bytes && !dst) return fail(cudaErrorInvalidValue);
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}

}  // namespace

namespace fake_cuda {
size_t host_waits() { return waits(); }
size_t live_allocations() { return allocations().size(); }
void set_pageable_memory_access(bool on) { pageable_access = on; }
int sm_count() { return emulator_options::sm_count(); }
size_t device_bytes_in_use() { return counters().device + counters().pool_kept; }
size_t peak_device_bytes() { return counters().peak_device; }
size_t pinned_host_bytes_in_use() { return counters().pinned; }
size_t peak_pinned_host_bytes() { return counters().peak_pinned; }
void reset_peaks() {
  counters().peak_device = device_bytes_in_use();
  counters().peak_pinned = counters().pinned;
}
}  // namespace fake_cuda

extern "C" {

cudaError_t cudaMalloc(void** p, size_t bytes) { return alloc(p, bytes); }
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return alloc(p, bytes); }
cudaError_t cudaMallocManaged(void** p, size_t bytes, unsigned int) { return alloc(p, bytes, cudaMemoryTypeManaged); }
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return alloc(p, bytes, cudaMemoryTypeHost); }
cudaError_t cudaMallocHost(void** p, size_t bytes) { return alloc(p, bytes, cudaMemoryTypeHost); }
cudaError_t cudaFree(void* p) {
  ++waits();  // a GPU's cudaFree waits for the device
  return release(p);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return release(p); }
cudaError_t cudaFreeHost(void* p) { return release(p); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  ++waits();
  return copy(dst, src, bytes);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  return copy(dst, src, bytes);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  ++waits();
  return set(dst, value, bytes);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return set(dst, value, bytes); }

cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++waits();
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  if (!s) return fail(cudaErrorInvalidValue);
  *s = reinterpret_cast<cudaStream_t>(new fake_stream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<fake_stream*>(s);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  if (!e) return fail(cudaErrorInvalidValue);
  *e = reinterpret_cast<cudaEvent_t>(new fake_event);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<fake_event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  if (!e) return fail(cudaErrorInvalidValue);
  reinterpret_cast<fake_event*>(e)->at = std::chrono::steady_clock::now();
  reinterpret_cast<fake_event*>(e)->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidValue);
  ++waits();
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (!ms || !start || !stop) return fail(cudaErrorInvalidValue);
  const fake_event* a = reinterpret_cast<const fake_event*>(start);
  const fake_event* b = reinterpret_cast<const fake_event*>(stop);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  ++waits();
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error (fake CUDA runtime)";
    case cudaErrorInvalidValue: return "invalid argument (fake CUDA runtime)";
    case cudaErrorMemoryAllocation: return "out of memory (fake CUDA runtime)";
    default: return "error (fake CUDA runtime)";
  }
}

// Blocks run one at a time here; any positive count is right.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, const void*, int, size_t, unsigned int) {
  *blocks = 2;
  return cudaSuccess;
}

// The dynamic shared-memory limit is recorded for the emulator's launches
// to check (kernel_attributes.hpp); other attributes have no effect here.
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func || value < 0) return fail(cudaErrorInvalidValue);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (size_t(value) > kernel_attributes::max_dynamic_shared_bytes) return fail(cudaErrorInvalidValue);
    kernel_attributes::set_dynamic_shared_limit(func, size_t(value));
  }
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* dev) {
  if (!dev) return fail(cudaErrorInvalidValue);
  *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return fail(cudaErrorInvalidValue);
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (!value || dev != 0) return fail(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = fake_cuda::sm_count(); break;
    case cudaDevAttrConcurrentManagedAccess: *value = 0; break;
    case cudaDevAttrPageableMemoryAccess: *value = pageable_access ? 1 : 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;  // the kernels' sm_90 paths
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrL2CacheSize: *value = 1 << 20; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int dev) {
  if (!prop || dev != 0) return fail(cudaErrorInvalidValue);
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "lowbit CPU CUDA emulator", sizeof prop->name - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = fake_cuda::sm_count();
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->totalGlobalMem = emulator_options::device_bytes();
  return cudaSuccess;
}

// Managed memory is host memory: prefetching is a no-op on a valid range.
cudaError_t cudaMemPrefetchAsync(const void* p, size_t, cudaMemLocation, unsigned int, cudaStream_t) {
  if (!p) return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}

// Memory pools, as bookkeeping over ordinary fake allocations: a pool
// reserves the bytes of its live allocations plus the freed bytes it keeps
// (a release threshold of "keep everything", the only setting lowbit
// uses); a new allocation reuses kept bytes first; cudaMemPoolTrimTo
// returns kept bytes until the reserve is down to its argument.
cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps* props) {
  if (!pool || !props) return fail(cudaErrorInvalidValue);
  *pool = reinterpret_cast<cudaMemPool_t>(new fake_pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
  if (!pool) return fail(cudaErrorInvalidValue);
  counters().pool_kept -= reinterpret_cast<fake_pool*>(pool)->kept;  // its reserve goes back to the device
  delete reinterpret_cast<fake_pool*>(pool);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr, void* value) {
  return pool && value ? cudaSuccess : fail(cudaErrorInvalidValue);
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (!pool || !value) return fail(cudaErrorInvalidValue);
  const fake_pool& fp = *reinterpret_cast<fake_pool*>(pool);
  switch (attr) {
    case cudaMemPoolAttrReservedMemCurrent: *static_cast<uint64_t*>(value) = fp.live + fp.kept; return cudaSuccess;
    case cudaMemPoolAttrUsedMemCurrent: *static_cast<uint64_t*>(value) = fp.live; return cudaSuccess;
    default: return fail(cudaErrorInvalidValue);
  }
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  if (!pool) return fail(cudaErrorInvalidValue);
  fake_pool& fp = *reinterpret_cast<fake_pool*>(pool);
  const size_t excess = fp.live + fp.kept > keep ? fp.live + fp.kept - keep : 0;
  const size_t returned = excess < fp.kept ? excess : fp.kept;
  fp.kept -= returned;
  counters().pool_kept -= returned;
  return cudaSuccess;
}
cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t pool, cudaStream_t) {
  if (!pool) return fail(cudaErrorInvalidValue);
  fake_pool* fp = reinterpret_cast<fake_pool*>(pool);
  // Kept bytes the allocation takes back: off the reserve before alloc()
  // counts the new bytes, so the peak never counts them twice.
  const size_t reused = bytes < fp->kept ? bytes : fp->kept;
  counters().pool_kept -= reused;
  const cudaError_t e = alloc(p, bytes, cudaMemoryTypeDevice, true);
  if (e != cudaSuccess) {
    counters().pool_kept += reused;
    return e;
  }
  fp->kept -= reused;
  fp->live += bytes;
  pool_of()[*p] = fp;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
  *total_bytes = emulator_options::device_bytes();
  const size_t used = fake_cuda::device_bytes_in_use();
  *free_bytes = used < *total_bytes ? *total_bytes - used : 0;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  if (!attr) return fail(cudaErrorInvalidValue);
  *attr = cudaPointerAttributes{};
  // The type of the fake allocation holding p; any other pointer is
  // pageable host memory (cudaMemoryTypeUnregistered), as on a GPU system.
  auto it = allocations().upper_bound(p);
  attr->type = cudaMemoryTypeUnregistered;
  if (it != allocations().begin()) {
    --it;
    const char* base = static_cast<const char*>(it->first);
    if (static_cast<const char*>(p) < base + (it->second.bytes ? it->second.bytes : 1)) attr->type = it->second.type;
  }
  attr->device = 0;
  attr->devicePointer = attr->type == cudaMemoryTypeUnregistered ? nullptr : const_cast<void*>(p);
  attr->hostPointer = const_cast<void*>(p);
  return cudaSuccess;
}

}  // extern "C"
