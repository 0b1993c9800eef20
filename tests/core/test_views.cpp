// Tests for core/view.hpp and core/error.hpp: shapes, strides, contiguity and
// the typed errors raised for misuse.
#include <doctest/doctest.h>

#include <lowbit/core/view.hpp>

#include <vector>

using namespace lowbit;

TEST_CASE("make_view computes row-major strides and sizes") {
  std::vector<float> buf(24);
  tensor_view v = make_view(buf.data(), {2, 3, 4});
  CHECK(v.ndim == 3);
  CHECK(v.numel() == 24);
  CHECK(v.nbytes() == 96);
  CHECK(v.strides[0] == 12);
  CHECK(v.strides[1] == 4);
  CHECK(v.strides[2] == 1);
  CHECK(v.is_contiguous());
  CHECK(v.shape_string() == "[2, 3, 4]");
  v.strides[2] = 2;
  CHECK_FALSE(v.is_contiguous());
}

TEST_CASE("typed access checks the dtype and names the argument") {
  std::vector<bf16> buf(4);
  tensor_view v = make_flat_view(buf.data(), 4);
  CHECK(v.type == dtype::bf16);
  CHECK(v.as<bf16>("x") == buf.data());
  try {
    (void)v.as<float>("weights");
    FAIL("expected lowbit::error");
  } catch (const error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("weights") != std::string::npos);
  }
}

TEST_CASE("negative extents and excessive rank are rejected") {
  float x = 0;
  CHECK_THROWS_AS(make_view(&x, {-1}), error);
  CHECK_THROWS_AS(make_view(&x, {1, 1, 1, 1, 1, 1, 1, 1, 1}), error);
}
