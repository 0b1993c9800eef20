// bench/quantize_bench_variants.hpp
// The storage variants bench_quantize_cpu and bench_quantize_cuda both
// time (every lowbit format with float32 block scales, NF4 also with nested
// scales) and the row names they share ("quantize/<format>/<scales>/<dtype>"),
// so that a CPU row and its GPU twin can be matched by name.
#pragma once

#include <lowbit/formats/format.hpp>

#include <string>

namespace lowbit_bench {

struct quantize_variant {
  lowbit::format fmt;
  bool nested;
};

inline constexpr quantize_variant quantize_variants[] = {
    {lowbit::format::nf4, false},      {lowbit::format::nf4, true},       {lowbit::format::fp4, false},
    {lowbit::format::int4, false},     {lowbit::format::int8, false},     {lowbit::format::dynamic8, false},
    {lowbit::format::udynamic8, false}, {lowbit::format::dynamic4, false}, {lowbit::format::ulinear4, false}};

// "<format>/<nested|f32scale>/<dtype>", the part of a row's name after
// "quantize/" or "dequantize/".
inline std::string quantize_variant_suffix(const quantize_variant& v, const char* dtype_name) {
  return std::string(lowbit::format_name(v.fmt)) + (v.nested ? "/nested" : "/f32scale") + "/" + dtype_name;
}

}  // namespace lowbit_bench
