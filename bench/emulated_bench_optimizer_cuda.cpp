// bench/bench_optimizer_cuda.cu compiled by the C++ compiler and run on the CPU
// under the CUDA emulator (tests/emulation), on a tiny size: a smoke test of
// the benchmark binary itself (argument handling, set-up, every row runs
// and checks its output, counters), so a GPU session does not find its
// bugs. Its timings are the emulator's and mean nothing.
#include "../tests/emulation/cuda_emulator.hpp"  // first: kernels launch through it

#include "bench_optimizer_cuda.cu"
