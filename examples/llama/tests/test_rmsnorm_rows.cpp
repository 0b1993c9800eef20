// examples/llama/tests/test_rmsnorm_rows.cpp
// ops::rmsnorm_forward / rmsnorm_backward sum several rows side by side
// (rows_at_once accumulators) and the weight gradient a block of columns at
// a time; every value must equal the one-row-at-a-time scalar form bit for
// bit, so that the CPU trainer's results (docs/RESULTS.md) do not move. The
// scalar form is written out below as the reference. Shapes: row counts
// below, at and past the group of rows (and not multiples of it, so that
// the threads' ranges end mid-group), widths below, at and past the
// 32-column block, float and double, with and without accumulation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "../ops.hpp"
#include "bitwise.hpp"

using namespace llama;
using bitwise::normal;
using bitwise::same_bits;

namespace {

template <class T>
void scalar_forward(const T* x, const T* w, T* y, T* rstd, int64_t M, int64_t D, float eps) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * D;
    T ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
    const T r = T(1) / std::sqrt(ss / T(D) + T(eps));
    rstd[m] = r;
    for (int64_t j = 0; j < D; ++j) y[m * D + j] = (xr[j] * r) * w[j];
  }
}

template <class T>
void scalar_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t M, int64_t D,
                     bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * D;
    const T* dyr = dy + m * D;
    const T r = rstd[m];
    T dot = 0;
    for (int64_t j = 0; j < D; ++j) dot += (dyr[j] * w[j]) * (xr[j] * r);
    const T c = dot / T(D);
    for (int64_t j = 0; j < D; ++j) dx[m * D + j] += r * (dyr[j] * w[j] - (xr[j] * r) * c);
  }
  for (int64_t j = 0; j < D; ++j) {
    T s = 0;
    for (int64_t m = 0; m < M; ++m) s += dy[m * D + j] * (x[m * D + j] * rstd[m]);
    dw[j] = accumulate ? dw[j] + s : s;
  }
}

template <class T>
void check_rmsnorm_rows(int64_t M, int64_t D, bool accumulate, uint32_t seed) {
  CAPTURE(M);
  CAPTURE(D);
  CAPTURE(accumulate);
  const float eps = 1e-5f;
  const auto x = normal<T>(size_t(M * D), seed), w = normal<T>(size_t(D), seed + 1);
  const auto dy = normal<T>(size_t(M * D), seed + 2), dx0 = normal<T>(size_t(M * D), seed + 3);
  const auto dw0 = normal<T>(size_t(D), seed + 4);
  const size_t rows = static_cast<size_t>(M), elems = static_cast<size_t>(M * D);
  std::vector<T> y(elems), rstd(rows), y_ref(elems), rstd_ref(rows);
  ops::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), M, D, eps);
  scalar_forward(x.data(), w.data(), y_ref.data(), rstd_ref.data(), M, D, eps);
  CHECK(same_bits(rstd, rstd_ref));
  CHECK(same_bits(y, y_ref));
  std::vector<T> dx = dx0, dw = dw0, dx_ref = dx0, dw_ref = dw0;
  ops::rmsnorm_backward(dy.data(), x.data(), w.data(), rstd_ref.data(), dx.data(), dw.data(), M, D, accumulate);
  scalar_backward(dy.data(), x.data(), w.data(), rstd_ref.data(), dx_ref.data(), dw_ref.data(), M, D, accumulate);
  CHECK(same_bits(dx, dx_ref));
  CHECK(same_bits(dw, dw_ref));
}

}  // namespace

TEST_CASE("rmsnorm: rows side by side and column blocks give the one-row scalar bits") {
  uint32_t seed = 7;
  for (const int64_t M : {1, 3, 4, 5, 11, 37, 130})
    for (const int64_t D : {1, 7, 31, 32, 33, 64, 100, 128})
      for (const bool accumulate : {false, true}) {
        check_rmsnorm_rows<float>(M, D, accumulate, seed++);
        check_rmsnorm_rows<double>(M, D, accumulate, seed++);
      }
}
