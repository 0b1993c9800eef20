// lowbit/cuda/check.cuh
// CUDA runtime error handling for host launchers: LOWBIT_CUDA_CHECK turns a
// failing cudaError_t into lowbit::error(errc::cuda) naming the call, and
// device_count() asks whether any device is usable without ever throwing
// (GPU tests use it to skip honestly when there is none).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "../core/error.hpp"

namespace lowbit {
namespace cuda {

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw error(errc::cuda, std::string(what) + " failed: " + cudaGetErrorString(e) + " (" + file + ":" +
                                std::to_string(line) + ")");
}

#define LOWBIT_CUDA_CHECK(expr) ::lowbit::cuda::check((expr), #expr, __FILE__, __LINE__)

// Number of usable CUDA devices; 0 when there is no device or no driver.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

// Multiprocessor count of the current device (for grid sizing).
inline int sm_count() {
  int dev = 0, sms = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

}  // namespace cuda
}  // namespace lowbit
