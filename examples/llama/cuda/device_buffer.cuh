// examples/llama/cuda/device_buffer.cuh
// The CUDA trainer's only owning container: device_array<T>, a cudaMalloc'd
// array of n elements freed on destruction, with upload / download helpers
// and a running total of the bytes the trainer holds on the device (the
// memory table's activation and gradient rows). Everything else in the CUDA
// path takes raw pointers or lowbit views into these arrays.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include <lowbit/cuda/check.cuh>

namespace llama {
namespace gpu {

// Bytes currently held through device_array (all instances).
inline int64_t& device_bytes_held() {
  static int64_t bytes = 0;
  return bytes;
}

template <class T>
class device_array {
 public:
  device_array() = default;
  explicit device_array(int64_t n) { resize(n); }
  ~device_array() { reset(); }
  device_array(device_array&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_array& operator=(device_array&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;

  // Reallocates to n elements (contents undefined); n == 0 frees.
  void resize(int64_t n) {
    reset();
    if (n <= 0) return;
    LOWBIT_CUDA_CHECK(cudaMalloc(&p_, size_t(n) * sizeof(T)));
    n_ = n;
    device_bytes_held() += bytes();
  }
  void reset() {
    if (p_) {
      cudaFree(p_);
      device_bytes_held() -= bytes();
    }
    p_ = nullptr;
    n_ = 0;
  }
  void zero(cudaStream_t s = nullptr) {
    if (p_) LOWBIT_CUDA_CHECK(cudaMemsetAsync(p_, 0, bytes(), s));
  }
  void upload(const T* host, int64_t n, int64_t offset = 0) {
    if (n > 0) LOWBIT_CUDA_CHECK(cudaMemcpy(p_ + offset, host, size_t(n) * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* host, int64_t n, int64_t offset = 0) const {
    if (n > 0) LOWBIT_CUDA_CHECK(cudaMemcpy(host, p_ + offset, size_t(n) * sizeof(T), cudaMemcpyDeviceToHost));
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  int64_t size() const { return n_; }
  int64_t bytes() const { return n_ * int64_t(sizeof(T)); }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace gpu
}  // namespace llama
