// lowbit/formats/layout.hpp
// Blockwise storage layout and exact size accounting. A tensor of n elements
// is flattened row-major and cut into blocks of `block_size` (a power of two,
// 32..4096); each block stores codes plus one scale (float32 absmax, or a
// uint8 code when scales are double-quantized with nested blocks of 256).
// This header answers "how many bytes / bits per parameter" for any layout.
// A layout holds at most 2^62 elements, so that every count below, bytes
// included, fits int64.
#pragma once

#include <cstdint>
#include <string>

#include "../core/error.hpp"
#include "format.hpp"

namespace lowbit {

constexpr int nested_block_size = 256;  // bitsandbytes' nested (double-quant) block
constexpr int min_block_size = 32;
constexpr int max_block_size = 4096;
// Largest element count a layout takes: an 8-bit layout's total bytes
// (codes, then scales of up to an eighth more) stay below INT64_MAX.
constexpr int64_t max_layout_elements = int64_t(1) << 62;

inline bool is_valid_block_size(int64_t bs) {
  return bs >= min_block_size && bs <= max_block_size && (bs & (bs - 1)) == 0;
}

struct blockwise_layout {
  format fmt = format::nf4;
  int64_t n = 0;          // number of elements
  int32_t block_size = 64;
  bool nested = false;    // double-quantized scales

  // Rounded-up divisions written so that no intermediate passes n (an
  // unvalidated n near INT64_MAX must not overflow on the way to validate()).
  int64_t n_blocks() const { return n / block_size + (n % block_size != 0); }
  int64_t n_nested_blocks() const {
    return nested ? n_blocks() / nested_block_size + (n_blocks() % nested_block_size != 0) : 0;
  }
  // packed codes: two per byte for 4-bit formats (element 2j in the high nibble)
  int64_t code_bytes() const { return is_4bit(fmt) ? n / 2 + n % 2 : n; }
  // per-block scales: float32 absmax, or one uint8 code each when nested
  int64_t scale_bytes() const { return nested ? n_blocks() : 4 * n_blocks(); }
  // float32 absmax of each nested block (the shared 1 KiB map and the offset
  // are per tensor constants and are not counted, as in the published 4.127)
  int64_t nested_bytes() const { return 4 * n_nested_blocks(); }
  int64_t total_bytes() const { return code_bytes() + scale_bytes() + nested_bytes(); }
  double bits_per_param() const { return n ? 8.0 * double(total_bytes()) / double(n) : 0.0; }

  void validate(const char* what = "layout") const {
    require(n >= 0, errc::invalid_argument, std::string(what) + ": element count must be >= 0");
    require(n <= max_layout_elements, errc::invalid_argument,
            std::string(what) + ": element count " + std::to_string(n) + " exceeds 2^62, the most a layout holds");
    require(is_valid_block_size(block_size), errc::invalid_argument,
            std::string(what) + ": block_size " + std::to_string(block_size) +
                " is not a power of two in [32, 4096]");
    require(!nested || has_zero_code(fmt), errc::unsupported,
            std::string(what) + ": format " + format_name(fmt) +
                " has no zero code and cannot use double-quantized scales (its zero blocks would not decode to 0)");
  }
};

inline blockwise_layout make_layout(format f, int64_t n, int block_size = 64, bool nested = false) {
  blockwise_layout l{f, n, block_size, nested};
  l.validate();
  return l;
}

}  // namespace lowbit
