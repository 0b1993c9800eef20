// examples/llama/cuda/launch.cuh
// How kernels.cuh launches its kernels, so that the same source runs under
// nvcc and under the library's CPU emulator (tests/emulation/cuda_emulator.hpp,
// g++, no GPU):
//   LLAMA_LAUNCH(kernel, grid, block, stream)(args...);
//   LLAMA_CHECK_LAUNCH();
// LLAMA_LAUNCH is <lowbit/cuda/launch.cuh>'s LOWBIT_LAUNCH without dynamic
// shared memory. nvcc: kernel<<<grid, block, 0, stream>>>(args...) and a
// cudaGetLastError check. Emulation (LOWBIT_CUDA_EMULATION, defined by
// cuda_emulator.hpp, which must be included first): the emulator runs every
// thread of every block on the host, and there is nothing to check.
// `kernel` must be one macro argument: a template-id with a comma goes
// through a local function pointer first (auto* k = &f<W, A>;).
#pragma once

#include <lowbit/cuda/launch.cuh>

#define LLAMA_LAUNCH(kernel, grid, block, stream) LOWBIT_LAUNCH(kernel, grid, block, 0, stream)

#if defined(__CUDACC__)
#include <lowbit/cuda/check.cuh>
#define LLAMA_CHECK_LAUNCH() LOWBIT_CUDA_CHECK(cudaGetLastError())
#else
#define LLAMA_CHECK_LAUNCH() ((void)0)
#endif
