// lowbit/formats/format.hpp
// The list of quantized storage formats and their compile-time traits (bits
// per code, the code that decodes to exactly 0.0, whether codes are signed
// integers or indices into a table), plus name parsing for tools and files.
// Anything that needs to know "what is NF4" by type starts here.
#pragma once

#include <cstdint>
#include <string>

#include "../core/config.hpp"
#include "../core/error.hpp"

namespace lowbit {

enum class format : uint8_t {
  nf4,        // QLoRA NormalFloat4, 16-entry table (codebooks.hpp)
  fp4,        // bitsandbytes E2M1 variant, sign bit 3
  int4,       // symmetric integer: code q in -7..7 (two's-complement nibble), value q/7
  int8,       // symmetric integer absmax: code q in -127..127 (int8 byte), value q/127
  dynamic8,   // bitsandbytes signed 8-bit dynamic tree map
  udynamic8,  // bitsandbytes unsigned 8-bit dynamic tree map (non-negative data)
  dynamic4,   // signed 4-bit dynamic tree map (4-bit optimizer first moment)
  ulinear4,   // zero-free linear 4-bit map (c+1)/16 (4-bit optimizer second moment)
};

constexpr int format_count = 8;

LOWBIT_HD constexpr int format_bits(format f) {
  return (f == format::nf4 || f == format::fp4 || f == format::int4 || f == format::dynamic4 ||
          f == format::ulinear4)
             ? 4
             : 8;
}
// Formats whose table only covers [0, 1]: for non-negative data such as
// Adam's second moment.
LOWBIT_HD constexpr bool is_unsigned_format(format f) { return f == format::udynamic8 || f == format::ulinear4; }
LOWBIT_HD constexpr bool is_4bit(format f) { return format_bits(f) == 4; }

// Formats whose codes index a generated table (dynamic_table() in codebooks.hpp)
// that kernels must be given, rather than constants compiled into the code.
LOWBIT_HD constexpr bool uses_dynamic_table(format f) {
  return f == format::dynamic8 || f == format::udynamic8 || f == format::dynamic4;
}

// False only for ulinear4, whose table has no 0: its all-zero blocks decode
// to exact zeros only through a zero float32 scale, so it cannot use
// double-quantized scales (layout.hpp rejects that combination).
LOWBIT_HD constexpr bool has_zero_code(format f) { return f != format::ulinear4; }

// The code whose decoded value is exactly 0.0; used for padding nibbles and
// for all-zero blocks.
LOWBIT_HD constexpr uint8_t zero_code(format f) {
  switch (f) {
    case format::nf4: return 7;
    case format::fp4: return 0;
    case format::int4: return 0;
    case format::int8: return 0;
    case format::dynamic8: return 127;
    case format::udynamic8: return 0;
    case format::dynamic4: return 7;
    case format::ulinear4: return 0;  // no exact zero: a zero block decodes to 0 through its zero scale
  }
  return 0;
}

inline const char* format_name(format f) {
  switch (f) {
    case format::nf4: return "nf4";
    case format::fp4: return "fp4";
    case format::int4: return "int4";
    case format::int8: return "int8";
    case format::dynamic8: return "dynamic8";
    case format::udynamic8: return "udynamic8";
    case format::dynamic4: return "dynamic4";
    case format::ulinear4: return "ulinear4";
  }
  return "?";
}

inline format parse_format(const std::string& s) {
  for (int i = 0; i < format_count; ++i)
    if (s == format_name(format(i))) return format(i);
  throw error(errc::invalid_argument,
              "unknown format '" + s + "' (expected nf4, fp4, int4, int8, dynamic8, udynamic8, dynamic4 or ulinear4)");
}

// Calls f(std::integral_constant<format, F>{}) for the runtime format value,
// turning a runtime choice into a template argument.
template <format F>
struct format_tag {
  static constexpr format value = F;
};

template <class Fn>
decltype(auto) dispatch_format(format f, Fn&& fn) {
  switch (f) {
    case format::nf4: return fn(format_tag<format::nf4>{});
    case format::fp4: return fn(format_tag<format::fp4>{});
    case format::int4: return fn(format_tag<format::int4>{});
    case format::int8: return fn(format_tag<format::int8>{});
    case format::dynamic8: return fn(format_tag<format::dynamic8>{});
    case format::udynamic8: return fn(format_tag<format::udynamic8>{});
    case format::dynamic4: return fn(format_tag<format::dynamic4>{});
    case format::ulinear4: return fn(format_tag<format::ulinear4>{});
  }
  throw error(errc::invalid_argument, "invalid lowbit::format value " + std::to_string(int(f)));
}

}  // namespace lowbit
