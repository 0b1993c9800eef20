// tests/gemm/test_micro_kernel_isa.cpp
// The CPU products' micro-kernel (cpu/gemm_micro_kernel.hpp) as built for
// one instruction set: tests/CMakeLists.txt builds this file twice, with
// -mavx2 -mfma (the portable kernel, 4 x 16 tiles) and with -mavx512f -mfma
// (the intrinsics kernel, 12 x 32 tiles), so CI runs both whatever -march
// the rest of the build uses; a CPU without the instruction set makes the
// binary exit 77 (CTest: SKIPPED). With FMA every output must equal, bit
// for bit, one std::fma chain over r = 0, 1, ..., R-1 (the documented sum
// order), for A read in place and packed, every tile height, partial tiles
// and panels, more than one reduction chunk, and lie within the fp32 error
// bound of the float64 product. The public products (gemm_forward,
// gemm_backward_input, gemm_weight_grad) are checked the same way.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <lowbit/cpu/gemm.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

#if !defined(__FMA__)
#error "built without FMA: the bit-exact reference below assumes fused products"
#endif

using namespace lowbit;

namespace {

std::vector<float> normal_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// C = A B with A [M][R] and B [R][P] row-major: one fma chain per output in
// r order (the kernel's documented arithmetic), and the float64 product and
// sum of magnitudes for the error bound.
struct reference {
  std::vector<float> chain;
  std::vector<double> exact, magnitude;
};
reference multiply(const std::vector<float>& a, const std::vector<float>& b, int64_t M, int64_t P, int64_t R) {
  reference out;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < P; ++p) {
      float acc = 0.0f;
      double exact = 0, mag = 0;
      for (int64_t r = 0; r < R; ++r) {
        const float x = a[size_t(m * R + r)], y = b[size_t(r * P + p)];
        acc = std::fma(x, y, acc);
        exact += double(x) * double(y);
        mag += std::fabs(double(x) * double(y));
      }
      out.chain.push_back(acc);
      out.exact.push_back(exact);
      out.magnitude.push_back(mag);
    }
  return out;
}

// |fp32 sum - exact| <= R * 2^-24 * sum |terms| (plus a tiny absolute term
// for sums of denormal size): the textbook bound for R roundings.
void check_bound(const std::vector<float>& got, const reference& ref, int64_t R) {
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = double(R + 1) * std::ldexp(1.0, -24) * ref.magnitude[i] + 1e-30;
    REQUIRE(std::fabs(double(got[i]) - ref.exact[i]) <= tol);
  }
}

}  // namespace

TEST_CASE("micro-kernel: every tile height, A and B in place or packed, equals one fma chain per output") {
  using namespace cpu::gemm_detail;
  CAPTURE(nr);
  CAPTURE(mr);
  for (const int64_t M : {1, 3, 12, 13, 29}) {
    for (const int64_t P : {1, 31, 33, 70, 160}) {
      for (const int64_t R : {1, 7, 256, 300}) {
        CAPTURE(M);
        CAPTURE(P);
        CAPTURE(R);
        const auto a = normal_values(size_t(M * R), 11);
        const auto b = normal_values(size_t(R * P), 12);
        const reference ref = multiply(a, b, M, P, R);
        auto pack_b = [&](int64_t r0, int64_t rlen, int64_t p0, int64_t plen, float* buf) {
          for (int64_t r = 0; r < rlen; ++r)
            for (int64_t j = 0; j < plen; ++j)
              buf[(j / nr) * rlen * nr + r * nr + (j % nr)] = b[size_t((r0 + r) * P + p0 + j)];
          zero_pad(buf, rlen, plen);
        };
        auto pack_a = [&](int64_t m0, int64_t rows, float* out) {
          for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < rows; ++i) out[r * rows + i] = a[size_t((m0 + i) * R + r)];
        };
        std::vector<float> a_t(size_t(M * R));  // A^T, read by columns
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < R; ++r) a_t[size_t(r * M + m)] = a[size_t(m * R + r)];
        auto run_with = [&](auto height, const auto& a_source, const auto& b_source) {
          std::vector<float> c(size_t(M * P), std::nanf(""));
          blocked_gemm<decltype(height)::value>(
              M, P, R, a_source, b_source, [&](int64_t m0, int64_t mlen, int64_t p0, int64_t plen, const float* t, int64_t ldc) {
                for (int64_t i = 0; i < mlen; ++i)
                  for (int64_t j = 0; j < plen; ++j) c[size_t((m0 + i) * P + p0 + j)] = t[i * ldc + j];
              });
          return c;
        };
        auto run = [&](auto height, const auto& a_source) { return run_with(height, a_source, pack_b); };
        const std::vector<float> got = run(std::integral_constant<int, mr>{}, dense_a{a.data(), R});
        CHECK(got == ref.chain);
        check_bound(got, ref, R);
        CHECK(run(std::integral_constant<int, mr>{}, pack_a) == ref.chain);
        CHECK(run(std::integral_constant<int, 1>{}, dense_a{a.data(), R}) == ref.chain);
        CHECK(run(std::integral_constant<int, 5>{}, pack_a) == ref.chain);
        CHECK(run(std::integral_constant<int, mr>{}, columns_a{a_t.data(), M}) == ref.chain);
        CHECK(run_with(std::integral_constant<int, mr>{}, dense_a{a.data(), R}, dense_b{b.data(), P}) == ref.chain);
        CHECK(run_with(std::integral_constant<int, 7>{}, columns_a{a_t.data(), M}, dense_b{b.data(), P}) ==
              ref.chain);
      }
    }
  }
}

TEST_CASE("micro-kernel: the public dense products equal the fma chains") {
  const int64_t M = 37, N = 45, K = 300;
  const auto x = normal_values(size_t(M * K), 21);  // X [M][K]
  const auto w = normal_values(size_t(N * K), 22);  // W [N][K]
  const auto dy = normal_values(size_t(M * N), 23); // dY [M][N]
  std::vector<float> wt(size_t(K * N)), dyt(size_t(N * M));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * N + n)] = w[size_t(n * K + k)];
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) dyt[size_t(n * M + m)] = dy[size_t(m * N + n)];

  std::vector<float> y(size_t(M * N)), dx(size_t(M * K)), dw(size_t(N * K));
  cpu::gemm_forward(make_view(x.data(), {M, K}), make_view(w.data(), {N, K}), nullptr, make_view(y.data(), {M, N}));
  const reference ry = multiply(x, wt, M, N, K);  // Y = X W^T
  CHECK(y == ry.chain);
  check_bound(y, ry, K);

  cpu::gemm_backward_input(make_view(dy.data(), {M, N}), make_view(w.data(), {N, K}), make_view(dx.data(), {M, K}));
  const reference rdx = multiply(dy, w, M, K, N);  // dX = dY W
  CHECK(dx == rdx.chain);
  check_bound(dx, rdx, N);

  cpu::gemm_weight_grad(make_view(dy.data(), {M, N}), make_view(x.data(), {M, K}), make_view(dw.data(), {N, K}), false);
  const reference rdw = multiply(dyt, x, N, K, M);  // dW = dY^T X
  CHECK(dw == rdw.chain);
  check_bound(dw, rdw, M);
}

int main(int argc, char** argv) {
  __builtin_cpu_init();
#if defined(__AVX512F__)
  const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  const char* isa = "AVX-512 F + FMA (12 x 32 intrinsics kernel)";
#else
  const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* isa = "AVX2 + FMA (portable 4 x 16 kernel)";
#endif
  if (!supported) {
    std::fprintf(stderr, "SKIPPED: this CPU lacks %s; the kernel it tests was not run\n", isa);
    return 77;
  }
  std::printf("testing the %s\n", isa);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
