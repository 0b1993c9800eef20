// lowbit/io/dlpack.hpp
// The DLPack adapter: turns a DLTensor handed over by PyTorch, JAX or CuPy
// (DLPack 0.6 ABI, <dlpack/dlpack.h>) into a lowbit::tensor_view after
// checking everything the view cannot express: the device type (CPU and
// pinned host memory map to cpu, CUDA to cuda, CUDA managed memory to
// cuda_managed, anything else is rejected by name), the element type (float
// 64/32/16, bfloat16, int 8/16/32/64, uint8, bool; one lane), the rank
// (<= lowbit::max_rank), shapes and strides (null strides mean compact
// row-major), and byte_offset, which is folded into the data pointer. The
// result is a non-owning view: the producer keeps the memory alive. Also
// check_alignment(), a guard for kernels that need vector-aligned pointers.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include <dlpack/dlpack.h>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"

namespace lowbit {

// DLPack 0.8 added kDLBool = 6 (PyTorch >= 2.0 exports bool with it); the 0.6
// header has no name for it, so lowbit spells the value out.
constexpr uint8_t dlpack_bool_code = 6;

inline const char* dlpack_device_name(int type) {
  switch (type) {
    case kDLCPU: return "kDLCPU";
    case kDLCUDA: return "kDLCUDA";
    case kDLCUDAHost: return "kDLCUDAHost";
    case kDLOpenCL: return "kDLOpenCL";
    case kDLVulkan: return "kDLVulkan";
    case kDLMetal: return "kDLMetal";
    case kDLVPI: return "kDLVPI";
    case kDLROCM: return "kDLROCM";
    case kDLROCMHost: return "kDLROCMHost";
    case kDLExtDev: return "kDLExtDev";
    case kDLCUDAManaged: return "kDLCUDAManaged";
  }
  return "unknown";
}

// The raw device type code. Newer producers send codes the 0.6 enum lacks
// (kDLOneAPI = 14, ...); copying the bits avoids loading an out-of-range enum.
inline int dlpack_device_code(const DLDevice& d) {
  std::underlying_type_t<DLDeviceType> v;
  std::memcpy(&v, &d.device_type, sizeof v);
  return int(v);
}

// The lowbit device of a DLPack device; errc::unsupported for others.
inline device device_from_dlpack(DLDevice d, const std::string& what = "DLTensor") {
  const int code = dlpack_device_code(d);
  switch (code) {
    case kDLCPU:
    case kDLCUDAHost: return device::cpu();
    case kDLCUDA: return device::cuda(d.device_id);
    case kDLCUDAManaged: return device::managed(d.device_id);
    default: break;
  }
  throw error(errc::unsupported, what + ": device type " + dlpack_device_name(code) + " (" + std::to_string(code) +
                                     ") is not supported (expected kDLCPU, kDLCUDAHost, kDLCUDA or kDLCUDAManaged)");
}

// The lowbit dtype of a DLPack data type; errc::unsupported for others.
inline dtype dtype_from_dlpack(DLDataType t, const std::string& what = "DLTensor") {
  const std::string desc = "code " + std::to_string(int(t.code)) + ", bits " + std::to_string(int(t.bits)) +
                           ", lanes " + std::to_string(int(t.lanes));
  require(t.lanes == 1, errc::unsupported, what + ": vector dtypes are not supported (" + desc + ")");
  switch (t.code) {
    case kDLFloat:
      if (t.bits == 32) return dtype::f32;
      if (t.bits == 16) return dtype::f16;
      if (t.bits == 64) return dtype::f64;
      break;
    case kDLBfloat:
      if (t.bits == 16) return dtype::bf16;
      break;
    case kDLInt:
      if (t.bits == 8) return dtype::i8;
      if (t.bits == 16) return dtype::i16;
      if (t.bits == 32) return dtype::i32;
      if (t.bits == 64) return dtype::i64;
      break;
    case kDLUInt:
      if (t.bits == 8) return dtype::u8;
      break;
    case dlpack_bool_code:
      if (t.bits == 8) return dtype::boolean;
      break;
    default: break;
  }
  throw error(errc::unsupported, what + ": dtype (" + desc +
                                     ") is not supported (float 64/32/16, bfloat 16, int 8/16/32/64, uint 8, bool)");
}

// A view of `t`. Validates device, dtype, rank, shape and strides, applies
// byte_offset, and requires the resulting pointer to be aligned to the
// element size. `what` names the tensor in error messages.
inline tensor_view from_dlpack(const DLTensor& t, const std::string& what = "DLTensor") {
  tensor_view v;
  v.dev = device_from_dlpack(t.device, what);
  v.type = dtype_from_dlpack(t.dtype, what);
  require(t.ndim >= 0 && t.ndim <= max_rank, errc::invalid_argument,
          what + ": ndim " + std::to_string(t.ndim) + " is outside [0, " + std::to_string(max_rank) + "]");
  require(t.ndim == 0 || t.shape != nullptr, errc::invalid_argument, what + ": shape pointer is null");
  v.ndim = t.ndim;
  for (int i = 0; i < t.ndim; ++i) {
    const int64_t s = t.shape[i];
    require(s >= 0, errc::invalid_argument, what + ": shape[" + std::to_string(i) + "] is negative");
    v.shape[i] = s;
  }
  // Checked with zeros skipped: an empty tensor's compact strides are still
  // products of its later extents.
  require(nonzero_extent_product(v.shape, v.ndim) >= 0, errc::invalid_argument,
          what + ": shape " + v.shape_string() + " overflows int64 (its non-zero extents multiply past it)");
  const int64_t numel = v.numel();
  if (t.strides == nullptr) {
    int64_t stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      v.strides[i] = stride;
      stride *= v.shape[i];
    }
  } else {
    for (int i = 0; i < t.ndim; ++i) v.strides[i] = t.strides[i];
  }
  require(t.data != nullptr || numel == 0, errc::invalid_argument, what + ": data pointer is null");
  v.data = t.data ? static_cast<void*>(static_cast<char*>(t.data) + t.byte_offset) : nullptr;
  require(reinterpret_cast<std::uintptr_t>(v.data) % dtype_size(v.type) == 0, errc::invalid_argument,
          what + ": data + byte_offset is not aligned to the " + std::to_string(dtype_size(v.type)) +
              "-byte element size");
  return v;
}

// Throws errc::invalid_argument naming `what` unless v.data is a multiple of
// `bytes` (a power of two), e.g. 16 before a kernel's 128-bit vector loads.
inline void check_alignment(const tensor_view& v, std::size_t bytes, const char* what) {
  require(bytes != 0 && (bytes & (bytes - 1)) == 0, errc::invalid_argument,
          std::string("check_alignment: alignment ") + std::to_string(bytes) + " is not a power of two");
  require(reinterpret_cast<std::uintptr_t>(v.data) % bytes == 0, errc::invalid_argument,
          std::string(what) + " is not " + std::to_string(bytes) + "-byte aligned");
}

// from_dlpack(t) plus require_contiguous: for entry points that need dense
// row-major memory.
inline tensor_view from_dlpack_contiguous(const DLTensor& t, const std::string& what = "DLTensor") {
  tensor_view v = from_dlpack(t, what);
  require_contiguous(v, what.c_str());
  return v;
}

}  // namespace lowbit
