// lowbit/cuda/launch.cuh
// How the library launches its CUDA kernels, so that the same source runs
// under nvcc and, for tests on machines without a GPU, under the CPU
// emulator of tests/emulation/cuda_emulator.hpp (g++ against CUDA's host
// headers):
//   LOWBIT_LAUNCH(kernel, grid, block, smem, stream)(args...);
// nvcc: kernel<<<grid, block, smem, stream>>>(args...). Emulation
// (LOWBIT_CUDA_EMULATION, defined by cuda_emulator.hpp, which must be
// included first): every thread of every block runs on the host, at once.
// Launch errors are checked by the caller (cudaGetLastError) as usual.
// `kernel` must be one macro argument: a template-id with a comma goes
// through a local function pointer first (auto* k = &f<A, B>;), and every
// kernel parameter must be passed (the emulator ignores default arguments).
// Not for the mma kernels of gemm/ (PTX the host cannot run).
#pragma once

#if defined(__CUDACC__)

#define LOWBIT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>

#elif defined(LOWBIT_CUDA_EMULATION)

#define LOWBIT_LAUNCH(kernel, grid, block, smem, stream) \
  ::cuda_emulator::launch((kernel), (grid), (block), (smem), (stream))

#else
#error "lowbit CUDA kernels: compile with nvcc, or include tests/emulation/cuda_emulator.hpp first (CPU emulation)"
#endif
