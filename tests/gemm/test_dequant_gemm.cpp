// Tests of cpu::dequant_gemm_forward, cpu::dequant_gemm_backward_input and
// cpu::gemm_weight_grad against float64 references.
//
// The references use W as cpu::dequantize decodes it to float32 (the GEMM
// must use exactly those weights) and X / dY as the float values of their
// stored dtype, summed in double. Error bounds (Higham, dot products):
//  * fp32 products and recursive fp32 summation of L terms (plus one more
//    term for a bias / an accumulated old value) err by at most
//    gamma_L * sum_l |a_l b_l| with gamma_L = L u / (1 - L u), u = 2^-24;
//  * the single rounding into the output dtype adds at most eps_out * |y32|
//    with eps_out = 2^-24 (f32), 2^-8 (bf16), 2^-11 (fp16), and for fp16 an
//    absolute 2^-25 (half the smallest subnormal) near zero;
//    |y32| <= |ref| + accumulation error.
// Outputs are poisoned with NaN before every call, so an element left
// unwritten fails the (finite) bound.
#include <doctest/doctest.h>

#include <lowbit/cpu/dequant_gemm.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using namespace lowbit;

namespace {

template <class T>
double out_rel_eps() {
  if (std::is_same<T, bf16>::value) return std::ldexp(1.0, -8);
  if (std::is_same<T, fp16>::value) return std::ldexp(1.0, -11);
  return std::ldexp(1.0, -24);
}
template <class T>
double out_abs_eps() {
  return std::is_same<T, fp16>::value ? std::ldexp(1.0, -25) : 0.0;
}

double gamma(int64_t terms) {
  const double u = std::ldexp(1.0, -24);
  return double(terms) * u / (1.0 - double(terms) * u);
}

template <class T>
double err_bound(double ref, double abs_sum, int64_t terms) {
  const double acc = gamma(terms) * abs_sum;
  return acc + out_rel_eps<T>() * (std::fabs(ref) + acc) + out_abs_eps<T>();
}

template <class T>
std::vector<T> random_values(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = from_float<T>(d(rng));
  return v;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = double(to_float(v[i]));
  return out;
}

template <class T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, from_float<T>(std::numeric_limits<float>::quiet_NaN()));
}

// A quantized N x K weight of normal values and its float32 decoding.
struct weight {
  quantized_tensor q;
  std::vector<double> deq;  // cpu::dequantize's float32 values, row-major N x K
};

weight make_weight(format f, int64_t N, int64_t K, int bs, bool nested, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = d(rng);
  if (N * K > 0) w[0] = 0.0f;
  weight out{quantized_tensor(make_layout(f, N * K, bs, nested)), {}};
  cpu::quantize(make_flat_view(w.data(), N * K), out.q.view());
  std::vector<float> deq(size_t(N * K));
  cpu::dequantize(out.q.view(), make_flat_view(deq.data(), N * K));
  out.deq.assign(deq.begin(), deq.end());
  return out;
}

struct shape {
  int64_t M, N, K;
  int bs;
};

// Blocks of 64 / 128 / 32 with K = 100, 300, 33: blocks span rows of W.
const shape shapes[] = {{1, 33, 100, 64},  {2, 129, 300, 64},  {3, 33, 300, 128}, {16, 129, 100, 32},
                        {17, 33, 300, 64}, {64, 129, 300, 64}, {255, 33, 100, 64}, {5, 70, 33, 32},
                        {1024, 17, 100, 64}};

const format formats[] = {format::nf4, format::fp4, format::int4, format::int8, format::dynamic8};

template <class T>
void check_forward_backward(format f, bool nested, const shape& s, bool with_bias, uint64_t seed) {
  CAPTURE(format_name(f));
  CAPTURE(nested);
  CAPTURE(s.M);
  CAPTURE(s.N);
  CAPTURE(s.K);
  CAPTURE(with_bias);
  const int64_t M = s.M, N = s.N, K = s.K;
  const weight w = make_weight(f, N, K, s.bs, nested, seed);
  const quantized_view wv = const_cast<quantized_tensor&>(w.q).view();

  // ---- forward
  const std::vector<T> x = random_values<T>(size_t(M * K), seed + 1);
  const std::vector<float> bias = [&] {
    std::vector<float> b = random_values<float>(size_t(N), seed + 2, 4.0f);
    return b;
  }();
  const tensor_view bias_v = make_flat_view(bias.data(), N);
  std::vector<T> y = poisoned<T>(size_t(M * N));
  cpu::dequant_gemm_forward(make_view(x.data(), {M, K}), wv, N, K, with_bias ? &bias_v : nullptr,
                            make_view(y.data(), {M, N}));
  const std::vector<double> xd = to_double(x);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, abs_sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = xd[size_t(m * K + k)] * w.deq[size_t(n * K + k)];
        ref += p;
        abs_sum += std::fabs(p);
      }
      int64_t terms = K;
      if (with_bias) {
        ref += double(bias[size_t(n)]);
        abs_sum += std::fabs(double(bias[size_t(n)]));
        terms += 1;
      }
      const double got = double(to_float(y[size_t(m * N + n)]));
      const double tol = err_bound<T>(ref, abs_sum, terms);
      if (!(std::fabs(got - ref) <= tol)) {
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(got);
        CAPTURE(ref);
        CAPTURE(tol);
        FAIL_CHECK("forward element out of bound");
        return;
      }
    }

  // ---- backward input: dX = dY W
  const std::vector<T> dy = random_values<T>(size_t(M * N), seed + 3);
  std::vector<T> dx = poisoned<T>(size_t(M * K));
  cpu::dequant_gemm_backward_input(make_view(dy.data(), {M, N}), wv, N, K, make_view(dx.data(), {M, K}));
  const std::vector<double> dyd = to_double(dy);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      double ref = 0, abs_sum = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double p = dyd[size_t(m * N + n)] * w.deq[size_t(n * K + k)];
        ref += p;
        abs_sum += std::fabs(p);
      }
      const double got = double(to_float(dx[size_t(m * K + k)]));
      const double tol = err_bound<T>(ref, abs_sum, N);
      if (!(std::fabs(got - ref) <= tol)) {
        CAPTURE(m);
        CAPTURE(k);
        CAPTURE(got);
        CAPTURE(ref);
        CAPTURE(tol);
        FAIL_CHECK("backward element out of bound");
        return;
      }
    }
}

}  // namespace

TEST_CASE("dequant_gemm forward and backward_input match float64 references") {
  uint64_t seed = 100;
  for (format f : formats)
    for (int nested = 0; nested < 2; ++nested) {
      if (nested && !has_zero_code(f)) continue;
      for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); ++i) {
        const shape& s = shapes[i];
        const bool bias = (i + size_t(f) + size_t(nested)) % 2 == 0;
        check_forward_backward<float>(f, nested != 0, s, bias, seed++);
        check_forward_backward<bf16>(f, nested != 0, s, !bias, seed++);
        check_forward_backward<fp16>(f, nested != 0, s, bias, seed++);
      }
    }
}

TEST_CASE("dequant_gemm bias of every float dtype and large K, N (many tiles)") {
  // K = 1000 > 3 reduction chunks, N = 200 > 3 column tiles; bias bf16/fp16/f64.
  const int64_t M = 7, N = 200, K = 1000;
  const weight w = make_weight(format::nf4, N, K, 64, true, 7);
  const quantized_view wv = const_cast<quantized_tensor&>(w.q).view();
  const std::vector<float> x = random_values<float>(size_t(M * K), 8);
  std::vector<double> bias64(static_cast<size_t>(N));
  std::vector<bf16> bias16(static_cast<size_t>(N));
  std::vector<fp16> biash(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    bias64[size_t(n)] = 0.25 * double(n % 7) - 0.5;  // exact in every dtype
    bias16[size_t(n)] = to_bf16(float(bias64[size_t(n)]));
    biash[size_t(n)] = to_fp16(float(bias64[size_t(n)]));
  }
  const tensor_view bviews[] = {make_flat_view(bias64.data(), N), make_flat_view(bias16.data(), N),
                                make_flat_view(biash.data(), N)};
  for (const tensor_view& bv : bviews) {
    std::vector<float> y = poisoned<float>(size_t(M * N));
    cpu::dequant_gemm_forward(make_view(x.data(), {M, K}), wv, N, K, &bv, make_view(y.data(), {M, N}));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = bias64[size_t(n)], abs_sum = std::fabs(bias64[size_t(n)]);
        for (int64_t k = 0; k < K; ++k) {
          const double p = double(x[size_t(m * K + k)]) * w.deq[size_t(n * K + k)];
          ref += p;
          abs_sum += std::fabs(p);
        }
        REQUIRE(std::fabs(double(y[size_t(m * N + n)]) - ref) <= err_bound<float>(ref, abs_sum, K + 1));
      }
  }
}

TEST_CASE("dequant_gemm forward and backward agree: sum(dY * X W^T) == sum((dY W) * X)") {
  // Both sides equal S = sum_{m,n,k} dy_mn w_nk x_mk exactly; with float32
  // outputs each side is off from S by at most
  //   sum_mn |dy_mn| gamma_K sum_k |x_mk w_nk|   (forward) or
  //   sum_mk |x_mk| gamma_N sum_n |dy_mn w_nk|   (backward),
  // and both bounds equal gamma * T with T = sum |dy| |w| |x|; the double
  // sums of M*N or M*K products add a negligible 1e-12 relative.
  for (format f : {format::nf4, format::int8, format::dynamic8}) {
    const int64_t M = 9, N = 65, K = 130;
    const weight w = make_weight(f, N, K, 64, f != format::int8, 31 + uint64_t(f));
    const quantized_view wv = const_cast<quantized_tensor&>(w.q).view();
    const std::vector<float> x = random_values<float>(size_t(M * K), 41);
    const std::vector<float> dy = random_values<float>(size_t(M * N), 42);
    std::vector<float> y = poisoned<float>(size_t(M * N)), dx = poisoned<float>(size_t(M * K));
    cpu::dequant_gemm_forward(make_view(x.data(), {M, K}), wv, N, K, nullptr, make_view(y.data(), {M, N}));
    cpu::dequant_gemm_backward_input(make_view(dy.data(), {M, N}), wv, N, K, make_view(dx.data(), {M, K}));
    double lhs = 0, rhs = 0, t = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) lhs += double(dy[size_t(m * N + n)]) * double(y[size_t(m * N + n)]);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) rhs += double(dx[size_t(m * K + k)]) * double(x[size_t(m * K + k)]);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          t += std::fabs(double(dy[size_t(m * N + n)]) * w.deq[size_t(n * K + k)] * double(x[size_t(m * K + k)]));
    const double tol = (gamma(K) + gamma(N)) * t * (1 + 1e-6) + 1e-12 * t;
    CAPTURE(format_name(f));
    CHECK(std::fabs(lhs - rhs) <= tol);
  }
}

TEST_CASE("dequant_gemm handles empty dimensions") {
  const weight w = make_weight(format::nf4, 5, 0, 64, false, 3);  // k = 0: Y = bias
  quantized_view wv = const_cast<quantized_tensor&>(w.q).view();
  std::vector<float> x(1), y = poisoned<float>(15), bias = {1, 2, 3, 4, 5};
  const tensor_view bv = make_flat_view(bias.data(), 5);
  cpu::dequant_gemm_forward(make_view(x.data(), {3, 0}), wv, 5, 0, &bv, make_view(y.data(), {3, 5}));
  for (int i = 0; i < 15; ++i) CHECK(y[size_t(i)] == bias[size_t(i % 5)]);
  cpu::dequant_gemm_forward(make_view(x.data(), {3, 0}), wv, 5, 0, nullptr, make_view(y.data(), {3, 5}));
  for (int i = 0; i < 15; ++i) CHECK(y[size_t(i)] == 0.0f);
  // M = 0: nothing to write.
  const weight w2 = make_weight(format::int4, 4, 6, 32, true, 4);
  cpu::dequant_gemm_forward(make_view(x.data(), {0, 6}), const_cast<quantized_tensor&>(w2.q).view(), 4, 6, nullptr,
                            make_view(y.data(), {0, 4}));
  // n = 0 in backward: dX = 0.
  const weight w3 = make_weight(format::int8, 0, 6, 32, false, 5);
  std::vector<float> dx = poisoned<float>(12);
  cpu::dequant_gemm_backward_input(make_view(y.data(), {2, 0}), const_cast<quantized_tensor&>(w3.q).view(), 0, 6,
                                   make_view(dx.data(), {2, 6}));
  for (float v : dx) CHECK(v == 0.0f);
}

namespace {

template <class TIn, class TW>
void check_weight_grad(int64_t M, int64_t N, int64_t K, bool accumulate, uint64_t seed) {
  CAPTURE(M);
  CAPTURE(N);
  CAPTURE(K);
  CAPTURE(accumulate);
  const std::vector<TIn> dy = random_values<TIn>(size_t(M * N), seed);
  const std::vector<TIn> x = random_values<TIn>(size_t(M * K), seed + 1);
  const std::vector<TW> dw0 = random_values<TW>(size_t(N * K), seed + 2, 3.0f);
  std::vector<TW> dw = accumulate ? dw0 : poisoned<TW>(size_t(N * K));
  cpu::gemm_weight_grad(make_view(dy.data(), {M, N}), make_view(x.data(), {M, K}), make_view(dw.data(), {N, K}),
                        accumulate);
  const std::vector<double> dyd = to_double(dy), xd = to_double(x), dw0d = to_double(dw0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      double ref = 0, abs_sum = 0;
      for (int64_t m = 0; m < M; ++m) {
        const double p = dyd[size_t(m * N + n)] * xd[size_t(m * K + k)];
        ref += p;
        abs_sum += std::fabs(p);
      }
      int64_t terms = M;
      if (accumulate) {
        ref += dw0d[size_t(n * K + k)];
        abs_sum += std::fabs(dw0d[size_t(n * K + k)]);
        terms += 1;
      }
      const double got = double(to_float(dw[size_t(n * K + k)]));
      const double tol = err_bound<TW>(ref, abs_sum, terms);
      if (!(std::fabs(got - ref) <= tol)) {
        CAPTURE(n);
        CAPTURE(k);
        CAPTURE(got);
        CAPTURE(ref);
        FAIL_CHECK("weight grad element out of bound");
        return;
      }
    }
}

}  // namespace

TEST_CASE("gemm_weight_grad matches a float64 reference, with and without accumulate") {
  // N and K up to 512 read dY and X in place, wider ones pack them
  // (gemm_detail::in_place_max_ld): {3, 600, 40} and {20, 7, 700} take the
  // packed path
  const shape gshapes[] = {{1, 33, 100, 0}, {3, 129, 300, 0}, {17, 33, 65, 0}, {255, 70, 129, 0},
                           {600, 5, 7, 0},  {3, 600, 40, 0},  {20, 7, 700, 0}};
  uint64_t seed = 900;
  for (const shape& s : gshapes)
    for (int acc = 0; acc < 2; ++acc) {
      check_weight_grad<float, float>(s.M, s.N, s.K, acc != 0, seed++);
      check_weight_grad<bf16, bf16>(s.M, s.N, s.K, acc != 0, seed++);
      check_weight_grad<fp16, float>(s.M, s.N, s.K, acc != 0, seed++);
    }
  // M = 0 without accumulate: dW = 0.
  std::vector<float> dw = poisoned<float>(6), dummy(1);
  cpu::gemm_weight_grad(make_view(dummy.data(), {0, 2}), make_view(dummy.data(), {0, 3}),
                        make_view(dw.data(), {2, 3}), false);
  for (float v : dw) CHECK(v == 0.0f);
}

namespace {

template <class Fn>
void check_invalid(Fn&& fn, const std::string& needle) {
  CAPTURE(needle);
  try {
    fn();
    FAIL_CHECK("no exception");
  } catch (const lowbit::error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("dequant_gemm rejects bad shapes, dtypes and device memory") {
  const int64_t M = 3, N = 5, K = 7;  // odd K is fine on the CPU
  const weight w = make_weight(format::nf4, N, K, 32, false, 11);
  const quantized_view wv = const_cast<quantized_tensor&>(w.q).view();
  std::vector<float> x(size_t(M * K), 0.5f), y(size_t(M * N)), dx(size_t(M * K)), bias(static_cast<size_t>(N)), dw(size_t(N * K));
  std::vector<double> xd(size_t(M * K));
  std::vector<uint8_t> xu(size_t(M * K));
  const tensor_view xv = make_view(x.data(), {M, K}), yv = make_view(y.data(), {M, N});
  const tensor_view bv = make_flat_view(bias.data(), N);
  cpu::dequant_gemm_forward(xv, wv, N, K, &bv, yv);  // the valid call works

  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, N + 1, K, nullptr, make_view(y.data(), {M, N + 1})); },
                "w holds");
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, K, N, nullptr, make_view(y.data(), {M, K})); }, "x has shape");
  check_invalid([&] { cpu::dequant_gemm_forward(make_view(x.data(), {M, K - 1}), wv, N, K, nullptr, yv); },
                "x has shape");
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, N, K, nullptr, make_view(y.data(), {M - 1, N})); },
                "y has shape");
  check_invalid([&] { cpu::dequant_gemm_forward(make_view(x.data(), {M * K}), wv, N, K, nullptr, yv); },
                "x must be 2-D");
  check_invalid([&] { cpu::dequant_gemm_forward(make_view(xd.data(), {M, K}), wv, N, K, nullptr, yv); },
                "x must be float32");
  check_invalid([&] { cpu::dequant_gemm_forward(make_view(xu.data(), {M, K}), wv, N, K, nullptr, yv); },
                "x must be float32");
  const tensor_view short_bias = make_flat_view(bias.data(), N - 1);
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, N, K, &short_bias, yv); }, "bias has shape");
  const tensor_view u8_bias = make_flat_view(xu.data(), N);
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, N, K, &u8_bias, yv); },
                "bias must be float32, bfloat16, float16 or float64, got uint8");
  check_invalid([&] { cpu::dequant_gemm_forward(make_view(x.data(), {M, K}, device::cuda()), wv, N, K, nullptr, yv); },
                "device memory");
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wv, N, K, nullptr, make_view(y.data(), {M, N}, device::cuda())); },
                "device memory");
  quantized_view wdev = wv;
  wdev.dev = device::cuda();
  check_invalid([&] { cpu::dequant_gemm_forward(xv, wdev, N, K, nullptr, yv); }, "device memory");
  check_invalid([&] { cpu::dequant_gemm_backward_input(yv, wdev, N, K, make_view(dx.data(), {M, K})); },
                "device memory");
  tensor_view strided = xv;
  strided.strides[0] = K + 1;
  check_invalid([&] { cpu::dequant_gemm_forward(strided, wv, N, K, nullptr, yv); }, "contiguous");

  check_invalid([&] { cpu::dequant_gemm_backward_input(yv, wv, N, K, make_view(dx.data(), {M, K - 1})); },
                "dx has shape");
  check_invalid([&] { cpu::dequant_gemm_backward_input(make_view(x.data(), {M, N + 1}), wv, N, K,
                                                       make_view(dx.data(), {M, K})); },
                "dy has shape");
  check_invalid([&] { cpu::dequant_gemm_backward_input(yv, wv, N, K + 1, make_view(dx.data(), {M, K + 1})); },
                "w holds");

  check_invalid([&] { cpu::gemm_weight_grad(yv, xv, make_view(dw.data(), {N, K - 1}), false); }, "dw has shape");
  check_invalid([&] { cpu::gemm_weight_grad(yv, make_view(x.data(), {M - 1, K}), make_view(dw.data(), {N, K}), false); },
                "x has shape");
  std::vector<fp16> dwh(size_t(N * K));
  check_invalid([&] { cpu::gemm_weight_grad(yv, xv, make_view(dwh.data(), {N, K}), false); },
                "dw must be float32 or bfloat16");
  check_invalid([&] { cpu::gemm_weight_grad(yv, xv, make_view(dw.data(), {N, K}, device::cuda()), true); },
                "device memory");
}
