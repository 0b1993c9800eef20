// capi/src/c_api_support.hpp
// What every C entry point of liblowbit_c shares: the guard that turns a C++
// exception into a lowbit_c_status plus a thread-local message (no
// exception may cross the C boundary), and the conversions from the C
// structs to lowbit's views: a DLTensor to a tensor_view (through lowbit's
// own DLPack adapter, then checked for CPU memory), a lowbit_c_quantized to
// a quantized_view (every buffer checked for dtype, size and contiguity
// against the layout, each error naming the buffer).
#pragma once

#include <lowbit/lowbit.hpp>
#include <lowbit/io/dlpack.hpp>

#include <exception>
#include <new>
#include <string>

#include "lowbit_c.h"

namespace lowbit_capi {

inline std::string& last_error() {
  thread_local std::string message;
  return message;
}

// The CUDA stream of this thread's GPU calls (lowbit_c_set_stream); NULL is
// the legacy default stream.
inline void*& current_stream() {
  thread_local void* stream = nullptr;
  return stream;
}

inline int status_of(lowbit::errc c) {
  switch (c) {
    case lowbit::errc::invalid_argument: return LOWBIT_C_INVALID_ARGUMENT;
    case lowbit::errc::unsupported: return LOWBIT_C_UNSUPPORTED;
    case lowbit::errc::non_finite: return LOWBIT_C_NON_FINITE;
    case lowbit::errc::io: return LOWBIT_C_IO;
    case lowbit::errc::malformed_file: return LOWBIT_C_MALFORMED_FILE;
    case lowbit::errc::cuda: return LOWBIT_C_CUDA;
  }
  return LOWBIT_C_INTERNAL;
}

// Runs body (which may throw) and returns its status; the message of a
// failure is kept for lowbit_c_last_error() on this thread.
template <class Body>
int guarded(Body&& body) noexcept {
  try {
    body();
    return LOWBIT_C_OK;
  } catch (const lowbit::error& e) {
    last_error() = e.what();
    return status_of(e.code());
  } catch (const std::bad_alloc&) {
    last_error() = "lowbit: out of memory";
    return LOWBIT_C_INTERNAL;
  } catch (const std::exception& e) {
    last_error() = std::string("lowbit: internal error: ") + e.what();
    return LOWBIT_C_INTERNAL;
  } catch (...) {
    last_error() = "lowbit: internal error (unknown exception)";
    return LOWBIT_C_INTERNAL;
  }
}

inline void require_pointer(const void* p, const std::string& what) {
  lowbit::require(p != nullptr, lowbit::errc::invalid_argument, what + " is NULL");
}

// Where a call runs: on CPU threads, or on the GPU (CUDA builds only). A
// call runs where its first tensor lives: CUDA device or managed memory
// means the GPU, host or pinned memory the CPU; every other tensor of the
// call must then be in memory that side can use.
enum class side { host, cuda };

inline const char* side_name(side s) { return s == side::cuda ? "CUDA device" : "host (CPU)"; }

inline bool built_with_cuda() {
#ifdef LOWBIT_C_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The DLTensor as a tensor_view, wherever it lives.
inline lowbit::tensor_view any_view(const DLTensor* t, const std::string& what) {
  require_pointer(t, what);
  return lowbit::from_dlpack(*t, what);
}

inline side side_of(const lowbit::tensor_view& v, const std::string& what) {
  if (v.dev.kind == lowbit::device_kind::cpu) return side::host;
  lowbit::require(built_with_cuda(), lowbit::errc::unsupported,
                  what + " is in CUDA memory, but this build of liblowbit_c has no CUDA support (it was built "
                         "without nvcc); pass host tensors or rebuild with the CUDA toolkit");
  return side::cuda;
}

// The DLTensor as a view usable on side s (host: host or managed memory;
// cuda: device or managed memory).
inline lowbit::tensor_view view_on(side s, const DLTensor* t, const std::string& what) {
  const lowbit::tensor_view v = any_view(t, what);
  const bool usable = s == side::host ? v.dev.host_accessible() : v.dev.device_accessible();
  lowbit::require(usable, lowbit::errc::invalid_argument,
                  what + " is in " + lowbit::device_name(v.dev.kind) + " memory, but this call runs on the " +
                      side_name(s) + " side (where its first tensor is); put all of a call's tensors on one side");
  return v;
}

inline lowbit::tensor_view contiguous_view_on(side s, const DLTensor* t, const std::string& what) {
  lowbit::tensor_view v = view_on(s, t, what);
  lowbit::require_contiguous(v, what.c_str());
  return v;
}

inline std::string format_argument(const char* name) {
  require_pointer(name, "format");
  return std::string(name);
}

// The side a quantized tensor's call runs on, when it is the call's first
// tensor (the side of its codes).
inline side side_of(const lowbit_c_quantized* q, const std::string& what) {
  require_pointer(q, what);
  return side_of(any_view(q->codes, what + ".codes"), what + ".codes");
}

// The layout a lowbit_c_quantized describes (format name, numel, block
// size, nested), validated.
inline lowbit::blockwise_layout layout_of(const char* format, int64_t numel, int32_t block_size, int32_t nested,
                                          const std::string& what) {
  const lowbit::format f = lowbit::parse_format(format_argument(format));
  lowbit::require(numel >= 0, lowbit::errc::invalid_argument,
                  what + ": numel " + std::to_string(numel) + " is negative");
  lowbit::blockwise_layout l = lowbit::make_layout(f, numel, block_size, nested != 0);
  l.validate(what.c_str());
  return l;
}

// One buffer of a quantized tensor: a contiguous host tensor of `type`
// holding exactly `count` elements (any shape), or NULL where the layout
// has no such buffer.
inline void* buffer_of(side s, const DLTensor* t, lowbit::dtype type, int64_t count, const std::string& what) {
  const lowbit::tensor_view v = contiguous_view_on(s, t, what);
  lowbit::require(v.type == type, lowbit::errc::invalid_argument,
                  what + " has dtype " + lowbit::dtype_name(v.type) + ", expected " + lowbit::dtype_name(type));
  lowbit::require(v.numel() == count, lowbit::errc::invalid_argument,
                  what + " has " + std::to_string(v.numel()) + " elements, expected " + std::to_string(count));
  return v.data;
}

inline void require_absent(const DLTensor* t, const std::string& what, const char* why) {
  lowbit::require(t == nullptr, lowbit::errc::invalid_argument, what + " must be NULL " + why);
}

// The quantized tensor's buffers as a quantized_view for side s.
inline lowbit::quantized_view quantized_view_of(side s, const lowbit_c_quantized* q, const std::string& what) {
  require_pointer(q, what);
  lowbit::quantized_view v;
  v.layout = layout_of(q->format, q->numel, q->block_size, q->nested, what);
  v.dev = lowbit::device::cpu();
  if (s == side::cuda) {
    require_pointer(q->codes, what + ".codes");
    v.dev = any_view(q->codes, what + ".codes").dev;  // cuda(i) or managed(i), as the codes say
  }
  const lowbit::blockwise_layout& l = v.layout;
  v.codes = static_cast<uint8_t*>(buffer_of(s, q->codes, lowbit::dtype::u8, l.code_bytes(), what + ".codes"));
  if (l.nested) {
    require_absent(q->absmax, what + ".absmax", "with nested scales (use absmax_codes)");
    v.absmax_codes =
        static_cast<uint8_t*>(buffer_of(s, q->absmax_codes, lowbit::dtype::u8, l.n_blocks(), what + ".absmax_codes"));
    v.nested_absmax = static_cast<float*>(
        buffer_of(s, q->nested_absmax, lowbit::dtype::f32, l.n_nested_blocks(), what + ".nested_absmax"));
    v.nested_offset =
        static_cast<float*>(buffer_of(s, q->nested_offset, lowbit::dtype::f32, 1, what + ".nested_offset"));
  } else {
    require_absent(q->absmax_codes, what + ".absmax_codes", "without nested scales");
    require_absent(q->nested_absmax, what + ".nested_absmax", "without nested scales");
    require_absent(q->nested_offset, what + ".nested_offset", "without nested scales");
    v.absmax = static_cast<float*>(buffer_of(s, q->absmax, lowbit::dtype::f32, l.n_blocks(), what + ".absmax"));
  }
  v.validate(what.c_str());
  return v;
}

}  // namespace lowbit_capi
