// cpu/vector_codec.hpp against the shared element functions the CUDA
// kernels run (formats/block_codec.hpp): the same block absmax, bit for bit,
// and the same codes, byte for byte, for every format, with float32,
// bfloat16 and float16 input. Blocks of 1 to 5001 elements (odd counts, the
// 256-element chunk edge, several chunks); values on and next to every
// codebook value and midpoint of the block's grid, zeros of both signs,
// subnormals and random draws; blocks holding an infinity or a NaN.
// The nested scales (cpu::quantize_nested_scales) against
// encode_nested_block; ulinear4's encoder without ceilf against the shared
// one on every 7th float of [-4, 4] and around every level and midpoint.
// Also: decode_block's byte-wise 4-bit loop and the select form of to_bf16
// against their element-wise definitions.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cpu/vector_codec.hpp>

#include "decode_compare.hpp"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

using namespace lowbit;

namespace {

// Inputs for one format: runs of blocks whose largest magnitude is `scale`,
// holding every code value and midpoint of the grid times the scale, and
// their float neighbours, then random normal draws.
std::vector<float> edge_values(format f, float scale, std::mt19937& g) {
  const code_table t = make_code_table(f);
  const int n = is_4bit(f) ? 16 : 256;
  std::vector<float> grid;
  for (int c = 0; c < n; ++c) grid.push_back(t.value[c]);
  std::vector<float> sorted = grid;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i + 1 < n; ++i) grid.push_back(float((double(sorted[i]) + double(sorted[i + 1])) / 2.0));
  std::vector<float> v;
  for (float q : grid) {
    const float x = q * scale;
    for (float y : {x, std::nextafter(x, -INFINITY), std::nextafter(x, INFINITY),
                    std::nextafter(std::nextafter(x, INFINITY), INFINITY)})
      v.push_back(std::fabs(y) <= scale ? y : x);
  }
  for (float y : {0.0f, -0.0f, 1e-40f, -1e-40f, 1e-45f}) v.push_back(y);
  std::normal_distribution<float> normal(0.0f, scale / 3.0f);
  for (int i = 0; i < 20000; ++i) {
    const float y = normal(g);
    v.push_back(std::fabs(y) <= scale ? y : scale);
  }
  if (is_unsigned_format(f))
    for (float& y : v) y = std::fabs(y);
  return v;
}

template <format F, class T>
void compare_format() {
  std::mt19937 g(1234 + int(F));
  const cpu::dynamic_search& search = cpu::dynamic_search_for(F);
  if (uses_dynamic_table(F)) REQUIRE(search.usable);
  const int sizes[] = {1, 2, 3, 63, 64, 255, 256, 257, 333, 4096, 5001};
  int blocks = 0, mismatched_codes = 0;
  for (float scale : {1.0f, 0.37f, 3.0e-3f, 123.456f}) {
    const std::vector<float> values = edge_values(F, scale, g);
    std::vector<T> x(values.size());
    for (size_t i = 0; i < values.size(); ++i) x[i] = from_float<T>(values[i]);
    size_t at = 0;
    for (int round = 0; at < x.size(); ++round) {
      const int64_t count = std::min<int64_t>(sizes[round % 11], int64_t(x.size() - at));
      // the block's largest magnitude is the scale the edge values were
      // made for, so they fall on and next to the block's grid
      std::vector<T> copy(x.begin() + std::ptrdiff_t(at), x.begin() + std::ptrdiff_t(at + size_t(count)));
      if (count > 1) copy[size_t(count / 2)] = from_float<T>((round & 1) && !is_unsigned_format(F) ? -scale : scale);
      const T* block = copy.data();
      at += size_t(count);
      ++blocks;
      const float reference_absmax = block_absmax(block, count);
      const float absmax = cpu::vector_block_absmax(block, count);
      REQUIRE(float_bits(absmax) == float_bits(reference_absmax));
      const size_t bytes = size_t(is_4bit(F) ? (count + 1) / 2 : count);
      std::vector<uint8_t> expected(bytes, 0xAB), got(bytes, 0xCD);
      encode_block<F>(block, count, absmax, dynamic_table(F), expected.data());
      cpu::vector_encode_block<F>(block, count, absmax, search, got.data());
      if (expected != got) ++mismatched_codes;
    }
  }
  CHECK(blocks > 80);
  CHECK(mismatched_codes == 0);
}

template <format F>
void compare_all_dtypes() {
  SUBCASE("float32") { compare_format<F, float>(); }
  SUBCASE("bfloat16") { compare_format<F, bf16>(); }
  SUBCASE("float16") { compare_format<F, fp16>(); }
}

}  // namespace

TEST_CASE("vector codec: nf4") { compare_all_dtypes<format::nf4>(); }
TEST_CASE("vector codec: fp4") { compare_all_dtypes<format::fp4>(); }
TEST_CASE("vector codec: int4") { compare_all_dtypes<format::int4>(); }
TEST_CASE("vector codec: int8") { compare_all_dtypes<format::int8>(); }
TEST_CASE("vector codec: dynamic8") { compare_all_dtypes<format::dynamic8>(); }
TEST_CASE("vector codec: udynamic8") { compare_all_dtypes<format::udynamic8>(); }
TEST_CASE("vector codec: dynamic4") { compare_all_dtypes<format::dynamic4>(); }
TEST_CASE("vector codec: ulinear4") { compare_all_dtypes<format::ulinear4>(); }

TEST_CASE("vector block absmax is NaN for a block holding an infinity or a NaN, wherever it is") {
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    for (int where : {0, 5, 299}) {
      std::vector<float> x(300, 0.5f);
      x[size_t(where)] = bad;
      CHECK(std::isnan(cpu::vector_block_absmax(x.data(), 300)));
      CHECK(std::isnan(block_absmax(x.data(), 300)));
    }
  }
  std::vector<float> zeros(17, -0.0f);
  CHECK(float_bits(cpu::vector_block_absmax(zeros.data(), 17)) == 0u);  // +0, as the fold gives
}

TEST_CASE("decode_block's byte-wise 4-bit loop equals decoding each nibble alone") {
  std::mt19937 g(7);
  const code_table t = make_code_table(format::nf4);
  for (int64_t count : {1, 2, 7, 64, 65}) {
    std::vector<uint8_t> codes(size_t((count + 1) / 2));
    for (auto& c : codes) c = uint8_t(g());
    std::vector<float> out(size_t(count), -7.0f);
    decode_block<format::nf4>(codes.data(), count, 0.3f, t.value, out.data());
    for (int64_t i = 0; i < count; ++i) {
      const int c = (i & 1) ? (codes[size_t(i / 2)] & 15) : (codes[size_t(i / 2)] >> 4);
      CHECK(float_bits(out[size_t(i)]) == float_bits(t.value[c] * 0.3f));
    }
  }
}

TEST_CASE("to_bf16 rounds to nearest even and keeps NaN quiet, for every class of input") {
  // the definition: round the float's bits at bit 16, ties to even; a NaN
  // keeps its top payload bits and gets the quiet bit
  std::mt19937 g(11);
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u,
                                0xFF800001u, 0x7F7FFFFFu, 0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x00008000u};
  for (int i = 0; i < 200000; ++i) bits.push_back(uint32_t(g()));
  for (uint32_t u : bits) {
    const double x = double(bits_float(u));
    const uint16_t got = to_bf16(bits_float(u)).bits;
    if (std::isnan(x)) {
      CHECK((got & 0x7F80u) == 0x7F80u);
      CHECK((got & 0x40u) != 0u);
      CHECK(got == uint16_t((u >> 16) | 0x40u));
      continue;
    }
    // the two bf16 neighbours of x and the nearer one (ties: even mantissa)
    const uint16_t down = uint16_t(u >> 16), up = uint16_t(down + 1);
    const double xd = double(bits_float(uint32_t(down) << 16));
    // past the largest finite bf16, the next step of the grid is 2^128
    const double xu = (up & 0x7FFFu) == 0x7F80u ? std::copysign(std::ldexp(1.0, 128), x)
                                                : double(bits_float(uint32_t(up) << 16));
    uint16_t want = down;
    if (u & 0xFFFFu) {
      const double dd = std::fabs(x - xd), du = std::fabs(xu - x);
      want = du < dd ? up : (dd < du ? down : ((down & 1) ? up : down));
    }
    CHECK(got == want);
  }
}

TEST_CASE("ulinear4 encoding by truncation equals the shared encoder") {
  int mismatches = 0;
  auto check = [&](float x) {
    if (cpu::ulinear4_encode_by_truncation(x) != ulinear4_encode(x) && mismatches++ < 5)
      FAIL_CHECK("x = " << x << ": " << int(cpu::ulinear4_encode_by_truncation(x)) << " vs "
                        << int(ulinear4_encode(x)));
  };
  for (uint32_t b = 0; b <= 0x40800000u; b += 7) {  // magnitudes 0 to 4, both signs
    check(bits_float(b));
    check(bits_float(b | 0x80000000u));
  }
  for (int k = -2; k <= 40; ++k) {  // levels (k + 1) / 16 and midpoints k / 32
    const float level = float(k) / 32.0f;
    float x = level;
    for (int i = 0; i < 4; ++i) x = std::nextafter(x, -INFINITY);
    for (int i = 0; i < 9; ++i, x = std::nextafter(x, INFINITY)) check(x);
  }
  for (float x : {1048576.0f, -1048576.0f, 65536.5f, -65536.5f}) check(x);  // the ends of its domain
  CHECK(mismatches == 0);
}

TEST_CASE("nested scales: cpu::quantize_nested_scales equals encode_nested_block") {
  std::mt19937 g(5);
  std::lognormal_distribution<float> scale(-3.0f, 1.0f);
  for (int64_t blocks : {1, 255, 256, 257, 1000}) {
    CAPTURE(blocks);
    const blockwise_layout l = make_layout(format::nf4, blocks * 64, 64, true);
    std::vector<float> absmax(static_cast<size_t>(blocks));
    for (auto& a : absmax) a = scale(g);
    absmax[0] = 0.0f;  // an all-zero block's scale
    std::vector<uint8_t> codes(static_cast<size_t>(blocks)), want_codes(static_cast<size_t>(blocks));
    std::vector<float> nested(size_t(l.n_nested_blocks())), want_nested(nested.size());
    float offset = -1.0f;
    quantized_view q{};
    q.layout = l;
    q.absmax_codes = codes.data();
    q.nested_absmax = nested.data();
    q.nested_offset = &offset;
    cpu::quantize_nested_scales(absmax.data(), q);
    const float want_offset = deterministic_mean(absmax.data(), blocks);
    CHECK(float_bits(offset) == float_bits(want_offset));
    for (int64_t c = 0; c < l.n_nested_blocks(); ++c) {
      const int64_t start = c * nested_block_size;
      encode_nested_block(absmax.data() + start, std::min<int64_t>(nested_block_size, blocks - start), want_offset,
                          signed_dynamic_map().data(), want_codes.data() + start, want_nested.data() + size_t(c));
    }
    CHECK(codes == want_codes);
    for (size_t c = 0; c < nested.size(); ++c) CHECK(float_bits(nested[c]) == float_bits(want_nested[c]));
  }
}

using decode_compare::compare_decode_all_dtypes;

TEST_CASE("vector_decode_block equals decode_block for every format and dtype") {
  compare_decode_all_dtypes<format::nf4>();
  compare_decode_all_dtypes<format::fp4>();
  compare_decode_all_dtypes<format::int4>();
  compare_decode_all_dtypes<format::int8>();
  compare_decode_all_dtypes<format::dynamic8>();
  compare_decode_all_dtypes<format::udynamic8>();
  compare_decode_all_dtypes<format::dynamic4>();
  compare_decode_all_dtypes<format::ulinear4>();
}
