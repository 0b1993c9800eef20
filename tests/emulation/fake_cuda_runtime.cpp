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
//   one device: 4 multiprocessors (small grids, so grid-stride loops take
//     several laps), no concurrent managed access, no pageable memory
//     access; every pointer reports itself as device memory.
// Errors are the return values; cudaGetLastError / cudaPeekAtLastError
// report the last failing call of this fake (launches cannot fail: the
// emulator throws instead).
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "fake_cuda_runtime.hpp"

namespace {
std::map<const void*, size_t>& allocations() {
  static std::map<const void*, size_t> a;
  return a;
}
cudaError_t last_error = cudaSuccess;
cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}
cudaError_t alloc(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue);
  *p = std::malloc(bytes ? bytes : 1);
  if (!*p) return fail(cudaErrorMemoryAllocation);
  allocations()[*p] = bytes;
  return cudaSuccess;
}
cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  auto it = allocations().find(p);
  if (it == allocations().end()) return fail(cudaErrorInvalidValue);
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
size_t live_allocations() { return allocations().size(); }
int sm_count() { return 4; }
}  // namespace fake_cuda

extern "C" {

cudaError_t cudaMalloc(void** p, size_t bytes) { return alloc(p, bytes); }
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return alloc(p, bytes); }
cudaError_t cudaMallocManaged(void** p, size_t bytes, unsigned int) { return alloc(p, bytes); }
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return alloc(p, bytes); }
cudaError_t cudaMallocHost(void** p, size_t bytes) { return alloc(p, bytes); }
cudaError_t cudaFree(void* p) { return release(p); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return release(p); }
cudaError_t cudaFreeHost(void* p) { return release(p); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) { return copy(dst, src, bytes); }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  return copy(dst, src, bytes);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) { return set(dst, value, bytes); }
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return set(dst, value, bytes); }

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

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

// Kernel attributes (e.g. the dynamic shared-memory limit) have no effect
// here: the emulator checks the launch's request against 227 KiB itself.
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute, int value) {
  if (!func || value < 0) return fail(cudaErrorInvalidValue);
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
    case cudaDevAttrPageableMemoryAccess: *value = 0; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
  *free_bytes = *total_bytes = size_t(1) << 30;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  if (!attr) return fail(cudaErrorInvalidValue);
  *attr = cudaPointerAttributes{};
  attr->type = cudaMemoryTypeDevice;  // in emulation every pointer is "device" memory
  attr->device = 0;
  attr->devicePointer = const_cast<void*>(p);
  attr->hostPointer = const_cast<void*>(p);
  return cudaSuccess;
}

}  // extern "C"
