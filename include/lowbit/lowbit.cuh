// lowbit/lowbit.cuh
// Umbrella header for CUDA translation units: everything in lowbit.hpp plus
// the CUDA kernels and their host launchers.
#pragma once

#include "lowbit.hpp"
#include "cuda/check.cuh"
#include "cuda/quantize.cuh"
#include "optim/cuda_step.cuh"
#include "optim/cuda_memory.cuh"
