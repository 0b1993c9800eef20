// lowbit/cpu/gemm_micro_kernel.hpp
// The innermost loop of every CPU matrix product (cpu/blocked_gemm.hpp's
// blocked_gemm): a micro-tile of MR output rows times nr columns held in
// registers while the reduction runs, c += a[MR][0:rlen] * b[rlen][nr].
// b is a panel of rlen rows of nr consecutive floats, row r at b + r * ldb
// (ldb = nr when packed, or a dense matrix's row stride when read in
// place); a is read either by rows (element (i, r) at a[i * lda + r], a
// row-major matrix) or by columns (at a[r * lda + i]: a packed block with
// lda = its height, or a transposed matrix read in place).
// There are two implementations with the same arithmetic: explicit AVX-512
// code where the target has it (two zmm registers per row), and portable
// C++ that the compiler vectorizes (SSE / AVX). Each output element is one
// float accumulator updated a * b + acc for r = 0, 1, ..., in order (fused
// where the target has FMA), so the tile's height and the implementation
// never change a result: only the build's FMA setting does.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LOWBIT_RESTRICT __restrict__
#else
#define LOWBIT_RESTRICT
#endif

// g++'s loop vectorizer otherwise vectorizes the portable micro-kernel's
// reduction loop over r (products in vectors, then an in-order scalar fold
// with shuffles, about 3x slower); with it off, the SLP vectorizer turns the
// unrolled i/j body into the intended broadcast-multiply-add on whole
// registers with the accumulators held in registers. Clang does the latter
// by itself.
#if defined(__GNUC__) && !defined(__clang__)
#define LOWBIT_GEMM_KERNEL_ATTR __attribute__((optimize("no-tree-loop-vectorize")))
#define LOWBIT_GEMM_BODY_ATTR __attribute__((always_inline, optimize("no-tree-loop-vectorize")))
#else
#define LOWBIT_GEMM_KERNEL_ATTR
#define LOWBIT_GEMM_BODY_ATTR
#endif

// Loop unrolling hints for g++ only (nvcc's front end, which also reads this
// header in CUDA translation units, does not know the GCC pragma).
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define LOWBIT_PRAGMA(x) _Pragma(#x)
#define LOWBIT_UNROLL(n) LOWBIT_PRAGMA(GCC unroll n)
#else
#define LOWBIT_UNROLL(n)
#endif

// The micro-kernels stay out of line: inlined into blocked_gemm's task loop
// (next to the W tile's decoding) the M = 1 forward ran 15 % slower on the
// Intel Xeon VM.
#if defined(__GNUC__) || defined(__clang__)
#define LOWBIT_GEMM_NOINLINE __attribute__((noinline))
#else
#define LOWBIT_GEMM_NOINLINE
#endif

namespace lowbit {
namespace cpu {
namespace gemm_detail {

// Micro-tile: mr rows of the output times nr columns, held in mr*nr float
// accumulators next to the B row and the broadcast A value.
// - AVX-512 (32 zmm registers): 12 rows of 32 columns, 24 accumulator
//   registers. Each step loads two B vectors and broadcasts 12 A values for
//   24 FMAs, so the two FMA pipes, not the loads, set the pace. The earlier
//   portable form (12 rows of one zmm, one B load and 12 broadcasts per 12
//   FMAs) reached 137 GFLOP/s per core on 2048 x 352 x 128 products on an
//   Intel Xeon VM where this one reaches 195 (docs/PERFORMANCE.md,
//   2026-11-28 late). g++ does not vectorize the portable code at 32
//   columns (it spills the 384 accumulators), hence the intrinsics.
// - AVX / AVX2 (16 ymm): 4 rows of 16 (8 accumulators); 6 rows were slower
//   (121 against 158 GFLOP/s, AMD EPYC), as with SSE2 (4 rows of 8: 66
//   against 75).
#if defined(__AVX512F__)
constexpr int nr = 32;
constexpr int mr = 12;
#elif defined(__AVX__)
constexpr int nr = 16;
constexpr int mr = 4;
#else
constexpr int nr = 8;
constexpr int mr = 4;
#endif

// One step of an output's sum: a * b + c, fused (one rounding) where the
// target has FMA instructions. lowbit's builds turn off the compiler's own
// contraction (-ffp-contract=off) so that the element math of quantizers and
// optimizers equals the GPU's bit for bit; a product's sum order is its own
// (the GPU kernels sum in other orders anyway), and there the fused form
// doubles the work an Intel core does per cycle, whose FMA ports also run
// the separate multiplies and adds. Sums then differ in the last bits
// between builds with and without FMA (e.g. -march=native and the default
// x86-64 target), never between thread counts or tile shapes of one build.
#if defined(__FMA__)
inline float product_add(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float product_add(float a, float b, float c) { return a * b + c; }
#endif

// Where element (i, r) of the A operand lies: by rows, a row-major matrix
// with row stride lda; by columns (ColumnsA), column r of the MR rows is MR
// consecutive floats at a + r * lda.
template <int MR, bool ColumnsA>
inline const float& a_at(const float* a, int64_t lda, int i, int64_t r) {
  return ColumnsA ? a[r * lda + i] : a[i * lda + r];
}

// Portable form: c[MR][nr] (row stride ldc) = (load ? c : 0) + A[MR][0:rlen]
// * b[rlen][nr]. Constant trip counts on the i/j loops let g++ unroll them
// and keep acc in registers; the j loop is the vectorized one.
template <int MR, bool ColumnsA>
LOWBIT_GEMM_BODY_ATTR inline void portable_kernel_body(const float* LOWBIT_RESTRICT a, int64_t lda,
                                                       const float* LOWBIT_RESTRICT b, int64_t ldb,
                                                       int64_t rlen, float* LOWBIT_RESTRICT c, int64_t ldc,
                                                       bool load) {
  float acc[MR][nr];
LOWBIT_UNROLL(16)
  for (int i = 0; i < MR; ++i)
LOWBIT_UNROLL(16)
    for (int j = 0; j < nr; ++j) acc[i][j] = load ? c[i * ldc + j] : 0.0f;
  for (int64_t r = 0; r < rlen; ++r) {
    const float* LOWBIT_RESTRICT br = b + r * ldb;
LOWBIT_UNROLL(16)
    for (int i = 0; i < MR; ++i) {
      const float av = a_at<MR, ColumnsA>(a, lda, i, r);
LOWBIT_UNROLL(16)
      for (int j = 0; j < nr; ++j) acc[i][j] = product_add(av, br[j], acc[i][j]);
    }
  }
LOWBIT_UNROLL(16)
  for (int i = 0; i < MR; ++i)
LOWBIT_UNROLL(16)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = acc[i][j];
}

template <int MR, bool ColumnsA>
LOWBIT_GEMM_KERNEL_ATTR void portable_kernel(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rlen,
                                             float* c, int64_t ldc, bool load) {
  portable_kernel_body<MR, ColumnsA>(a, lda, b, ldb, rlen, c, ldc, load);
}

#if defined(__AVX512F__)
// AVX-512 form of the same sums: row i's 32 accumulators are lo[i] (columns
// 0-15) and hi[i] (16-31); _mm512_fmadd_ps rounds once, as std::fma does,
// so it gives the portable form's bits in an FMA build.
template <int MR, bool ColumnsA>
LOWBIT_GEMM_NOINLINE void avx512_kernel(const float* LOWBIT_RESTRICT a, int64_t lda, const float* LOWBIT_RESTRICT b,
                                        int64_t ldb, int64_t rlen, float* LOWBIT_RESTRICT c, int64_t ldc, bool load) {
  static_assert(nr == 32, "two zmm registers per row");
  __m512 lo[MR], hi[MR];
LOWBIT_UNROLL(16)
  for (int i = 0; i < MR; ++i) {
    lo[i] = load ? _mm512_loadu_ps(c + i * ldc) : _mm512_setzero_ps();
    hi[i] = load ? _mm512_loadu_ps(c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t r = 0; r < rlen; ++r) {
    const __m512 b0 = _mm512_loadu_ps(b + r * ldb), b1 = _mm512_loadu_ps(b + r * ldb + 16);
LOWBIT_UNROLL(16)
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a_at<MR, ColumnsA>(a, lda, i, r));
      lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
      hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
    }
  }
LOWBIT_UNROLL(16)
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, lo[i]);
    _mm512_storeu_ps(c + i * ldc + 16, hi[i]);
  }
}
#endif

template <int MR, bool ColumnsA>
inline void micro_kernel(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rlen, float* c, int64_t ldc,
                         bool load) {
#if defined(__AVX512F__)
  avx512_kernel<MR, ColumnsA>(a, lda, b, ldb, rlen, c, ldc, load);
#else
  portable_kernel<MR, ColumnsA>(a, lda, b, ldb, rlen, c, ldc, load);
#endif
}

// A full micro-tile of MR rows, or one of the 1 .. MR-1 rows left at the
// end of a row tile.
template <int MR, bool ColumnsA>
inline void micro_dispatch(int rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rlen, float* c,
                           int64_t ldc, bool load) {
  if constexpr (MR > 1) {
    if (rows < MR) return micro_dispatch<MR - 1, ColumnsA>(rows, a, lda, b, ldb, rlen, c, ldc, load);
  }
  micro_kernel<MR, ColumnsA>(a, lda, b, ldb, rlen, c, ldc, load);
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace lowbit
