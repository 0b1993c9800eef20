// examples/llama/cuda/launch.cuh
// How kernels.cuh launches its kernels, so that the same source runs under
// nvcc and under the CPU emulator of tests/cuda_emulator.hpp (g++, no GPU):
//   LLAMA_LAUNCH(kernel, grid, block, stream)(args...);
//   LLAMA_CHECK_LAUNCH();
// nvcc: kernel<<<grid, block, 0, stream>>>(args...) and a cudaGetLastError
// check. Emulation (LLAMA_CUDA_EMULATION, defined by cuda_emulator.hpp,
// which must be included first): the emulator runs every thread of every
// block on the host, and there is nothing to check. `kernel` must be one
// macro argument: a template-id with a comma goes through a local function
// pointer first (auto* k = &f<W, A>;).
#pragma once

#if defined(__CUDACC__)

#include <lowbit/cuda/check.cuh>

#define LLAMA_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#define LLAMA_CHECK_LAUNCH() LOWBIT_CUDA_CHECK(cudaGetLastError())

#elif defined(LLAMA_CUDA_EMULATION)

#define LLAMA_LAUNCH(kernel, grid, block, stream) ::cuda_emulator::launch((kernel), (grid), (block), (stream))
#define LLAMA_CHECK_LAUNCH() ((void)0)

#else
#error "kernels.cuh: compile with nvcc, or include tests/cuda_emulator.hpp first (CPU emulation)"
#endif
