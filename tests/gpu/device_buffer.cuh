// Minimal owning device buffers for GPU tests (the library itself never owns
// caller memory): allocation, poisoning, and host<->device copies.
#pragma once

#include <lowbit/cuda/check.cuh>
#include <lowbit/formats/quantized_view.hpp>

#include <vector>

template <class T>
struct device_buffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit device_buffer(size_t n, bool managed = false) : count(n) {
    if (managed) LOWBIT_CUDA_CHECK(cudaMallocManaged(&ptr, (n ? n : 1) * sizeof(T) + 16));
    else LOWBIT_CUDA_CHECK(cudaMalloc(&ptr, (n ? n : 1) * sizeof(T) + 16));
    LOWBIT_CUDA_CHECK(cudaMemset(ptr, 0xA5, (n ? n : 1) * sizeof(T) + 16));  // poison
  }
  device_buffer(const device_buffer&) = delete;
  ~device_buffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& h, size_t offset = 0) {
    LOWBIT_CUDA_CHECK(cudaMemcpy(ptr + offset, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download(size_t n, size_t offset = 0) const {
    std::vector<T> h(n);
    LOWBIT_CUDA_CHECK(cudaMemcpy(h.data(), ptr + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

// Device storage for one quantized tensor, poisoned before use.
struct device_quantized {
  lowbit::blockwise_layout layout;
  device_buffer<uint8_t> codes, absmax_codes;
  device_buffer<float> absmax, nested_absmax, offset;
  explicit device_quantized(const lowbit::blockwise_layout& l, bool managed = false)
      : layout(l),
        codes(size_t(l.code_bytes()), managed),
        absmax_codes(size_t(l.nested ? l.n_blocks() : 0), managed),
        absmax(size_t(l.nested ? 0 : l.n_blocks()), managed),
        nested_absmax(size_t(l.n_nested_blocks()), managed),
        offset(1, managed) {}
  lowbit::quantized_view view(bool managed = false) {
    lowbit::quantized_view v;
    v.layout = layout;
    v.codes = codes.ptr;
    v.absmax = layout.nested ? nullptr : absmax.ptr;
    v.absmax_codes = layout.nested ? absmax_codes.ptr : nullptr;
    v.nested_absmax = layout.nested ? nested_absmax.ptr : nullptr;
    v.nested_offset = layout.nested ? offset.ptr : nullptr;
    v.dev = managed ? lowbit::device::managed() : lowbit::device::cuda();
    return v;
  }
};
