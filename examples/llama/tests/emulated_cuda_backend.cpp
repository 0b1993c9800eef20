// The CUDA trainer's translation unit (cuda/cuda_backend.cu: sessions,
// model, attention, kernels, and the lowbit CUDA library under them)
// compiled by the C++ compiler against the CPU CUDA emulator of
// tests/emulation/cuda_emulator.hpp, for test_llama_emulated: the GPU
// tests of test_llama_gpu.cpp then run on a machine without a GPU, with
// fake_cuda_runtime.cpp and fake_cublas.cpp in place of libcudart and
// libcublas.
#include "cuda_emulator.hpp"  // first: kernels launch through it

#include "../cuda/cuda_backend.cu"
