// Round-trip tests of cpu::quantize / cpu::dequantize for every format, block
// size, scale kind and dtype, against float64 references:
//  * encode optimality: each code is the table entry nearest to x/absmax;
//  * reconstruction: |x - deq| <= max_normalized_error(format) * absmax
//    (+ float rounding, + one bf16/fp16 rounding of the output);
//  * quantize(dequantize(q)) == q; all-zero blocks decode to exact zeros;
//  * n = 0, n not a multiple of the block size, n > 2^31; NaN/inf rejected.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "format_reference.hpp"

using namespace lowbit;

namespace {

template <class T>
std::vector<T> convert(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = from_float<T>(x[i]);
  return out;
}

int code_at(const quantized_tensor& q, int64_t i) {
  if (!is_4bit(q.layout.fmt)) return q.codes[size_t(i)];
  const uint8_t b = q.codes[size_t(i / 2)];
  return (i & 1) ? (b & 15) : (b >> 4);
}

// Output dtype rounding: relative half-ulp of the output type.
template <class T>
double out_rel_eps() {
  if (std::is_same<T, bf16>::value) return 1.0 / 256;
  if (std::is_same<T, fp16>::value) return 1.0 / 2048;
  return 1.0 / (1 << 23);
}

// Output dtype absolute rounding near zero: half the smallest fp16 subnormal.
template <class T>
double out_abs_eps() {
  return std::is_same<T, fp16>::value ? std::ldexp(1.0, -25) : 1e-37;
}

// FP4 has two zero codes: a tiny negative input encodes as -0 (0b1000) and
// decodes to -0.0, which re-encodes as +0 (x < 0 is false for -0.0), exactly
// as in bitsandbytes. Both decode to zero; compare codes modulo that.
std::vector<uint8_t> canonical_zero_nibbles(std::vector<uint8_t> codes, format f) {
  if (f != format::fp4) return codes;
  for (auto& b : codes) {
    if ((b >> 4) == 8) b = uint8_t(b & 0x0F);
    if ((b & 15) == 8) b = uint8_t(b & 0xF0);
  }
  return codes;
}

template <class TIn, class TOut>
void check_roundtrip(format f, int bs, bool nested, const std::vector<float>& src) {
  nested = nested && has_zero_code(f);  // ulinear4 rejects nested scales (tested below)
  const int64_t n = int64_t(src.size());
  const std::vector<TIn> x = convert<TIn>(src);
  quantized_tensor q(make_layout(f, n, bs, nested));
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  std::vector<TOut> y(size_t(n), from_float<TOut>(12345.0f));  // poison
  cpu::dequantize(q.view(), make_flat_view(y.data(), n));

  const std::vector<double> tbl = ref::table(f);
  const double bound = ref::max_normalized_error(f);
  const quantized_view qv = q.view();
  for (int64_t b = 0; b < q.layout.n_blocks(); ++b) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    double absmax = 0;
    for (int64_t i = s; i < e; ++i) absmax = std::max(absmax, std::fabs(double(to_float(x[size_t(i)]))));
    if (!nested) REQUIRE(double(q.absmax[size_t(b)]) == absmax);
    const double scale = double(cpu::block_scale(qv, b));
    // nested scales carry the dynamic-map error of (absmax - offset)
    const double scale_err = std::fabs(scale - absmax);
    if (nested) CHECK(scale_err <= 0.0071 * double(q.nested_absmax[size_t(b / 256)]) + 1e-7 * absmax);
    for (int64_t i = s; i < e; ++i) {
      const double xi = double(to_float(x[size_t(i)]));
      const int c = code_at(q, i);
      if (absmax > 0) {
        // encode optimality in the normalized domain (float normalization)
        const double u = double(float(to_float(x[size_t(i)])) * (1.0f / float(absmax)));
        double best = 1e9;
        for (double v : tbl) best = std::min(best, std::fabs(v - u));
        CHECK(std::fabs(tbl[size_t(c)] - u) <= best + 1e-7);
      } else {
        CHECK(c == zero_code(f));
      }
      const double yi = double(to_float(y[size_t(i)]));
      // decoded value equals table * scale up to the output's rounding
      CHECK(std::fabs(yi - tbl[size_t(c)] * scale) <=
            out_rel_eps<TOut>() * std::fabs(tbl[size_t(c)] * scale) + out_abs_eps<TOut>());
      const double tol = bound * absmax + tbl[size_t(c)] * 0 + std::fabs(scale_err) +
                         out_rel_eps<TOut>() * std::fabs(yi) + out_abs_eps<TOut>() + 2e-7 * absmax;
      CHECK(std::fabs(yi - xi) <= tol);
    }
  }
}

}  // namespace

TEST_CASE("round trip on N(0,1): every format, block size, scale kind") {
  const int sizes[] = {1, 31, 64, 65, 1000, 4097};
  for (int f = 0; f < format_count; ++f)
    for (int bs : {32, 64, 256, 4096})
      for (bool nested : {false, true})
        for (int n : sizes) {
          CAPTURE(std::string(format_name(format(f))));
          CAPTURE(bs);
          CAPTURE(nested);
          CAPTURE(n);
          std::vector<float> x = ref::normal(size_t(n), unsigned(f * 1000 + bs + n));
          if (is_unsigned_format(format(f)))
            for (auto& v : x) v = std::fabs(v);
          check_roundtrip<float, float>(format(f), bs, nested, x);
        }
}

TEST_CASE("round trip on heavy-tailed data and 16-bit dtypes") {
  for (int f = 0; f < format_count; ++f) {
    CAPTURE(std::string(format_name(format(f))));
    std::vector<float> x = ref::heavy_tailed(20000, unsigned(f + 3));
    if (is_unsigned_format(format(f)))
      for (auto& v : x) v = std::fabs(v);
    check_roundtrip<float, float>(format(f), 64, true, x);
    check_roundtrip<bf16, bf16>(format(f), 64, false, x);
    check_roundtrip<fp16, float>(format(f), 128, true, x);
    check_roundtrip<float, fp16>(format(f), 256, false, x);
  }
}

TEST_CASE("quantize(dequantize(q)) == q") {
  for (int f = 0; f < format_count; ++f)
    for (bool nested : {false, true}) {
      if (nested && !has_zero_code(format(f))) continue;
      CAPTURE(std::string(format_name(format(f))));
      CAPTURE(nested);
      std::vector<float> x = ref::normal(5000, 11);
      if (is_unsigned_format(format(f)))
        for (auto& v : x) v = std::fabs(v);
      if (format(f) == format::dynamic8 || format(f) == format::dynamic4)
        for (size_t b = 0; b < x.size(); b += 64) {
          // the signed map has no -1.0: a block whose extreme is negative
          // decodes with |max| = 0.99296875 * absmax and rescales; the
          // property holds for blocks whose extreme is positive
          size_t m = b;
          for (size_t i = b; i < std::min(x.size(), b + 64); ++i)
            if (std::fabs(x[i]) > std::fabs(x[m])) m = i;
          x[m] = std::fabs(x[m]);
        }
      const int64_t n = int64_t(x.size());
      quantized_tensor q(make_layout(format(f), n, 64, nested));
      cpu::quantize(make_flat_view(x.data(), n), q.view());
      std::vector<float> y(x.size());
      cpu::dequantize(q.view(), make_flat_view(y.data(), n));
      quantized_tensor q2(q.layout);
      cpu::quantize(make_flat_view(y.data(), n), q2.view());
      CHECK(canonical_zero_nibbles(q2.codes, format(f)) == canonical_zero_nibbles(q.codes, format(f)));
      if (!nested) {
        CHECK(q2.absmax == q.absmax);
      } else {
        // decoded scales re-encode to the same 4/8-bit codes; the nested
        // statistics move by at most the map's resolution
        std::vector<float> y2(x.size());
        cpu::dequantize(q2.view(), make_flat_view(y2.data(), n));
        for (size_t i = 0; i < y.size(); ++i) CHECK(std::fabs(y2[i] - y[i]) <= 0.01f * std::fabs(y[i]) + 1e-6f);
      }
    }
}

TEST_CASE("all-zero blocks decode to exact zeros on every format") {
  for (int f = 0; f < format_count; ++f)
    for (bool nested : {false, true}) {
      if (nested && !has_zero_code(format(f))) continue;
      std::vector<float> x(300, 0.0f);
      for (int i = 128; i < 192; ++i) x[size_t(i)] = 0.5f * float(i % 7) - 1.0f;  // one non-zero block
      if (is_unsigned_format(format(f)))
        for (auto& v : x) v = std::fabs(v);
      quantized_tensor q(make_layout(format(f), 300, 64, nested));
      cpu::quantize(make_flat_view(x.data(), 300), q.view());
      std::vector<float> y(300, 7.0f);
      cpu::dequantize(q.view(), make_flat_view(y.data(), 300));
      for (int i = 0; i < 300; ++i)
        if (i < 128 || i >= 192) CHECK(y[size_t(i)] == 0.0f);
      std::vector<float> z(300, 0.0f);
      quantized_tensor qz(make_layout(format(f), 300, 64, nested));
      cpu::quantize(make_flat_view(z.data(), 300), qz.view());
      cpu::dequantize(qz.view(), make_flat_view(y.data(), 300));
      for (float v : y) CHECK(v == 0.0f);
    }
}

TEST_CASE("a block of subnormal values (its reciprocal absmax overflows) decodes to zeros, never to +-absmax") {
  // 1 / 1e-39 is +infinity in float32: with that multiplier the block's
  // zeros became NaN (code 0, decoding to -absmax on NF4) and every other
  // element +-absmax. Blocks of normal values keep their codes (the other
  // tests), and such a block holds nothing above float32's normal range.
  for (int f = 0; f < format_count; ++f) {
    const format fmt = format(f);
    std::vector<float> x(128, 0.0f);
    x[3] = 1e-39f;
    x[5] = is_unsigned_format(fmt) ? 5e-40f : -5e-40f;
    x[64] = 0.25f;  // the second block is normal
    x[70] = is_unsigned_format(fmt) ? 0.125f : -0.125f;
    quantized_tensor q(make_layout(fmt, 128, 64, false));
    cpu::quantize(make_flat_view(x.data(), 128), q.view());
    CHECK(q.absmax[0] == 1e-39f);
    std::vector<float> y(128, 7.0f);
    cpu::dequantize(q.view(), make_flat_view(y.data(), 128));
    for (int i = 0; i < 64; ++i) {
      CAPTURE(format_name(fmt));
      CAPTURE(i);
      CHECK(std::fabs(y[size_t(i)]) <= (has_zero_code(fmt) ? 0.0f : 1e-39f / 16.0f));
    }
    CHECK(y[64] == 0.25f);
  }
}

TEST_CASE("a format without a zero code rejects nested scales") {
  try {
    (void)make_layout(format::ulinear4, 100, 128, true);
    FAIL("expected an error");
  } catch (const error& e) {
    CHECK(e.code() == errc::unsupported);
  }
}

TEST_CASE("empty tensors and mismatched sizes") {
  quantized_tensor q(make_layout(format::nf4, 0, 64, true));
  std::vector<float> none;
  CHECK_NOTHROW(cpu::quantize(make_flat_view(none.data(), 0), q.view()));
  CHECK_NOTHROW(cpu::dequantize(q.view(), make_flat_view(none.data(), 0)));
  std::vector<float> x(100);
  quantized_tensor q2(make_layout(format::nf4, 99, 64));
  try {
    cpu::quantize(make_flat_view(x.data(), 100), q2.view());
    FAIL("expected an error");
  } catch (const error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("100") != std::string::npos);
  }
  std::vector<int8_t> ints(99);
  CHECK_THROWS_AS(cpu::quantize(make_flat_view(ints.data(), 99), q2.view()), error);
  tensor_view on_gpu = make_flat_view(x.data(), 99, device::cuda());
  CHECK_THROWS_AS(cpu::quantize(on_gpu, q2.view()), error);
}

TEST_CASE("non-finite input is reported, naming the block") {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> x = ref::normal(1000, 5);
    x[700] = bad;
    quantized_tensor q(make_layout(format::nf4, 1000, 64, true));
    try {
      cpu::quantize(make_flat_view(x.data(), 1000), q.view());
      FAIL("expected a non-finite error");
    } catch (const error& e) {
      CHECK(e.code() == errc::non_finite);
      CHECK(std::string(e.what()).find("block 10") != std::string::npos);
    }
  }
}

TEST_CASE("more than 2^31 elements (64-bit indexing)") {
  const int64_t n = (int64_t(1) << 31) + 130;
  // calloc'd input: untouched pages are shared zero pages, so this costs
  // little memory; only a few elements near both ends are set.
  std::unique_ptr<bf16, decltype(&std::free)> x(static_cast<bf16*>(std::calloc(size_t(n), sizeof(bf16))), &std::free);
  REQUIRE(x);
  x.get()[5] = to_bf16(1.0f);
  x.get()[n - 1] = to_bf16(3.0f);
  x.get()[n - 2] = to_bf16(-1.5f);
  x.get()[n - 3] = to_bf16(0.25f);
  quantized_tensor q(make_layout(format::nf4, n, 64, false));
  cpu::quantize(make_flat_view(x.get(), n), q.view());
  const int64_t last = q.layout.n_blocks() - 1;
  CHECK(q.absmax[size_t(last)] == 3.0f);
  CHECK(q.codes[size_t((n - 1) / 2)] == ((nf4_encode(-0.5f) << 4) | 15));
  CHECK(q.absmax[size_t(last - 1)] == 0.25f);
  CHECK(q.absmax[0] == 1.0f);
  CHECK(q.absmax[1] == 0.0f);
  std::unique_ptr<bf16, decltype(&std::free)> y(static_cast<bf16*>(std::malloc(size_t(n) * sizeof(bf16))), &std::free);
  REQUIRE(y);
  cpu::dequantize(q.view(), make_flat_view(y.get(), n));
  CHECK(to_float(y.get()[n - 1]) == 3.0f);
  CHECK(to_float(y.get()[n - 3]) == 0.25f);
  CHECK(to_float(y.get()[n - 4]) == 0.0f);
  CHECK(to_float(y.get()[5]) == 1.0f);
}

// formats/block_codec.hpp: absmax_accumulator gives the fold of absmax_step
// bit for bit, on runs of finite values and on runs holding NaN, +-infinity
// or -0 at every position.
TEST_CASE("absmax_accumulator equals the absmax_step fold") {
  std::mt19937 g(5);
  std::normal_distribution<float> d(0.0f, 3.0f);
  const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 3.4e38f};
  for (int len : {1, 2, 7, 8, 33}) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> v(static_cast<size_t>(len));
      for (float& x : v) x = d(g);
      if (trial % 2) v[size_t(g() % unsigned(len))] = specials[g() % 7];
      float fold = 0.0f;
      absmax_accumulator acc;
      for (float x : v) fold = absmax_step(fold, x), acc.add(x);
      uint32_t a, b;
      const float got = acc.value();
      std::memcpy(&a, &fold, 4);
      std::memcpy(&b, &got, 4);
      CHECK(a == b);
    }
  }
}
