// examples/llama/cuda/attention.cuh
// Causal grouped-query attention on CUDA, forward and backward, from four
// strided-batched cuBLAS products and the softmax kernels of kernels.cuh.
//
// Why this shape: with q in head-major layout [B, H, S, hd] and the query
// heads of kv head k numbered k*G .. k*G+G-1 (G = H / KV), the G query heads
// that share a kv head are one contiguous (G*S) x hd matrix. So every
// product is ONE strided-batched GEMM over the B*KV (batch, kv head) pairs:
//   scores = scale Q K^T      (G*S x S)    P = causal_softmax(scores)
//   O      = P V              (G*S x hd)
//   dP     = dO V^T           dV = P^T dO  (sums over the G heads for free)
//   dS     = P (dP - rowsum(P dP)) scale
//   dQ     = dS K             dK = dS^T Q  (likewise summed over the group)
// The masked upper triangle is computed and zeroed (P = 0 there), which
// doubles the product work over a causal kernel but keeps each step a
// plain cuBLAS call. Operands are the activation type A (float32 or
// bfloat16), accumulation float32; scores and dP are float32.
//
// cuBLAS is column-major: a row-major r x c matrix with leading dimension c
// is, to cuBLAS, its c x r transpose. Each call below states the row-major
// product it computes and the column-major one it is written as.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include <lowbit/core/dtype.hpp>
#include <lowbit/core/error.hpp>

#include "kernels.cuh"

namespace llama {
namespace gpu {

inline void cublas_ok(cublasStatus_t st, const char* what) {
  lowbit::require(st == CUBLAS_STATUS_SUCCESS, lowbit::errc::cuda,
                  std::string("cuBLAS call failed (status ") + std::to_string(int(st)) + "): " + what);
}

template <class T>
cudaDataType_t cuda_dtype();
template <>
inline cudaDataType_t cuda_dtype<float>() { return CUDA_R_32F; }
template <>
inline cudaDataType_t cuda_dtype<lowbit::bf16>() { return CUDA_R_16BF; }

struct attention_dims {
  int64_t B, S, H, KV, hd;
  int64_t G() const { return H / KV; }
};

// C (row-major) = alpha * op(X) op(Y) over `batch` pairs, written in the
// column-major form the caller gives (see each use).
template <class A>
void batched_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                  float alpha, const A* a, int64_t lda, int64_t stride_a, const A* b, int64_t ldb, int64_t stride_b,
                  float beta, void* c, cudaDataType_t c_type, int64_t ldc, int64_t stride_c, int64_t batch,
                  const char* what) {
  lowbit::require(m < (int64_t(1) << 31) && n < (int64_t(1) << 31) && k < (int64_t(1) << 31) &&
                      batch < (int64_t(1) << 31),
                  lowbit::errc::unsupported, std::string(what) + ": dimension too large for cuBLAS");
  cublas_ok(cublasGemmStridedBatchedEx(h, ta, tb, int(m), int(n), int(k), &alpha, a, cuda_dtype<A>(), int(lda),
                                       stride_a, b, cuda_dtype<A>(), int(ldb), stride_b, &beta, c, c_type, int(ldc),
                                       stride_c, int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            what);
}

// qh [B,H,S,hd], kh / vh [B,KV,S,hd] (rotary already applied) -> probs
// [B,H,S,S] (kept for the backward), oh [B,H,S,hd]. scores: B*H*S*S floats.
template <class A>
void attention_forward(cublasHandle_t h, const attention_dims& d, const A* qh, const A* kh, const A* vh,
                       float* scores, A* probs, A* oh, cudaStream_t s) {
  const int64_t S = d.S, hd = d.hd, GS = d.G() * S, batch = d.B * d.KV;
  const float scale = 1.0f / std::sqrt(float(hd));
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  // scores (GS x S) = scale Q (GS x hd) K^T ; column-major: scores^T (S x GS) = K (S x hd) Q^T (hd x GS)
  batched_gemm<A>(h, CUBLAS_OP_T, CUBLAS_OP_N, S, GS, hd, scale, kh, hd, S * hd, qh, hd, GS * hd, 0.0f, scores,
                  CUDA_R_32F, S, GS * S, batch, "attention scores");
  causal_softmax<A>(scores, probs, d.B * d.H * S, S, s);
  // O (GS x hd) = P (GS x S) V (S x hd) ; column-major: O^T (hd x GS) = V^T (hd x S) P^T (S x GS)
  batched_gemm<A>(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, GS, S, 1.0f, vh, hd, S * hd, probs, S, GS * S, 0.0f, oh,
                  cuda_dtype<A>(), hd, GS * hd, batch, "attention output");
}

// doh [B,H,S,hd] -> dqh [B,H,S,hd], dkh / dvh [B,KV,S,hd] (written, summed
// over the query heads of each group). dprobs: B*H*S*S floats; dscores:
// B*H*S*S elements of A.
template <class A>
void attention_backward(cublasHandle_t h, const attention_dims& d, const A* doh, const A* qh, const A* kh,
                        const A* vh, const A* probs, float* dprobs, A* dscores, A* dqh, A* dkh, A* dvh,
                        cudaStream_t s) {
  const int64_t S = d.S, hd = d.hd, GS = d.G() * S, batch = d.B * d.KV;
  const float scale = 1.0f / std::sqrt(float(hd));
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  // dP (GS x S) = dO (GS x hd) V^T ; column-major: dP^T (S x GS) = V (S x hd) dO^T (hd x GS)
  batched_gemm<A>(h, CUBLAS_OP_T, CUBLAS_OP_N, S, GS, hd, 1.0f, vh, hd, S * hd, doh, hd, GS * hd, 0.0f, dprobs,
                  CUDA_R_32F, S, GS * S, batch, "attention dP");
  // dV (S x hd) = P^T (S x GS) dO (GS x hd) ; column-major: dV^T (hd x S) = dO^T (hd x GS) P (GS x S)
  batched_gemm<A>(h, CUBLAS_OP_N, CUBLAS_OP_T, hd, S, GS, 1.0f, doh, hd, GS * hd, probs, S, GS * S, 0.0f, dvh,
                  cuda_dtype<A>(), hd, S * hd, batch, "attention dV");
  causal_softmax_backward<A>(probs, dprobs, dscores, d.B * d.H * S, S, scale, s);
  // dQ (GS x hd) = dS (GS x S) K (S x hd) ; column-major: dQ^T (hd x GS) = K^T (hd x S) dS^T (S x GS)
  batched_gemm<A>(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, GS, S, 1.0f, kh, hd, S * hd, dscores, S, GS * S, 0.0f, dqh,
                  cuda_dtype<A>(), hd, GS * hd, batch, "attention dQ");
  // dK (S x hd) = dS^T (S x GS) Q (GS x hd) ; column-major: dK^T (hd x S) = Q^T (hd x GS) dS (GS x S)
  batched_gemm<A>(h, CUBLAS_OP_N, CUBLAS_OP_T, hd, S, GS, 1.0f, qh, hd, GS * hd, dscores, S, GS * S, 0.0f, dkh,
                  cuda_dtype<A>(), hd, S * hd, batch, "attention dK");
}

}  // namespace gpu
}  // namespace llama
