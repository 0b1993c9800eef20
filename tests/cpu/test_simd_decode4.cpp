// The x86 vector paths of 4-bit decoding (cpu/simd_decode4.hpp) against
// decode_block, byte for byte (tests/cpu/decode_compare.hpp), for the five
// 4-bit formats and float32 / bfloat16 / float16 output. Built once per
// instruction set (tests/CMakeLists.txt: -mavx2 -mf16c, and AVX-512), so CI
// runs each path whatever -march the rest of the build uses; a CPU without
// the instruction set makes the binary exit 77, which CTest reports as
// SKIPPED.
#define DOCTEST_CONFIG_IMPLEMENT
#include "decode_compare.hpp"

#include <cstdio>

static_assert(lowbit::cpu::simd_decode4_available, "built without the instruction set it tests");

TEST_CASE("the vector path decodes 4-bit codes as decode_block does") {
  using namespace lowbit;
  decode_compare::compare_decode_all_dtypes<format::nf4>();
  decode_compare::compare_decode_all_dtypes<format::fp4>();
  decode_compare::compare_decode_all_dtypes<format::int4>();
  decode_compare::compare_decode_all_dtypes<format::dynamic4>();
  decode_compare::compare_decode_all_dtypes<format::ulinear4>();
}

int main(int argc, char** argv) {
  __builtin_cpu_init();
#if defined(LOWBIT_SIMD_DECODE4_AVX512)
  const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const char* isa = "AVX-512 (F, BW)";
#else
  const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  const char* isa = "AVX2 + F16C";
#endif
  if (!supported) {
    std::fprintf(stderr, "SKIPPED: this CPU lacks %s; the vector path it tests was not run\n", isa);
    return 77;
  }
  std::printf("testing the %s path\n", isa);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
