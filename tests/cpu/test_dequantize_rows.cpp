// cpu::dequantize_rows (row gather from a quantized matrix) against
// cpu::dequantize of the whole tensor, for every format, float32 and nested
// scales, odd cols and block sizes that do not divide cols (rows starting
// mid-block and mid-byte), random indices with repeats:
//  * float32 output bit-equal to the slice of dequantize; every value within
//    1 ulp of the float64 product of its codebook entry and block scale, and
//    within the derived rounding bound of the codebook's defining value
//    times the unrounded scale;
//  * bfloat16 / float16 output bit-equal to from_float of the float32 value
//    (and to dequantize into that dtype);
//  * outputs are poisoned (NaN) before each call;
//  * more than 2^31 elements (64-bit offsets, mid-byte rows past 2^31);
//  * bad indices, shapes, dtypes and memory spaces throw lowbit::error with
//    the expected errc and a message naming the argument, writing nothing.
#include <doctest/doctest.h>

#include <lowbit/cpu/dequantize_rows.hpp>
#include <lowbit/cpu/quantize.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "row_gather_inputs.hpp"

using namespace lowbit;

namespace {

using row_gather_inputs::random_indices;
using row_gather_inputs::random_matrix;

template <class T>
T poison() {
  return from_float<T>(std::numeric_limits<float>::quiet_NaN());
}

template <class T>
bool same_bits(const T* a, const T* b, int64_t n) {
  return n == 0 || std::memcmp(a, b, size_t(n) * sizeof(T)) == 0;
}

// Two float64 references for element e of q (code c, block b):
//  * stored: the codebook entry as lowbit stores it (make_code_table, float32)
//    times the block scale as lowbit defines it (float32 absmax, or
//    map[code] * nested_absmax + offset with each operation rounded to
//    float32), multiplied in float64 (exact): the output must be this product
//    correctly rounded, so within 0.5 ulp;
//  * exact: the codebook's defining value (rationals such as q/127 and 8/12
//    computed in float64; the NF4 table and the dynamic maps are float32 by
//    definition) times the block scale in float64 without intermediate
//    rounding. `bound` is the derived error bound of the float32 chain:
//    2^-24 (|out| + |v| s) for float32 scales (two roundings: the table
//    entry and the product), 2^-24 |v| (3 s + |map * nested_absmax|) for
//    nested scales (two more: the scale's multiply and add).
struct reference {
  double stored, exact, bound;
};

double defining_value(format f, int c) {
  switch (f) {
    case format::fp4: {
      static const double mag[8] = {0.0, 0.0625 / 12, 8.0 / 12, 1.0, 4.0 / 12, 0.5, 2.0 / 12, 0.25};
      return (c & 8) ? -mag[c & 7] : mag[c & 7];
    }
    case format::int4: return double((c & 8) ? (c & 15) - 16 : (c & 15)) / 7.0;
    case format::int8: return double(int8_t(uint8_t(c))) / 127.0;
    case format::ulinear4: return double((c & 15) + 1) / 16.0;
    default: return double(make_code_table(f).value[c]);
  }
}

reference reference_value(const quantized_tensor& q, const code_table& table, int64_t e) {
  const blockwise_layout& l = q.layout;
  const int c = is_4bit(l.fmt) ? ((e & 1) ? (q.codes[size_t(e / 2)] & 15) : (q.codes[size_t(e / 2)] >> 4))
                               : q.codes[size_t(e)];
  const int64_t b = e / l.block_size;
  double s_stored = 0.0, s_exact = 0.0, ma = 0.0;
  if (l.nested) {
    ma = double(signed_dynamic_map()[q.absmax_codes[size_t(b)]]) *
         double(q.nested_absmax[size_t(b / nested_block_size)]);
    s_exact = ma + double(q.nested_offset);
    s_stored = double(float(double(float(ma)) + double(q.nested_offset)));
  } else {
    s_exact = s_stored = double(q.absmax[size_t(b)]);
  }
  const double v = defining_value(l.fmt, c);
  const double ulp24 = std::ldexp(1.0, -24) * 1.001;
  const double bound = l.nested ? ulp24 * std::fabs(v) * (3 * s_exact + std::fabs(ma))
                                : ulp24 * 2 * std::fabs(v) * s_exact;
  return {double(table.value[c]) * s_stored, v * s_exact, bound};
}

// |got - ref| in units of the float32 ulp at ref.
double ulps(float got, double ref) {
  const float r = float(ref);
  if (r == 0.0f) return got == 0.0f ? 0.0 : std::numeric_limits<double>::infinity();
  const double ulp = double(std::nextafter(std::fabs(r), std::numeric_limits<float>::infinity())) - std::fabs(r);
  return std::fabs(double(got) - ref) / ulp;
}

template <class T>
void check_dtype(const quantized_tensor& q, const std::vector<float>& all, int64_t cols,
                 const std::vector<int32_t>& idx) {
  const int64_t count = int64_t(idx.size()), rows = q.layout.n / cols;
  std::vector<T> out(static_cast<size_t>(count * cols), poison<T>());
  cpu::dequantize_rows(const_cast<quantized_tensor&>(q).view(), rows, cols, idx.data(), count,
                       make_view(out.data(), {count, cols}));
  std::vector<T> all_t(all.size(), poison<T>());  // dequantize straight into T
  cpu::dequantize(const_cast<quantized_tensor&>(q).view(), make_flat_view(all_t.data(), q.layout.n));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t first = int64_t(idx[size_t(i)]) * cols;
    std::vector<T> expect(static_cast<size_t>(cols));
    for (int64_t j = 0; j < cols; ++j) expect[size_t(j)] = from_float<T>(all[size_t(first + j)]);
    CAPTURE(i);
    REQUIRE(same_bits(out.data() + i * cols, expect.data(), cols));
    REQUIRE(same_bits(out.data() + i * cols, all_t.data() + first, cols));
  }
}

void check_case(format f, bool nested, int64_t rows, int64_t cols, int bs, unsigned seed) {
  CAPTURE(std::string(format_name(f)));
  CAPTURE(nested);
  CAPTURE(rows);
  CAPTURE(cols);
  CAPTURE(bs);
  const int64_t n = rows * cols;
  const std::vector<float> x = random_matrix(n, seed, is_unsigned_format(f));
  quantized_tensor q(make_layout(f, n, bs, nested), {rows, cols});
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  std::vector<float> all(static_cast<size_t>(n));
  cpu::dequantize(q.view(), make_flat_view(all.data(), n));  // the reference

  const std::vector<int32_t> idx = random_indices(rows, 2 * rows + 5, seed + 1);
  const int64_t count = int64_t(idx.size());
  std::vector<float> out(static_cast<size_t>(count * cols), std::numeric_limits<float>::quiet_NaN());
  cpu::dequantize_rows(q.view(), rows, cols, idx.data(), count, make_view(out.data(), {count, cols}));
  const code_table table = make_code_table(f);
  double worst_ulps = 0.0, worst_ratio = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t first = int64_t(idx[size_t(i)]) * cols;
    CAPTURE(i);
    REQUIRE(same_bits(out.data() + i * cols, all.data() + first, cols));
    for (int64_t j = 0; j < cols; ++j) {
      const float got = out[size_t(i * cols + j)];
      const reference r = reference_value(q, table, first + j);
      worst_ulps = std::max(worst_ulps, ulps(got, r.stored));
      const double err = std::fabs(double(got) - r.exact);
      worst_ratio = std::max(worst_ratio, err == 0.0 ? 0.0 : (r.bound > 0.0 ? err / r.bound : HUGE_VAL));
    }
  }
  CHECK(worst_ulps <= 0.5);   // against the stored entry and scale: correctly rounded
  CHECK(worst_ratio <= 1.0);  // against the defining values, within the derived bound
  check_dtype<bf16>(q, all, cols, idx);
  check_dtype<fp16>(q, all, cols, idx);
}

template <class Fn>
void check_error(Fn&& fn, errc code, const std::string& needle) {
  try {
    fn();
    FAIL("expected lowbit::error containing: " << needle);
  } catch (const error& e) {
    CHECK(e.code() == code);
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
}

}  // namespace

TEST_CASE("dequantize_rows equals the same rows of dequantize, for every format and scale kind") {
  struct shape {
    int64_t rows, cols;
    int bs;
  };
  // cols odd (rows start mid-byte for 4-bit formats) or not a multiple of
  // the block; rows shorter and longer than a block; one element per row
  const shape shapes[] = {{53, 77, 64}, {17, 1000, 256}, {41, 33, 32}, {9, 4099, 4096}, {70, 1, 32}};
  unsigned seed = 1;
  for (int fi = 0; fi < format_count; ++fi)
    for (bool nested : {false, true}) {
      const format f = format(fi);
      if (nested && !has_zero_code(f)) continue;  // ulinear4 has no nested form
      for (const shape& s : shapes) check_case(f, nested, s.rows, s.cols, s.bs, seed++);
    }
}

TEST_CASE("dequantize_rows with more than 2^31 elements (64-bit offsets, mid-byte rows)") {
  // calloc'd buffers: untouched pages cost no memory; only the gathered rows'
  // codes and scales are filled in.
  const int64_t cols = 4097, rows = 524300, n = rows * cols;  // odd cols: odd rows start mid-byte
  REQUIRE(n > (int64_t(1) << 31));
  for (bool nested : {false, true}) {
    CAPTURE(nested);
    const blockwise_layout l = make_layout(format::nf4, n, 64, nested);
    std::unique_ptr<uint8_t, decltype(&std::free)> codes(static_cast<uint8_t*>(std::calloc(size_t(l.code_bytes()), 1)),
                                                         &std::free);
    std::unique_ptr<float, decltype(&std::free)> absmax(
        static_cast<float*>(std::calloc(size_t(l.n_blocks()), sizeof(float))), &std::free);
    std::unique_ptr<uint8_t, decltype(&std::free)> acodes(static_cast<uint8_t*>(std::calloc(size_t(l.n_blocks()), 1)),
                                                          &std::free);
    std::vector<float> nabs(static_cast<size_t>(l.n_nested_blocks()), 0.0f);
    float offset = 0.5f;
    REQUIRE(codes);
    REQUIRE(absmax);
    REQUIRE(acodes);
    quantized_view q;
    q.layout = l;
    q.codes = codes.get();
    q.absmax = nested ? nullptr : absmax.get();
    q.absmax_codes = nested ? acodes.get() : nullptr;
    q.nested_absmax = nested ? nabs.data() : nullptr;
    q.nested_offset = nested ? &offset : nullptr;
    const std::vector<int32_t> idx = {int32_t(rows - 1), 0, int32_t(rows - 2), int32_t(rows - 1), 1};
    std::mt19937 g(7);
    for (int32_t r : idx) {
      const int64_t e0 = int64_t(r) * cols, e1 = e0 + cols;
      for (int64_t byte = e0 / 2; byte <= (e1 - 1) / 2; ++byte) codes.get()[byte] = uint8_t(g());
      for (int64_t b = e0 / 64; b <= (e1 - 1) / 64; ++b) {
        absmax.get()[b] = 0.25f + float(g() % 1000) / 100.0f;
        acodes.get()[b] = uint8_t(g());
        if (nested) nabs[size_t(b / nested_block_size)] = 3.0f;
      }
    }
    const int64_t count = int64_t(idx.size());
    std::vector<float> out(static_cast<size_t>(count * cols), std::numeric_limits<float>::quiet_NaN());
    std::vector<bf16> out16(static_cast<size_t>(count * cols), poison<bf16>());
    cpu::dequantize_rows(q, rows, cols, idx.data(), count, make_view(out.data(), {count, cols}));
    cpu::dequantize_rows(q, rows, cols, idx.data(), count, make_view(out16.data(), {count, cols}));
    std::vector<float> expect(static_cast<size_t>(cols));
    for (int64_t i = 0; i < count; ++i) {
      CAPTURE(i);
      cpu::dequantize_range(q, int64_t(idx[size_t(i)]) * cols, cols, expect.data());
      REQUIRE(same_bits(out.data() + i * cols, expect.data(), cols));
      for (int64_t j = 0; j < cols; ++j) REQUIRE(out16[size_t(i * cols + j)].bits == to_bf16(expect[size_t(j)]).bits);
    }
    // the last row's last element is the tensor's last element (low nibble of the last byte)
    const float s = nested ? add_rn(mul_rn(signed_dynamic_map()[acodes.get()[l.n_blocks() - 1]], 3.0f), 0.5f)
                           : absmax.get()[l.n_blocks() - 1];
    CHECK(out[size_t(cols - 1)] == mul_rn(nf4_value(codes.get()[l.code_bytes() - 1] & 15), s));
  }
}

TEST_CASE("dequantize_rows rejects bad indices, shapes, dtypes and memory spaces") {
  const int64_t rows = 53, cols = 77, n = rows * cols;
  const std::vector<float> x = random_matrix(n, 99, false);
  quantized_tensor q(make_layout(format::nf4, n, 64, true));
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  std::vector<int32_t> idx = {5, 0, 52, 7};
  const int64_t count = int64_t(idx.size());
  std::vector<float> out(static_cast<size_t>(count * cols), std::numeric_limits<float>::quiet_NaN());
  const tensor_view ov = make_view(out.data(), {count, cols});
  // a gather of idx into `into` (the view under test)
  const auto gather = [&](const tensor_view& into) {
    cpu::dequantize_rows(q.view(), rows, cols, idx.data(), count, into);
  };
  const auto untouched = [&] {
    for (float v : out)
      if (!std::isnan(v)) return false;
    return true;
  };

  SUBCASE("an index out of range names its position and value, and nothing is written") {
    for (int32_t bad : {-1, 53, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()}) {
      idx[2] = bad;
      check_error([&] { cpu::dequantize_rows(q.view(), rows, cols, idx.data(), count, ov); }, errc::invalid_argument,
                  "cpu::dequantize_rows: rows_idx[2] = " + std::to_string(bad) + " is out of range [0, 53)");
      CHECK(untouched());
    }
  }
  SUBCASE("wrong shapes") {
    std::vector<float> big(size_t((count + 1) * (cols + 1)));
    check_error([&] { gather(make_view(big.data(), {count, cols + 1})); }, errc::invalid_argument,
                "cpu::dequantize_rows: out has shape [4, 78], expected [4, 77]");
    check_error([&] { gather(make_view(big.data(), {count + 1, cols})); }, errc::invalid_argument,
                "out has shape [5, 77], expected [4, 77]");
    check_error([&] { gather(make_view(out.data(), {count * cols})); }, errc::invalid_argument,
                "out must be 2-D, got shape [308]");
    check_error([&] { cpu::dequantize_rows(q.view(), rows + 1, cols, idx.data(), count, ov); }, errc::invalid_argument,
                "w holds 4081 elements, expected rows * cols = 54 * 77");
    check_error([&] { cpu::dequantize_rows(q.view(), -rows, -cols, idx.data(), count, ov); }, errc::invalid_argument,
                "rows and cols must be >= 0, got rows = -53, cols = -77");
    check_error([&] { cpu::dequantize_rows(q.view(), rows, cols, nullptr, count, ov); }, errc::invalid_argument,
                "rows_idx is null but count is 4");
    tensor_view strided = ov;
    strided.strides[0] = cols + 1;
    check_error([&] { gather(strided); }, errc::invalid_argument, "out must be contiguous");
    CHECK(untouched());
  }
  SUBCASE("wrong dtypes") {
    std::vector<double> od(static_cast<size_t>(count * cols));
    std::vector<int32_t> oi(static_cast<size_t>(count * cols));
    check_error([&] { gather(make_view(od.data(), {count, cols})); }, errc::invalid_argument,
                "cpu::dequantize_rows: out must be float32, bfloat16 or float16, got float64");
    check_error([&] { gather(make_view(oi.data(), {count, cols})); }, errc::invalid_argument,
                "out must be float32, bfloat16 or float16, got int32");
  }
  SUBCASE("device memory is refused by the CPU path") {
    check_error([&] { gather(make_view(out.data(), {count, cols}, device::cuda())); }, errc::invalid_argument,
                "cpu::dequantize_rows: out is on device memory; the CPU path needs host memory");
    quantized_view w = q.view();
    w.dev = device::cuda();
    check_error([&] { cpu::dequantize_rows(w, rows, cols, idx.data(), count, ov); }, errc::invalid_argument,
                "cpu::dequantize_rows: w is on device memory; the CPU path needs host memory");
    // managed memory is host-accessible
    gather(make_view(out.data(), {count, cols}, device::managed()));
    CHECK(!untouched());
  }
  SUBCASE("an invalid quantized view") {
    quantized_view w = q.view();
    w.codes = nullptr;
    check_error([&] { cpu::dequantize_rows(w, rows, cols, idx.data(), count, ov); }, errc::invalid_argument,
                "cpu::dequantize_rows: w: codes pointer is null");
  }
  SUBCASE("empty gathers write nothing and accept a null index pointer") {
    cpu::dequantize_rows(q.view(), rows, cols, nullptr, 0, make_view(out.data(), {0, cols}));
    CHECK(untouched());
    quantized_tensor empty(make_layout(format::int8, 0, 64, false));
    cpu::dequantize_rows(empty.view(), 60, 0, idx.data(), 2, make_view(out.data(), {2, 0}));
    check_error([&] { cpu::dequantize_rows(empty.view(), 0, 7, idx.data(), 1, make_view(out.data(), {1, 7})); },
                errc::invalid_argument, "rows_idx[0] = 5 is out of range [0, 0)");
    CHECK(untouched());
  }
}
