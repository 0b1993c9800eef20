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

TEST_CASE("shapes whose non-zero extents multiply past int64 are refused, even when empty") {
  const int64_t big = int64_t(1) << 62;
  const int64_t empty_huge[3] = {0, 4, big};
  const int64_t fits[3] = {0, 4, int64_t(1) << 40};
  const int64_t negative[2] = {0, -1};
  CHECK(nonzero_extent_product(empty_huge, 3) == -1);  // 4 * 2^62 = 2^64
  CHECK(nonzero_extent_product(fits, 3) == int64_t(1) << 42);
  CHECK(nonzero_extent_product(negative, 2) == -1);
  CHECK(nonzero_extent_product(nullptr, 0) == 1);
  // make_view would need a first stride of 2^64 for [0, 4, 2^62]
  float x = 0;
  try {
    (void)make_view(&x, {0, 4, big});
    FAIL("expected lowbit::error");
  } catch (const error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string(e.what()).find("[0, 4, 4611686018427387904]") != std::string::npos);
  }
  const tensor_view ok = make_view(&x, {0, 4, int64_t(1) << 40});
  CHECK(ok.strides[0] == int64_t(1) << 42);
  CHECK(ok.numel() == 0);
  CHECK(ok.is_contiguous());
}

TEST_CASE("is_contiguous does not let a product past int64 wrap into a match") {
  // Hand-built (make_view refuses it): shape [3, 4, 2^62] whose first stride
  // is 0. The row-major stride would be 2^64, which wraps to 0 in 64 bits.
  tensor_view v;
  v.ndim = 3;
  v.shape[0] = 3;
  v.shape[1] = 4;
  v.shape[2] = int64_t(1) << 62;
  v.strides[0] = 0;
  v.strides[1] = int64_t(1) << 62;
  v.strides[2] = 1;
  CHECK_FALSE(v.is_contiguous());
  v.shape[0] = 1;  // an extent of 1 takes any stride: the last two dims alone are row-major
  CHECK(v.is_contiguous());
  v.shape[0] = 0;  // empty: no element is addressed, whatever the strides (make_view and DLPack refuse the shape)
  CHECK(v.is_contiguous());
}

TEST_CASE("an empty view is contiguous whatever its strides (torch and numpy export zero-length axes with stride 0)") {
  float x = 0;
  tensor_view v = make_view(&x, {0, 64});
  v.strides[0] = 0;  // numpy's np.zeros((0, 64)) and torch's empty(64, 0).t() alike
  CHECK(v.is_contiguous());
  v = make_view(&x, {64, 0});
  v.strides[0] = 1;
  v.strides[1] = 64;
  CHECK(v.is_contiguous());
  v = make_view(&x, {2, 3});
  v.strides[0] = 0;  // the same strides with elements: not contiguous
  CHECK_FALSE(v.is_contiguous());
}
