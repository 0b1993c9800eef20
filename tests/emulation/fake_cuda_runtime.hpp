// tests/emulation/fake_cuda_runtime.hpp
// What tests can ask the fake CUDA runtime of fake_cuda_runtime.cpp.
#pragma once

#include <cstddef>

namespace fake_cuda {
size_t live_allocations();  // allocations not yet freed (leak checks)
int sm_count();             // the multiprocessor count the fake reports
// Whether the device "can read pageable host memory" (HMM / ATS systems;
// off by default, as on most GPU systems).
void set_pageable_memory_access(bool on);
}  // namespace fake_cuda
