// examples/llama/cuda/gemm_plans.hpp
// The arguments of every cuBLAS product the CUDA trainer makes, as data
// (host-only, compiles with g++): attention's six strided-batched products
// and a dense linear layer's two. attention.cuh and linear.cuh pass these
// to cuBLAS; the CPU test (tests/test_gemm_plans.cpp) feeds the same
// arguments to reference_gemm, a plain column-major GEMM with cuBLAS's
// semantics, and checks that they compute the CPU trainer's attention and
// linear layers, so that a wrong transpose, leading dimension or stride is
// caught without a GPU.
//
// cuBLAS is column-major: a row-major r x c matrix with leading dimension c
// is, to cuBLAS, its c x r transpose. Each plan below states the row-major
// product it computes and the column-major one it is written as.
#pragma once

#include <cstdint>

#include <lowbit/core/config.hpp>

namespace llama {
namespace gpu {

// C = alpha op(A) op(B) + beta C over `batch` column-major matrices:
// op(A) is m x k, op(B) k x n, C m x n; batch i reads A + i stride_a, etc.
struct gemm_args {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  int64_t lda = 0, stride_a = 0, ldb = 0, stride_b = 0, ldc = 0, stride_c = 0;
  int64_t batch = 1;
};

struct attention_dims {
  int64_t B, S, H, KV, hd;
  int64_t G() const { return H / KV; }
};

// Offset of element i of head h at position p of sequence b: in a
// row-major [B*S, heads*hd] activation, and in head-major [B, heads, S, hd].
LOWBIT_HD int64_t row_major_offset(int64_t b, int64_t h, int64_t p, int64_t i, int64_t S, int64_t heads, int64_t hd) {
  return (b * S + p) * heads * hd + h * hd + i;
}
LOWBIT_HD int64_t head_major_offset(int64_t b, int64_t h, int64_t p, int64_t i, int64_t S, int64_t heads,
                                    int64_t hd) {
  return ((b * heads + h) * S + p) * hd + i;
}

// With q in head-major layout [B, H, S, hd] and query head h = kv*G + g,
// the G query heads sharing kv head `kv` are one contiguous (G*S) x hd
// matrix, so each product is one batch over the B*KV (batch, kv head)
// pairs; K and V ([B, KV, S, hd]) are S x hd per pair; scores / probs
// ([B, H, S, S]) are (G*S) x S per pair.
struct attention_plan {
  gemm_args scores;  // A = K, B = Q, C = scores (float32)
  gemm_args output;  // A = V, B = P, C = O
  gemm_args dprobs;  // A = V, B = dO, C = dP (float32)
  gemm_args dv;      // A = dO, B = P, C = dV
  gemm_args dq;      // A = K, B = dS, C = dQ
  gemm_args dk;      // A = Q, B = dS, C = dK
};

inline attention_plan plan_attention(const attention_dims& d, float scale) {
  const int64_t S = d.S, hd = d.hd, GS = d.G() * S, batch = d.B * d.KV;
  auto make = [&](bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, int64_t lda, int64_t sa,
                  int64_t ldb, int64_t sb, int64_t ldc, int64_t sc) {
    gemm_args g;
    g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k, g.alpha = alpha, g.beta = 0.0f;
    g.lda = lda, g.stride_a = sa, g.ldb = ldb, g.stride_b = sb, g.ldc = ldc, g.stride_c = sc, g.batch = batch;
    return g;
  };
  attention_plan p;
  // scores (GS x S) = scale Q (GS x hd) K^T ; column-major: scores^T (S x GS) = K (S x hd) Q^T (hd x GS)
  p.scores = make(true, false, S, GS, hd, scale, hd, S * hd, hd, GS * hd, S, GS * S);
  // O (GS x hd) = P (GS x S) V (S x hd) ; column-major: O^T (hd x GS) = V^T (hd x S) P^T (S x GS)
  p.output = make(false, false, hd, GS, S, 1.0f, hd, S * hd, S, GS * S, hd, GS * hd);
  // dP (GS x S) = dO (GS x hd) V^T ; column-major: dP^T (S x GS) = V (S x hd) dO^T (hd x GS)
  p.dprobs = make(true, false, S, GS, hd, 1.0f, hd, S * hd, hd, GS * hd, S, GS * S);
  // dV (S x hd) = P^T (S x GS) dO (GS x hd) ; column-major: dV^T (hd x S) = dO^T (hd x GS) P (GS x S)
  p.dv = make(false, true, hd, S, GS, 1.0f, hd, GS * hd, S, GS * S, hd, S * hd);
  // dQ (GS x hd) = dS (GS x S) K (S x hd) ; column-major: dQ^T (hd x GS) = K^T (hd x S) dS^T (S x GS)
  p.dq = make(false, false, hd, GS, S, 1.0f, hd, S * hd, S, GS * S, hd, GS * hd);
  // dK (S x hd) = dS^T (S x GS) Q (GS x hd) ; column-major: dK^T (hd x S) = Q^T (hd x GS) dS (GS x S)
  p.dk = make(false, true, hd, S, GS, 1.0f, hd, GS * hd, S, GS * S, hd, S * hd);
  return p;
}

// A linear layer with a dense row-major W [rows, cols] and M rows of
// activations. Forward: Y (M x rows) = X (M x cols) W^T ; column-major:
// Y^T (rows x M) = W (rows x cols) X^T (cols x M), A = W, B = X.
inline gemm_args plan_linear_forward(int64_t M, int64_t rows, int64_t cols) {
  gemm_args g;
  g.trans_a = true, g.trans_b = false, g.m = rows, g.n = M, g.k = cols;
  g.lda = cols, g.ldb = cols, g.ldc = rows;
  return g;
}
// Backward input: dX (M x cols) = dY (M x rows) W ; column-major:
// dX^T (cols x M) = W^T (cols x rows) dY^T (rows x M), A = W, B = dY.
inline gemm_args plan_linear_backward_input(int64_t M, int64_t rows, int64_t cols) {
  gemm_args g;
  g.trans_a = false, g.trans_b = false, g.m = cols, g.n = M, g.k = rows;
  g.lda = cols, g.ldb = rows, g.ldc = cols;
  return g;
}

// cuBLAS's semantics on the host, in double (for the tests): element (r, c)
// of a column-major matrix with leading dimension ld is at r + c * ld.
template <class TA, class TB, class TC>
void reference_gemm(const gemm_args& g, const TA* a, const TB* b, TC* c) {
  for (int64_t i = 0; i < g.batch; ++i) {
    const TA* A = a + i * g.stride_a;
    const TB* B = b + i * g.stride_b;
    TC* C = c + i * g.stride_c;
    for (int64_t col = 0; col < g.n; ++col)
      for (int64_t row = 0; row < g.m; ++row) {
        double s = 0;
        for (int64_t t = 0; t < g.k; ++t) {
          const double av = g.trans_a ? double(A[t + row * g.lda]) : double(A[row + t * g.lda]);
          const double bv = g.trans_b ? double(B[col + t * g.ldb]) : double(B[t + col * g.ldb]);
          s += av * bv;
        }
        TC& out = C[row + col * g.ldc];
        out = TC(double(g.alpha) * s + (g.beta != 0.0f ? double(g.beta) * double(out) : 0.0));
      }
  }
}

}  // namespace gpu
}  // namespace llama
