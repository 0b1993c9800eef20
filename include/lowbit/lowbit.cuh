// lowbit/lowbit.cuh
// Umbrella header for CUDA translation units: everything in lowbit.hpp plus
// the CUDA kernels and their host launchers. (Calling the dequant-GEMM's
// cuBLAS regime or gemm_weight_grad needs CUDA::cublas at link time;
// including this header does not.)
#pragma once

#include "lowbit.hpp"
#include "cuda/check.cuh"
#include "cuda/quantize.cuh"
#include "cuda/dequantize_rows.cuh"
#include "cuda/dequant_gemm.cuh"
#include "optim/cuda_step.cuh"
#include "optim/cuda_memory.cuh"
