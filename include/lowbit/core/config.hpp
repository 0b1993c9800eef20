// lowbit/core/config.hpp
// Compiler portability for the whole library: the LOWBIT_HD marker that makes
// a function callable from both host and CUDA device code, the version, and
// the two arithmetic helpers (mul_rn / add_rn) that forbid fused multiply-add
// contraction. Shared math uses them wherever a product feeds a sum, so that
// g++ on the host and nvcc on the device round identically and CPU and GPU
// results can be compared bit for bit.
#pragma once

#include <cstdint>

#define LOWBIT_VERSION_MAJOR 0
#define LOWBIT_VERSION_MINOR 1
#define LOWBIT_VERSION_PATCH 0

#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__ __forceinline__
#define LOWBIT_CUDA_COMPILER 1
#else
#define LOWBIT_HD inline
#define LOWBIT_CUDA_COMPILER 0
#endif

namespace lowbit {

// Round-to-nearest multiply and add that nvcc may not fuse into an FMA.
LOWBIT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LOWBIT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

LOWBIT_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

LOWBIT_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// IEEE round-to-nearest reciprocal on both sides (nvcc's default 1.0f/x is
// also IEEE, but the intrinsic makes the intent independent of -prec-div).
LOWBIT_HD float reciprocal_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(x);
#else
  return 1.0f / x;
#endif
}

LOWBIT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

LOWBIT_HD float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return __builtin_sqrtf(x);
#endif
}

}  // namespace lowbit
