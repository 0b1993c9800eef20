// lowbit/cuda/launch.cuh
// How the library launches its CUDA kernels, so that the same source runs
// under nvcc and, for tests on machines without a GPU, under the CPU
// emulator of tests/emulation/cuda_emulator.hpp (g++ against CUDA's host
// headers):
//   LOWBIT_LAUNCH(kernel, grid, block, smem, stream)(args...);
//   LOWBIT_DYNAMIC_SHARED(name);   // in a kernel: unsigned char name[smem]
// nvcc: kernel<<<grid, block, smem, stream>>>(args...) and an extern
// __shared__ array aligned to 16 bytes. Emulation
// (LOWBIT_CUDA_EMULATION, defined by cuda_emulator.hpp, which must be
// included first): every thread of every block runs on the host, at once.
// Launch errors are checked by the caller (cudaGetLastError) as usual.
// `kernel` must be one macro argument: a template-id with a comma goes
// through a local function pointer first (auto* k = &f<A, B>;), and every
// kernel parameter must be passed (the emulator ignores default arguments).
// Every kernel of the library launches through it; the mma kernel's PTX
// (ldmatrix, mma.sync, cp.async) has emulation branches of its own
// (gemm/mma_gemm.cuh).
#pragma once

#if defined(__CUDACC__)

#define LOWBIT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#define LOWBIT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]

#elif defined(LOWBIT_CUDA_EMULATION)

#define LOWBIT_LAUNCH(kernel, grid, block, smem, stream) \
  ::cuda_emulator::launch((kernel), (grid), (block), (smem), (stream))
#define LOWBIT_DYNAMIC_SHARED(name) unsigned char* const name = ::cuda_emulator::dynamic_shared()

#else
#error "lowbit CUDA kernels: compile with nvcc, or include tests/emulation/cuda_emulator.hpp first (CPU emulation)"
#endif
