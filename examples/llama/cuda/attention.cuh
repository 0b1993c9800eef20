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
// The cuBLAS arguments of each product are in gemm_plans.hpp, where a CPU
// test checks them against the CPU trainer's attention.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include <lowbit/core/dtype.hpp>
#include <lowbit/core/error.hpp>

#include "gemm_plans.hpp"
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

// fp32 accumulation; for float32 operands the pedantic mode, so that no
// math-mode setting turns the products into TF32 (the float32 path is the
// one compared tightly with the CPU trainer).
inline cublasComputeType_t compute_type_for(cudaDataType_t operands) {
  return operands == CUDA_R_32F ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
}

// One strided-batched product with the arguments of a plan (gemm_plans.hpp).
template <class A>
void batched_gemm(cublasHandle_t h, const gemm_args& g, const A* a, const A* b, void* c, cudaDataType_t c_type,
                  const char* what) {
  const int64_t lim = int64_t(1) << 31;
  lowbit::require(g.m < lim && g.n < lim && g.k < lim && g.batch < lim && g.lda < lim && g.ldb < lim && g.ldc < lim,
                  lowbit::errc::unsupported, std::string(what) + ": dimension too large for cuBLAS");
  cublas_ok(cublasGemmStridedBatchedEx(h, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       int(g.m), int(g.n), int(g.k), &g.alpha, a, cuda_dtype<A>(), int(g.lda),
                                       g.stride_a, b, cuda_dtype<A>(), int(g.ldb), g.stride_b, &g.beta, c, c_type,
                                       int(g.ldc), g.stride_c, int(g.batch), compute_type_for(cuda_dtype<A>()),
                                       CUBLAS_GEMM_DEFAULT),
            what);
}

// qh [B,H,S,hd], kh / vh [B,KV,S,hd] (rotary already applied) -> probs
// [B,H,S,S] (kept for the backward), oh [B,H,S,hd]. scores: B*H*S*S floats.
template <class A>
void attention_forward(cublasHandle_t h, const attention_dims& d, const A* qh, const A* kh, const A* vh,
                       float* scores, A* probs, A* oh, cudaStream_t s) {
  const attention_plan p = plan_attention(d, 1.0f / std::sqrt(float(d.hd)));
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  batched_gemm<A>(h, p.scores, kh, qh, scores, CUDA_R_32F, "attention scores");
  causal_softmax<A>(scores, probs, d.B * d.H * d.S, d.S, s);
  batched_gemm<A>(h, p.output, vh, probs, oh, cuda_dtype<A>(), "attention output");
}

// doh [B,H,S,hd] -> dqh [B,H,S,hd], dkh / dvh [B,KV,S,hd] (written, summed
// over the query heads of each group). dprobs: B*H*S*S floats; dscores:
// B*H*S*S elements of A.
template <class A>
void attention_backward(cublasHandle_t h, const attention_dims& d, const A* doh, const A* qh, const A* kh,
                        const A* vh, const A* probs, float* dprobs, A* dscores, A* dqh, A* dkh, A* dvh,
                        cudaStream_t s) {
  const float scale = 1.0f / std::sqrt(float(d.hd));
  const attention_plan p = plan_attention(d, scale);
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  batched_gemm<A>(h, p.dprobs, vh, doh, dprobs, CUDA_R_32F, "attention dP");
  batched_gemm<A>(h, p.dv, doh, probs, dvh, cuda_dtype<A>(), "attention dV");
  causal_softmax_backward<A>(probs, dprobs, dscores, d.B * d.H * d.S, d.S, scale, s);
  batched_gemm<A>(h, p.dq, kh, dscores, dqh, cuda_dtype<A>(), "attention dQ");
  batched_gemm<A>(h, p.dk, qh, dscores, dkh, cuda_dtype<A>(), "attention dK");
}

}  // namespace gpu
}  // namespace llama
