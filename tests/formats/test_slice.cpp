// lowbit::slice (formats/quantized_view.hpp): a range of a quantized tensor
// as a view of its own decodes to exactly that range of the whole tensor's
// decode, for float32 and nested scales and 4- and 8-bit codes; ranges that
// do not start a scale block (or, nested, a group of 256 blocks) or leave
// the tensor are refused with errors naming the problem.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>

#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace lowbit;

namespace {

struct sliced_case {
  format fmt;
  int block_size;
  bool nested;
};

}  // namespace

TEST_CASE("slice decodes to the same range of the whole tensor, bit for bit") {
  const sliced_case cases[] = {{format::int8, 256, false}, {format::nf4, 64, false}, {format::nf4, 64, true},
                               {format::int4, 32, true}, {format::dynamic8, 128, false}};
  for (const sliced_case& c : cases) {
    const std::string fmt = format_name(c.fmt);
    CAPTURE(fmt);
    CAPTURE(c.nested);
    const int64_t unit = int64_t(c.block_size) * (c.nested ? nested_block_size : 1);
    const int64_t n = 3 * unit + 77;  // the last slice ends mid-block
    std::vector<float> x(static_cast<size_t>(n));
    std::mt19937 rng(5);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (float& v : x) v = d(rng);
    quantized_tensor q(make_layout(c.fmt, n, c.block_size, c.nested));
    cpu::quantize(make_flat_view(x.data(), n), q.view());
    std::vector<float> whole(static_cast<size_t>(n));
    cpu::dequantize(q.view(), make_flat_view(whole.data(), n));
    const int64_t ranges[][2] = {{0, n}, {unit, n - unit}, {2 * unit, unit}, {unit, 5}, {3 * unit, 77}, {n, 0}};
    for (const auto& r : ranges) {
      CAPTURE(r[0]);
      CAPTURE(r[1]);
      const quantized_view s = slice(q.view(), r[0], r[1]);
      CHECK(s.layout.n == r[1]);
      std::vector<float> part(static_cast<size_t>(r[1]) + 1, -1.0f);
      cpu::dequantize(s, make_flat_view(part.data(), r[1]));
      CHECK(std::memcmp(part.data(), whole.data() + r[0], size_t(r[1]) * sizeof(float)) == 0);
      CHECK(part[size_t(r[1])] == -1.0f);  // nothing written past the slice
    }
  }
}

TEST_CASE("slice refuses ranges that do not start a block or leave the tensor") {
  quantized_tensor plain(make_layout(format::int8, 1000, 256, false));
  CHECK_THROWS_WITH_AS(slice(plain.view(), 128, 10), doctest::Contains("does not start a scale block of 256"), error);
  CHECK_THROWS_WITH_AS(slice(plain.view(), 768, 300), doctest::Contains("outside the tensor's 1000"), error);
  CHECK_THROWS_WITH_AS(slice(plain.view(), -256, 10), doctest::Contains("outside"), error);
  quantized_tensor nested(make_layout(format::nf4, 40000, 64, true));
  CHECK_THROWS_WITH_AS(slice(nested.view(), 64, 10), doctest::Contains("a group of 256 scale blocks of 64"), error);
  CHECK_NOTHROW(slice(nested.view(), 16384, 10));
}
