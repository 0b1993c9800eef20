// tests/gpu/test_dequant_gemm_gpu.cu compiled by the C++ compiler and run on the CPU
// under the CUDA emulator (see tests/CMakeLists.txt, test_emulated_gpu_suites).
#include "cuda_emulator.hpp"  // first: kernels launch through it

#include "../gpu/test_dequant_gemm_gpu.cu"
