// tests/emulation/fake_cuda_runtime.hpp
// What tests can ask the fake CUDA runtime of fake_cuda_runtime.cpp.
#pragma once

#include <cstddef>

namespace fake_cuda {
size_t live_allocations();  // allocations not yet freed (leak checks)
int sm_count();             // the multiprocessor count the fake reports
}  // namespace fake_cuda
