// Tests of cpu::gemm_forward and cpu::gemm_backward_input (dense float32 /
// bfloat16 / float16 weights) against float64 references, and of
// cpu::dequantize_range against cpu::dequantize.
//
// Error bound as in test_dequant_gemm.cpp: fp32 products with recursive
// fp32 summation of L terms err by at most gamma_L * sum |a b|, gamma_L =
// L u / (1 - L u), u = 2^-24; the output rounding adds eps_out * |y32|
// (2^-24 f32, 2^-8 bf16, 2^-11 fp16, plus 2^-25 absolute for fp16). The
// reference uses W and X as the float values of their stored dtype. Outputs
// are poisoned with NaN before each call.
#include <doctest/doctest.h>

#include <lowbit/cpu/gemm.hpp>
#include <lowbit/cpu/quantize.hpp>

#include <cmath>
#include <array>
#include <atomic>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

using namespace lowbit;

namespace {

template <class T>
double out_eps() {
  if (std::is_same<T, bf16>::value) return std::ldexp(1.0, -8);
  if (std::is_same<T, fp16>::value) return std::ldexp(1.0, -11);
  return std::ldexp(1.0, -24);
}

double bound(double ref, double abs_sum, int64_t terms, double eps_out, double abs_eps) {
  const double u = std::ldexp(1.0, -24);
  const double acc = double(terms) * u / (1.0 - double(terms) * u) * abs_sum;
  return acc + eps_out * (std::fabs(ref) + acc) + abs_eps;
}

template <class T>
std::vector<T> random_values(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(d(g));
  return v;
}

template <class TW, class TY>
void check_forward_and_backward(int64_t M, int64_t N, int64_t K, bool with_bias) {
  const auto x = random_values<float>(size_t(M * K), 1);
  const auto w = random_values<TW>(size_t(N * K), 2);
  const auto b = random_values<float>(size_t(N), 3);
  std::vector<TY> y(size_t(M * N), from_float<TY>(std::numeric_limits<float>::quiet_NaN()));
  const tensor_view bv = make_view(b.data(), {N});
  cpu::gemm_forward(make_view(x.data(), {M, K}), make_view(w.data(), {N, K}), with_bias ? &bv : nullptr,
                    make_view(y.data(), {M, N}));
  const double abs_eps = std::is_same<TY, fp16>::value ? std::ldexp(1.0, -25) : 0.0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = with_bias ? double(b[size_t(n)]) : 0.0, abs_sum = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(x[size_t(m * K + k)]) * double(to_float(w[size_t(n * K + k)]));
        ref += p;
        abs_sum += std::fabs(p);
      }
      const double got = double(to_float(y[size_t(m * N + n)]));
      REQUIRE(std::fabs(got - ref) <= bound(ref, abs_sum, K + 1, out_eps<TY>(), abs_eps));
    }
  // dX = dY W
  const auto dy = random_values<float>(size_t(M * N), 4);
  std::vector<TY> dx(size_t(M * K), from_float<TY>(std::numeric_limits<float>::quiet_NaN()));
  cpu::gemm_backward_input(make_view(dy.data(), {M, N}), make_view(w.data(), {N, K}), make_view(dx.data(), {M, K}));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      double ref = 0, abs_sum = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double p = double(dy[size_t(m * N + n)]) * double(to_float(w[size_t(n * K + k)]));
        ref += p;
        abs_sum += std::fabs(p);
      }
      const double got = double(to_float(dx[size_t(m * K + k)]));
      REQUIRE(std::fabs(got - ref) <= bound(ref, abs_sum, N, out_eps<TY>(), abs_eps));
    }
}

}  // namespace

TEST_CASE("gemm_forward / gemm_backward_input with float32, bfloat16 and float16 weights") {
  for (auto shape : {std::array<int64_t, 3>{1, 1, 1}, {3, 17, 5}, {17, 33, 70}, {64, 100, 300}, {5, 130, 513}}) {
    INFO("M N K = " << shape[0] << " " << shape[1] << " " << shape[2]);
    check_forward_and_backward<float, float>(shape[0], shape[1], shape[2], false);
    check_forward_and_backward<float, float>(shape[0], shape[1], shape[2], true);
    check_forward_and_backward<bf16, float>(shape[0], shape[1], shape[2], true);
    check_forward_and_backward<fp16, bf16>(shape[0], shape[1], shape[2], false);
    check_forward_and_backward<bf16, fp16>(shape[0], shape[1], shape[2], false);
  }
}

TEST_CASE("dense gemm results equal the quantized path on the dequantized weights") {
  // W quantized to int8, dequantized to float32: gemm_forward on the float
  // copy and dequant_gemm_forward on the codes use the same values and the
  // same summation order, so the outputs are bit-identical.
  const int64_t M = 9, N = 37, K = 130;
  const auto x = random_values<float>(size_t(M * K), 5);
  const auto wf = random_values<float>(size_t(N * K), 6);
  quantized_tensor q(make_layout(format::nf4, N * K, 64, true), {N, K});
  cpu::quantize(make_flat_view(wf.data(), N * K), q.view());
  std::vector<float> deq(static_cast<size_t>(N * K)), y1(static_cast<size_t>(M * N)), y2(static_cast<size_t>(M * N)), dx1(static_cast<size_t>(M * K)), dx2(static_cast<size_t>(M * K));
  cpu::dequantize(q.view(), make_flat_view(deq.data(), N * K));
  cpu::gemm_forward(make_view(x.data(), {M, K}), make_view(deq.data(), {N, K}), nullptr, make_view(y1.data(), {M, N}));
  cpu::dequant_gemm_forward(make_view(x.data(), {M, K}), q.view(), N, K, nullptr, make_view(y2.data(), {M, N}));
  CHECK(y1 == y2);
  const auto dy = random_values<float>(size_t(M * N), 7);
  cpu::gemm_backward_input(make_view(dy.data(), {M, N}), make_view(deq.data(), {N, K}), make_view(dx1.data(), {M, K}));
  cpu::dequant_gemm_backward_input(make_view(dy.data(), {M, N}), q.view(), N, K, make_view(dx2.data(), {M, K}));
  CHECK(dx1 == dx2);
}

TEST_CASE("dense gemm rejects bad shapes and dtypes with clear errors") {
  std::vector<float> x(6), w(6), y(4);
  std::vector<double> wd(6);
  CHECK_THROWS_WITH_AS(cpu::gemm_forward(make_view(x.data(), {2, 3}), make_view(w.data(), {3, 2}), nullptr,
                                         make_view(y.data(), {2, 2})),
                       doctest::Contains("x has shape [2, 3], expected [2, 2]"), error);
  CHECK_THROWS_WITH_AS(cpu::gemm_forward(make_view(x.data(), {2, 3}), make_view(wd.data(), {2, 3}), nullptr,
                                         make_view(y.data(), {2, 2})),
                       doctest::Contains("w must be float32, bfloat16 or float16"), error);
  CHECK_THROWS_WITH_AS(cpu::gemm_backward_input(make_view(y.data(), {2, 2}), make_view(w.data(), {2, 3}),
                                                make_view(x.data(), {3, 2})),
                       doctest::Contains("dx has shape [3, 2], expected [2, 3]"), error);
}

TEST_CASE("dequantize_range equals the same slice of dequantize, for every format") {
  const int64_t n = 1000;
  const auto v = random_values<float>(size_t(n), 8);
  for (format f : {format::nf4, format::fp4, format::int4, format::int8, format::dynamic8}) {
    for (bool nested : {false, true}) {
      quantized_tensor q(make_layout(f, n, 64, nested));
      cpu::quantize(make_flat_view(v.data(), n), q.view());
      std::vector<float> all(static_cast<size_t>(n));
      cpu::dequantize(q.view(), make_flat_view(all.data(), n));
      for (auto range : {std::array<int64_t, 2>{0, n}, {1, 7}, {63, 2}, {127, 130}, {999, 1}, {500, 0}}) {
        std::vector<float> part(size_t(range[1]) + 1, -7.0f);
        cpu::dequantize_range(q.view(), range[0], range[1], part.data());
        for (int64_t i = 0; i < range[1]; ++i) REQUIRE(part[size_t(i)] == all[size_t(range[0] + i)]);
        CHECK(part[size_t(range[1])] == -7.0f);  // nothing written past the range
      }
      CHECK_THROWS_WITH_AS(cpu::dequantize_range(q.view(), 990, 11, all.data()),
                           doctest::Contains("range [990, 1001) is outside the tensor's 1000 elements"), error);
    }
  }
}

// The micro-tile height mr differs by target (12 rows with AVX-512, 4
// otherwise); blocked_gemm takes it as a parameter so this test runs every
// height on any machine. Each output is one fp32 sum over r in order
// whatever the tile, so every height, A read by rows, by columns or packed,
// and B packed or read in place must give the same bits, tails of fewer
// rows than a tile (and of fewer columns than a panel) included, and meet
// the fp32 bound.
TEST_CASE("blocked_gemm: every micro-tile height gives the same bits") {
  using namespace cpu::gemm_detail;
  for (const int64_t M : {1, 5, 12, 13, 25, 37, 100}) {
    for (const int64_t P : {1, 17, 64, 100, 300}) {  // 300: several column tiles, the last partial
      for (const int64_t R : {1, 255, 300}) {
        CAPTURE(M);
        CAPTURE(P);
        CAPTURE(R);
        const auto a = random_values<float>(size_t(M * R), 5);
        const auto b = random_values<float>(size_t(R * P), 6);  // B [R][P]
        auto pack = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
          for (int64_t r = 0; r < rlen; ++r)
            for (int64_t j = 0; j < plen; ++j) buf[(j / nr) * rlen * nr + r * nr + (j % nr)] = b[size_t((r0 + r) * P + p0 + j)];
          zero_pad(buf, rlen, plen);
        };
        // A dense where it lies, packed block by block (out[r * rows + i]),
        // or read by columns from its transpose; B packed or in place.
        auto pack_a = [&](int64_t m0, int64_t rows, float* out) {
          for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < rows; ++i) out[r * rows + i] = a[size_t((m0 + i) * R + r)];
        };
        std::vector<float> a_t(size_t(M * R));  // A^T [R][M]
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < R; ++r) a_t[size_t(r * M + m)] = a[size_t(m * R + r)];
        std::atomic<int64_t> stored{0};  // store runs on several threads
        auto run_with = [&](auto height, const auto& a_source, const auto& b_source) {
          std::vector<float> c(size_t(M * P), std::numeric_limits<float>::quiet_NaN());
          stored = 0;
          blocked_gemm<decltype(height)::value>(
              M, P, R, a_source, b_source, [&](int64_t m0, int64_t mlen, int64_t p0, int64_t plen, const float* t, int64_t ldc) {
                stored += mlen * plen;
                for (int64_t i = 0; i < mlen; ++i)
                  for (int64_t j = 0; j < plen; ++j) c[size_t((m0 + i) * P + p0 + j)] = t[i * ldc + j];
              });
          CHECK(stored.load() == M * P);  // every output element stored exactly once
          return c;
        };
        auto run = [&](auto height) { return run_with(height, dense_a{a.data(), R}, pack); };
        auto run_packed = [&](auto height) { return run_with(height, pack_a, pack); };
        auto run_columns = [&](auto height) { return run_with(height, columns_a{a_t.data(), M}, pack); };
        auto run_b_in_place = [&](auto height, const auto& a_source) {
          return run_with(height, a_source, dense_b{b.data(), P});
        };
        const std::vector<float> ref4 = run(std::integral_constant<int, 4>{});
        for (int64_t m = 0; m < M; ++m)
          for (int64_t p = 0; p < P; ++p) {
            double ref = 0, abs_sum = 0;
            for (int64_t r = 0; r < R; ++r) {
              const double v = double(a[size_t(m * R + r)]) * double(b[size_t(r * P + p)]);
              ref += v;
              abs_sum += std::fabs(v);
            }
            REQUIRE(std::fabs(double(ref4[size_t(m * P + p)]) - ref) <= bound(ref, abs_sum, R, 0.0, 0.0));
          }
        CHECK(run(std::integral_constant<int, 1>{}) == ref4);
        CHECK(run(std::integral_constant<int, 12>{}) == ref4);
        CHECK(run(std::integral_constant<int, 16>{}) == ref4);
        CHECK(run(std::integral_constant<int, mr>{}) == ref4);
        CHECK(run_packed(std::integral_constant<int, 4>{}) == ref4);
        CHECK(run_packed(std::integral_constant<int, 5>{}) == ref4);
        CHECK(run_packed(std::integral_constant<int, mr>{}) == ref4);
        CHECK(run_columns(std::integral_constant<int, 5>{}) == ref4);
        CHECK(run_columns(std::integral_constant<int, mr>{}) == ref4);
        CHECK(run_b_in_place(std::integral_constant<int, 5>{}, dense_a{a.data(), R}) == ref4);
        CHECK(run_b_in_place(std::integral_constant<int, mr>{}, columns_a{a_t.data(), M}) == ref4);
        CHECK(run_b_in_place(std::integral_constant<int, 3>{}, pack_a) == ref4);
      }
    }
  }
}
