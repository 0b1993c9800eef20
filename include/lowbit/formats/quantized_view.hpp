// lowbit/formats/quantized_view.hpp
// A non-owning view of one blockwise-quantized tensor: its layout and the
// pointers to codes, scales and (when double-quantized) nested scales, all in
// the same memory space. Also a small owning host container,
// quantized_tensor, for tools and tests; it sits on top of the view, never
// underneath an entry point.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/view.hpp"
#include "layout.hpp"

namespace lowbit {

struct quantized_view {
  blockwise_layout layout;
  uint8_t* codes = nullptr;         // layout.code_bytes() bytes
  float* absmax = nullptr;          // n_blocks floats (only when !layout.nested)
  uint8_t* absmax_codes = nullptr;  // n_blocks codes (only when layout.nested)
  float* nested_absmax = nullptr;   // n_nested_blocks floats (nested)
  float* nested_offset = nullptr;   // one float (nested)
  device dev = device::cpu();

  void validate(const char* what) const {
    layout.validate(what);
    const std::string w(what);
    const bool empty = layout.n == 0;
    require(empty || codes, errc::invalid_argument, w + ": codes pointer is null");
    if (layout.nested) {
      require(empty || absmax_codes, errc::invalid_argument, w + ": nested layout needs absmax_codes");
      require(empty || nested_absmax, errc::invalid_argument, w + ": nested layout needs nested_absmax");
      require(nested_offset, errc::invalid_argument, w + ": nested layout needs nested_offset");
    } else {
      require(empty || absmax, errc::invalid_argument, w + ": absmax pointer is null");
    }
  }
};

// Elements [first, first + count) of q as a view of their own (no copy):
// its codes, scales and nested scales point into q's. `first` must start a
// scale block, and with nested scales a whole group of nested_block_size
// blocks (the nested offset is shared), so that the slice's blocks are q's
// blocks; the slice may end anywhere up to q's end (an empty slice may
// start anywhere). Used for row panels of a
// row-major matrix (rows r0.. of an R x C matrix: first = r0 * C).
inline quantized_view slice(const quantized_view& q, int64_t first, int64_t count) {
  const int64_t unit = int64_t(q.layout.block_size) * (q.layout.nested ? nested_block_size : 1);
  require(first >= 0 && count >= 0 && first <= q.layout.n && count <= q.layout.n - first, errc::invalid_argument,
          "slice: elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
              ") are outside the tensor's " + std::to_string(q.layout.n));
  require(first % unit == 0 || count == 0, errc::invalid_argument,
          "slice: first element " + std::to_string(first) + " does not start " +
              (q.layout.nested ? "a group of " + std::to_string(nested_block_size) + " scale blocks of "
                               : std::string("a scale block of ")) +
              std::to_string(q.layout.block_size) + " elements");
  quantized_view s = q;
  s.layout.n = count;
  const int64_t block = first / q.layout.block_size;
  s.codes = q.codes + (is_4bit(q.layout.fmt) ? first / 2 : first);  // block sizes are even
  if (q.layout.nested) {
    s.absmax_codes = q.absmax_codes + block;
    s.nested_absmax = q.nested_absmax + block / nested_block_size;
  } else {
    s.absmax = q.absmax + block;
  }
  return s;
}

// Owning host storage for one quantized tensor.
struct quantized_tensor {
  blockwise_layout layout;
  std::vector<int64_t> shape;  // logical shape (product == layout.n)
  std::vector<uint8_t> codes;
  std::vector<float> absmax;
  std::vector<uint8_t> absmax_codes;
  std::vector<float> nested_absmax;
  float nested_offset = 0.0f;

  quantized_tensor() = default;
  explicit quantized_tensor(const blockwise_layout& l, std::vector<int64_t> logical_shape = {}) : layout(l) {
    l.validate("quantized_tensor");
    shape = logical_shape.empty() ? std::vector<int64_t>{l.n} : std::move(logical_shape);
    int64_t prod = 1;
    for (int64_t s : shape) prod *= s;
    require(prod == l.n, errc::invalid_argument, "quantized_tensor: shape does not match element count");
    codes.assign(size_t(l.code_bytes()), 0);
    if (l.nested) {
      absmax_codes.assign(size_t(l.n_blocks()), 0);
      nested_absmax.assign(size_t(l.n_nested_blocks()), 0.0f);
    } else {
      absmax.assign(size_t(l.n_blocks()), 0.0f);
    }
  }
  quantized_view view() {
    quantized_view v;
    v.layout = layout;
    v.codes = codes.data();
    v.absmax = layout.nested ? nullptr : absmax.data();
    v.absmax_codes = layout.nested ? absmax_codes.data() : nullptr;
    v.nested_absmax = layout.nested ? nested_absmax.data() : nullptr;
    v.nested_offset = layout.nested ? &nested_offset : nullptr;
    v.dev = device::cpu();
    return v;
  }
};

}  // namespace lowbit
