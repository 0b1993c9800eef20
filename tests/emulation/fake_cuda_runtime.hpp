// tests/emulation/fake_cuda_runtime.hpp
// What tests can ask the fake CUDA runtime of fake_cuda_runtime.cpp.
#pragma once

#include <cstddef>

namespace fake_cuda {
size_t live_allocations();  // allocations not yet freed (leak checks)
// Calls so far that make the host wait for the GPU's queued work on a real
// device: stream, event and device synchronizations, cudaMemcpy, cudaMemset
// and cudaFree (their *Async forms do not count).
size_t host_waits();
int sm_count();             // the multiprocessor count the fake reports
// Whether the device "can read pageable host memory" (HMM / ATS systems;
// off by default, as on most GPU systems).
void set_pageable_memory_access(bool on);
// Device memory in use as a GPU's cudaMemGetInfo would count it: live
// device and managed allocations plus the freed bytes memory pools keep
// (exact requested sizes; no context, no granularity); its high-water mark
// since the start or the last reset_peaks(); pinned host memory apart.
size_t device_bytes_in_use();
size_t peak_device_bytes();
size_t pinned_host_bytes_in_use();
size_t peak_pinned_host_bytes();
void reset_peaks();  // peaks := what is in use now
}  // namespace fake_cuda
