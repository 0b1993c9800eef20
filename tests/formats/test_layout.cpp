// Tests for formats/layout.hpp: exact byte accounting and block size checks.
#include <doctest/doctest.h>

#include <lowbit/formats/layout.hpp>

using namespace lowbit;

TEST_CASE("byte accounting per format and scale kind") {
  const blockwise_layout a = make_layout(format::nf4, 1000, 64, false);
  CHECK(a.n_blocks() == 16);
  CHECK(a.code_bytes() == 500);
  CHECK(a.scale_bytes() == 64);
  CHECK(a.nested_bytes() == 0);
  CHECK(a.total_bytes() == 564);
  const blockwise_layout b = make_layout(format::nf4, 1001, 64, true);
  CHECK(b.code_bytes() == 501);
  CHECK(b.scale_bytes() == 16);
  CHECK(b.n_nested_blocks() == 1);
  CHECK(b.nested_bytes() == 4);
  const blockwise_layout c = make_layout(format::int8, 5000, 256, false);
  CHECK(c.code_bytes() == 5000);
  CHECK(c.n_blocks() == 20);
  CHECK(make_layout(format::fp4, 0, 64, true).total_bytes() == 0);
}

TEST_CASE("NF4 block 64 nested costs 4.127 bits per parameter") {
  const int64_t n = int64_t(64) * 256 * 1000;
  CHECK(make_layout(format::nf4, n, 64, true).bits_per_param() == doctest::Approx(4.0 + 8.0 / 64 + 32.0 / (64 * 256)));
  CHECK(make_layout(format::nf4, n, 64, true).bits_per_param() == doctest::Approx(4.127).epsilon(1e-3));
  CHECK(make_layout(format::nf4, n, 64, false).bits_per_param() == doctest::Approx(4.5));
  CHECK(make_layout(format::int8, n, 256, false).bits_per_param() == doctest::Approx(8.125));
}

TEST_CASE("64-bit sizes") {
  const int64_t n = (int64_t(1) << 33) + 3;
  const blockwise_layout l = make_layout(format::nf4, n, 64, true);
  CHECK(l.code_bytes() == (n + 1) / 2);
  CHECK(l.n_blocks() == (n + 63) / 64);
}

TEST_CASE("block sizes must be powers of two in [32, 4096]") {
  for (int bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) CHECK_NOTHROW(make_layout(format::nf4, 10, bs));
  for (int bs : {0, 16, 48, 100, 8192, -64}) CHECK_THROWS_AS(make_layout(format::nf4, 10, bs), error);
  CHECK_THROWS_AS(make_layout(format::nf4, -1, 64), error);
  CHECK(parse_format("fp4") == format::fp4);
  CHECK_THROWS_AS(parse_format("nf3"), error);
}
