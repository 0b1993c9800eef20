// lowbit/core/view.hpp
// Non-owning tensor views: a pointer, dtype, shape, strides (in elements) and
// the device the memory lives on. Every lowbit entry point takes views and
// never allocates or frees the caller's tensors. Helpers build views from raw
// pointers; io/dlpack.hpp builds them from a DLPack DLTensor. Shapes whose
// non-zero extents multiply past int64 are refused wherever lowbit builds a
// view (here, DLPack, safetensors), even when a zero extent makes them empty:
// their row-major strides would not fit int64.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "dtype.hpp"
#include "error.hpp"

namespace lowbit {

enum class device_kind : uint8_t {
  cpu,           // ordinary or pinned host memory, touched by CPU code
  cuda,          // cudaMalloc'd memory on device `index`
  cuda_managed,  // cudaMallocManaged memory, usable from both
};

struct device {
  device_kind kind = device_kind::cpu;
  int index = 0;
  static device cpu() { return {device_kind::cpu, 0}; }
  static device cuda(int i = 0) { return {device_kind::cuda, i}; }
  static device managed(int i = 0) { return {device_kind::cuda_managed, i}; }
  bool host_accessible() const { return kind != device_kind::cuda; }
  bool device_accessible() const { return kind != device_kind::cpu; }
};

inline const char* device_name(device_kind k) {
  switch (k) {
    case device_kind::cpu: return "cpu";
    case device_kind::cuda: return "cuda";
    case device_kind::cuda_managed: return "cuda_managed";
  }
  return "?";
}

constexpr int max_rank = 8;

// The product of the non-zero extents of shape[0, ndim), or -1 when an extent
// is negative or the product passes INT64_MAX. Zeros are skipped because a
// row-major stride is the product of the later extents: [0, 4, 2^62] holds no
// element, yet its first stride would be 2^64.
inline int64_t nonzero_extent_product(const int64_t* shape, int ndim) {
  int64_t p = 1;
  for (int i = 0; i < ndim; ++i) {
    if (shape[i] < 0) return -1;
    if (shape[i] == 0) continue;
    if (p > INT64_MAX / shape[i]) return -1;
    p *= shape[i];
  }
  return p;
}

struct tensor_view {
  void* data = nullptr;
  dtype type = dtype::f32;
  int ndim = 0;
  int64_t shape[max_rank] = {};
  int64_t strides[max_rank] = {};  // in elements
  device dev = device::cpu();

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  std::size_t nbytes() const { return std::size_t(numel()) * dtype_size(type); }
  // Row-major with no gaps (extents of 1 may have any stride; a view with
  // no element is contiguous whatever its strides, as torch and numpy say:
  // they export zero-length axes with stride 0). A view whose extents
  // multiply past int64 is not: no int64 stride can hold the product (a
  // wrapped one could match a stride of 0).
  bool is_contiguous() const {
    for (int i = 0; i < ndim; ++i)
      if (shape[i] == 0) return true;
    int64_t expect = 1;
    bool past_int64 = false;  // expect no longer fits
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] == 1) continue;
      if (past_int64 || strides[i] != expect) return false;
      if (shape[i] != 0 && expect > INT64_MAX / shape[i]) past_int64 = true;
      else expect *= shape[i];
    }
    return true;
  }
  std::string shape_string() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
  template <class T>
  T* as(const char* what) const {
    require(type == dtype_of<T>::value, errc::invalid_argument,
            std::string(what) + " has dtype " + dtype_name(type) + ", expected " + dtype_name(dtype_of<T>::value));
    return static_cast<T*>(data);
  }
};

// A contiguous row-major view over `data` with the given shape.
inline tensor_view make_view(void* data, dtype type, std::initializer_list<int64_t> shape,
                             device dev = device::cpu()) {
  tensor_view v;
  v.data = data;
  v.type = type;
  v.dev = dev;
  require(int(shape.size()) <= max_rank, errc::invalid_argument, "view rank exceeds lowbit::max_rank (8)");
  for (int64_t s : shape) {
    require(s >= 0, errc::invalid_argument, "view shape has a negative extent");
    v.shape[v.ndim++] = s;
  }
  require(nonzero_extent_product(v.shape, v.ndim) >= 0, errc::invalid_argument,
          "view shape " + v.shape_string() + " overflows int64 (its non-zero extents multiply past it)");
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.strides[i] = stride;
    stride *= v.shape[i];
  }
  return v;
}

template <class T>
tensor_view make_view(T* data, std::initializer_list<int64_t> shape, device dev = device::cpu()) {
  return make_view(const_cast<void*>(static_cast<const void*>(data)), dtype_of<std::remove_const_t<T>>::value, shape,
                   dev);
}

// A flat 1-D view of n elements.
template <class T>
tensor_view make_flat_view(T* data, int64_t n, device dev = device::cpu()) {
  return make_view(data, {n}, dev);
}

// Validates that v is contiguous, lives where expected and has a floating dtype.
inline void require_contiguous(const tensor_view& v, const char* what) {
  require(v.is_contiguous(), errc::invalid_argument, std::string(what) + " must be contiguous (row-major)");
  require(v.data != nullptr || v.numel() == 0, errc::invalid_argument, std::string(what) + " has a null data pointer");
}

}  // namespace lowbit
