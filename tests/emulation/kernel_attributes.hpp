// tests/emulation/kernel_attributes.hpp
// Per-kernel launch limits that a GPU enforces and the emulator must too:
// a kernel may take at most 48 KiB of dynamic shared memory unless
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
// bytes) raised its limit (up to 227 KiB on sm_90); a launch above it fails
// on a GPU. The fake runtime's cudaFuncSetAttribute records the limit here
// and the emulator's launches check it, so a missing attribute call fails
// in CI instead of in a GPU session. One registry per program (an inline
// function's static).
#pragma once

#include <cstddef>
#include <map>

namespace kernel_attributes {

constexpr size_t default_dynamic_shared_bytes = size_t(48) * 1024;
constexpr size_t max_dynamic_shared_bytes = size_t(227) * 1024;

inline std::map<const void*, size_t>& dynamic_shared_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}

inline void set_dynamic_shared_limit(const void* kernel, size_t bytes) { dynamic_shared_limits()[kernel] = bytes; }

// The most dynamic shared memory a launch of `kernel` may request.
inline size_t dynamic_shared_limit(const void* kernel) {
  const auto it = dynamic_shared_limits().find(kernel);
  return it == dynamic_shared_limits().end() ? default_dynamic_shared_bytes : it->second;
}

}  // namespace kernel_attributes
