// bench/probe_paged_residency.cu
// A question the 7B paged-adamw8 runs left open (docs/PERFORMANCE.md,
// "LLaMA trainer (CUDA)"): the trainer's peak device memory, from
// cudaMemGetInfo, was no lower with paged optimizer states evicted to the
// host after each tensor's step than with the states in device memory. Is
// device memory that managed pages occupied given back, as cudaMemGetInfo
// sees it, once the pages are prefetched to the host (what memory::paged
// does with evict_after_step), and can cudaMalloc then use it?
//
// For one managed buffer of --mib MiB (default 4096; at most half the free
// device memory, so the device is never oversubscribed) it prints the free
// device memory (MiB) after each step: allocation with the pages first
// touched on the host; prefetch to the device; prefetch back to the host;
// the same after cudaMemAdvise(PreferredLocation = host); then whether a
// cudaMalloc larger than the reported free memory (by half the buffer)
// succeeds while the managed buffer still exists (the memory is free but
// not reported) or fails cleanly; and after cudaFree. Not a benchmark: no timing is asserted.
// Without a CUDA device it says so and exits 77.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "probe_paged_residency: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

double free_mib() {
  size_t f = 0, t = 0;
  if (!ok(cudaMemGetInfo(&f, &t), "cudaMemGetInfo")) std::exit(1);
  return double(f) / (1024.0 * 1024.0);
}

cudaError_t prefetch(void* p, size_t bytes, bool to_device, int dev) {
#if CUDART_VERSION >= 13000
  cudaMemLocation loc{};
  loc.type = to_device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
  loc.id = to_device ? dev : 0;
  return cudaMemPrefetchAsync(p, bytes, loc, 0, nullptr);
#else
  return cudaMemPrefetchAsync(p, bytes, to_device ? dev : cudaCpuDeviceId, nullptr);
#endif
}

cudaError_t advise_host(void* p, size_t bytes) {
#if CUDART_VERSION >= 13000
  cudaMemLocation loc{};
  loc.type = cudaMemLocationTypeHost;
  return cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, loc);
#else
  return cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  long mib = 4096;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--mib=", 6) == 0) mib = std::strtol(argv[i] + 6, nullptr, 10);
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "probe_paged_residency: no CUDA device; nothing was measured (exit 77)\n");
    return 77;
  }
  int dev = 0, concurrent = 0;
  if (!ok(cudaGetDevice(&dev), "cudaGetDevice") ||
      !ok(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, dev), "attribute"))
    return 1;
  std::printf("concurrent managed access: %d\n", concurrent);
  const double before = free_mib();
  if (mib <= 0 || double(mib) > before / 2) {
    std::fprintf(stderr, "probe_paged_residency: --mib=%ld is not in (0, half the free %.0f MiB]\n", mib, before);
    return 2;
  }
  const size_t bytes = size_t(mib) << 20;
  std::printf("%-58s %10s\n", "step", "free MiB");
  std::printf("%-58s %10.1f\n", "before", before);
  void* p = nullptr;
  if (!ok(cudaMallocManaged(&p, bytes), "cudaMallocManaged")) return 1;
  std::memset(p, 1, bytes);  // first touch on the host, as memory::paged does
  std::printf("%-58s %10.1f\n", "cudaMallocManaged + host memset", free_mib());
  if (!ok(prefetch(p, bytes, true, dev), "prefetch to device") || !ok(cudaDeviceSynchronize(), "sync")) return 1;
  std::printf("%-58s %10.1f\n", "prefetched to the device", free_mib());
  if (!ok(prefetch(p, bytes, false, dev), "prefetch to host") || !ok(cudaDeviceSynchronize(), "sync")) return 1;
  std::printf("%-58s %10.1f\n", "prefetched to the host (evict_after_step)", free_mib());
  if (!ok(prefetch(p, bytes, true, dev), "prefetch to device") || !ok(cudaDeviceSynchronize(), "sync")) return 1;
  std::printf("%-58s %10.1f\n", "prefetched to the device again", free_mib());
  if (!ok(advise_host(p, bytes), "cudaMemAdvise") || !ok(prefetch(p, bytes, false, dev), "prefetch to host") ||
      !ok(cudaDeviceSynchronize(), "sync"))
    return 1;
  std::printf("%-58s %10.1f\n", "preferred location host, prefetched to the host", free_mib());
  // If the evicted pages' device memory is in fact free but not reported,
  // a device allocation larger than the reported free memory succeeds.
  const double reported = free_mib();
  const size_t ask = (size_t(reported) << 20) + bytes / 2;
  void* d = nullptr;
  const cudaError_t e = cudaMalloc(&d, ask);
  std::printf("%-58s %10.1f  (%s)\n", ("cudaMalloc of reported free + " + std::to_string(mib / 2) + " MiB").c_str(),
              free_mib(), e == cudaSuccess ? "succeeded" : cudaGetErrorString(e));
  if (e == cudaSuccess) cudaFree(d);
  cudaGetLastError();  // a failed allocation is an answer, not an error
  if (!ok(cudaFree(p), "cudaFree")) return 1;
  std::printf("%-58s %10.1f\n", "after cudaFree", free_mib());
  return 0;
}
