// Tests of the CUDA dequant-GEMM's automatic dispatch rule
// (lowbit/cuda/gemm/dispatch.hpp): plain C++, so it runs on every machine,
// GPU or not. Each check sits on one side of a documented threshold, so a
// changed threshold or a reordered rule fails here.
#include <doctest/doctest.h>

#include <lowbit/cuda/gemm/dispatch.hpp>

#include <cstdint>

namespace {

using lowbit::dtype;
using lowbit::cuda::gemm_direction;
using lowbit::cuda::gemm_policy;
using lowbit::cuda::gemm_regime;
using lowbit::cuda::select_gemm_regime;

constexpr gemm_direction fwd = gemm_direction::forward;
constexpr gemm_direction bwd = gemm_direction::backward_input;

// LLaMA-7B shapes: 4096x4096 is 16 Mi weights ("small"), 4096x11008 45 Mi.
constexpr int64_t small_n = 4096, small_k = 4096;
constexpr int64_t large_n = 4096, large_k = 11008;

}  // namespace

TEST_CASE("dispatch: gemv for a few rows, fewer backward with 16-bit activations") {
  for (dtype t : {dtype::bf16, dtype::f16}) {
    CHECK(select_gemm_regime(fwd, 1, large_n, large_k, t) == gemm_regime::gemv);
    CHECK(select_gemm_regime(fwd, 4, large_n, large_k, t) == gemm_regime::gemv);
    CHECK(select_gemm_regime(fwd, 5, large_n, large_k, t) == gemm_regime::mma);
    CHECK(select_gemm_regime(bwd, 2, large_n, large_k, t) == gemm_regime::gemv);
    CHECK(select_gemm_regime(bwd, 3, large_n, large_k, t) == gemm_regime::mma);
  }
  // float32 has no mma path: its gemv range is the forward's in both directions
  CHECK(select_gemm_regime(bwd, 4, large_n, large_k, dtype::f32) == gemm_regime::gemv);
  CHECK(select_gemm_regime(bwd, 5, large_n, large_k, dtype::f32) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(fwd, 16, large_n, large_k, dtype::f32) == gemm_regime::dequant_cublas);
}

TEST_CASE("dispatch: the fallback from M = 256 whatever the weight size") {
  for (gemm_direction d : {fwd, bwd}) {
    CHECK(select_gemm_regime(d, 255, large_n, large_k, dtype::bf16) == gemm_regime::mma);
    CHECK(select_gemm_regime(d, 256, large_n, large_k, dtype::bf16) == gemm_regime::dequant_cublas);
    CHECK(select_gemm_regime(d, 4096, 32000, 4096, dtype::f16) == gemm_regime::dequant_cublas);
    CHECK(select_gemm_regime(d, 256, small_n, small_k, dtype::bf16) == gemm_regime::dequant_cublas);
  }
}

TEST_CASE("dispatch: a small weight goes to the fallback from M = 16 forward, 64 backward") {
  CHECK(select_gemm_regime(fwd, 15, small_n, small_k, dtype::bf16) == gemm_regime::mma);
  CHECK(select_gemm_regime(fwd, 16, small_n, small_k, dtype::bf16) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(fwd, 64, small_n, small_k, dtype::f16) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(bwd, 16, small_n, small_k, dtype::bf16) == gemm_regime::mma);
  CHECK(select_gemm_regime(bwd, 63, small_n, small_k, dtype::bf16) == gemm_regime::mma);
  CHECK(select_gemm_regime(bwd, 64, small_n, small_k, dtype::bf16) == gemm_regime::dequant_cublas);
  // the larger 7B shapes keep mma below M = 256
  for (gemm_direction d : {fwd, bwd}) {
    CHECK(select_gemm_regime(d, 64, large_n, large_k, dtype::bf16) == gemm_regime::mma);
    CHECK(select_gemm_regime(d, 64, large_k, large_n, dtype::bf16) == gemm_regime::mma);
    CHECK(select_gemm_regime(d, 64, 32000, 4096, dtype::bf16) == gemm_regime::mma);
  }
}

TEST_CASE("dispatch: the size limit is on n k, inclusive, and safe from overflow") {
  const gemm_policy p{};
  const int64_t limit = p.small_weight_max_elements;
  CHECK(select_gemm_regime(fwd, 16, limit, 1, dtype::bf16, p) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(fwd, 16, limit + 1, 1, dtype::bf16, p) == gemm_regime::mma);
  CHECK(select_gemm_regime(fwd, 16, limit / 2, 2, dtype::bf16, p) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(fwd, 16, limit / 2 + 1, 2, dtype::bf16, p) == gemm_regime::mma);
  // a product beyond int64 must not wrap around into "small"
  CHECK(select_gemm_regime(fwd, 16, 4, int64_t(1) << 62, dtype::bf16, p) == gemm_regime::mma);
  // empty weights count as small (the call returns at once anyway)
  CHECK(select_gemm_regime(fwd, 16, 0, 4096, dtype::bf16, p) == gemm_regime::dequant_cublas);
}

TEST_CASE("dispatch: every threshold comes from the policy") {
  gemm_policy p{};
  p.gemv_max_m = 8;
  p.gemv_max_m_backward = 6;
  p.cublas_min_m = 32;
  p.small_weight_max_elements = 0;  // no weight is small
  CHECK(select_gemm_regime(fwd, 8, small_n, small_k, dtype::bf16, p) == gemm_regime::gemv);
  CHECK(select_gemm_regime(fwd, 9, small_n, small_k, dtype::bf16, p) == gemm_regime::mma);
  CHECK(select_gemm_regime(bwd, 6, small_n, small_k, dtype::bf16, p) == gemm_regime::gemv);
  CHECK(select_gemm_regime(bwd, 7, small_n, small_k, dtype::bf16, p) == gemm_regime::mma);
  CHECK(select_gemm_regime(fwd, 31, small_n, small_k, dtype::bf16, p) == gemm_regime::mma);
  CHECK(select_gemm_regime(fwd, 32, small_n, small_k, dtype::bf16, p) == gemm_regime::dequant_cublas);
  p.small_weight_max_elements = small_n * small_k;
  p.small_weight_cublas_min_m = 10;
  p.small_weight_cublas_min_m_backward = 20;
  CHECK(select_gemm_regime(fwd, 10, small_n, small_k, dtype::bf16, p) == gemm_regime::dequant_cublas);
  CHECK(select_gemm_regime(bwd, 19, small_n, small_k, dtype::bf16, p) == gemm_regime::mma);
  CHECK(select_gemm_regime(bwd, 20, small_n, small_k, dtype::bf16, p) == gemm_regime::dequant_cublas);
}
