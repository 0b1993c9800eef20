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
// Memory: scores and dP are B*H*S*S floats when the whole batch goes at
// once (128 MiB for the 1B shape at batch 4 x 512). The model passes a
// batch_chunk instead, the number of sequences per set of products, so those
// buffers hold batch_chunk*H*S*S elements; the products of one chunk are the
// same GEMMs with fewer batch entries (the (batch, kv head) pairs are
// independent), so the outputs do not depend on it.
//
// The probabilities P are kept for the backward when their buffer holds the
// whole batch. With checkpointing the model gives a buffer of one chunk
// only (64 MiB less for the 1B shape): the forward overwrites it chunk by
// chunk, and the backward recomputes each chunk's P from Q and K (one more
// scores product and softmax per chunk, the same values: the same products
// and kernel on the same inputs) before using it.
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

// The sequences [b0, b0 + chunk.B) of a batch of d.B: chunk.B of them
// (batch_chunk, the last chunk fewer), and where they start in each
// head-major tensor (elements).
struct attention_chunk {
  attention_dims dims;
  int64_t q, kv, probs;  // offsets into qh / oh / doh / dqh, kh / vh / dkh / dvh, probs
};
inline attention_chunk chunk_of(const attention_dims& d, int64_t b0, int64_t batch_chunk) {
  attention_chunk c{d, b0 * d.H * d.S * d.hd, b0 * d.KV * d.S * d.hd, b0 * d.H * d.S * d.S};
  c.dims.B = d.B - b0 < batch_chunk ? d.B - b0 : batch_chunk;
  return c;
}
inline void check_batch_chunk(int64_t batch_chunk) {
  lowbit::require(batch_chunk >= 1, lowbit::errc::invalid_argument,
                  "attention: batch_chunk must be >= 1, got " + std::to_string(batch_chunk));
}

// One chunk's P = causal_softmax(scale Q K^T) into probs, through the
// float32 scores buffer.
template <class A>
void attention_probs(cublasHandle_t h, const attention_chunk& c, const A* qh, const A* kh, float* scores, A* probs,
                     cudaStream_t s) {
  const attention_dims& d = c.dims;
  const attention_plan p = plan_attention(d, 1.0f / std::sqrt(float(d.hd)));
  batched_gemm<A>(h, p.scores, kh + c.kv, qh + c.q, scores, CUDA_R_32F, "attention scores");
  causal_softmax<A>(scores, probs, d.B * d.H * d.S, d.S, s);
}

// qh [B,H,S,hd], kh / vh [B,KV,S,hd] (rotary already applied) -> probs, oh
// [B,H,S,hd]. scores: batch_chunk*H*S*S floats (scratch). probs: [B,H,S,S]
// kept for the backward when keep_probs, else batch_chunk*H*S*S elements
// overwritten per chunk.
template <class A>
void attention_forward(cublasHandle_t h, const attention_dims& d, int64_t batch_chunk, const A* qh, const A* kh,
                       const A* vh, float* scores, A* probs, bool keep_probs, A* oh, cudaStream_t s) {
  check_batch_chunk(batch_chunk);
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  for (int64_t b0 = 0; b0 < d.B; b0 += batch_chunk) {
    const attention_chunk c = chunk_of(d, b0, batch_chunk);
    A* pc = keep_probs ? probs + c.probs : probs;
    attention_probs<A>(h, c, qh, kh, scores, pc, s);
    const attention_plan p = plan_attention(c.dims, 1.0f / std::sqrt(float(d.hd)));
    batched_gemm<A>(h, p.output, vh + c.kv, pc, oh + c.q, cuda_dtype<A>(), "attention output");
  }
}

// doh [B,H,S,hd] -> dqh [B,H,S,hd], dkh / dvh [B,KV,S,hd] (written, summed
// over the query heads of each group). dprobs: batch_chunk*H*S*S floats;
// dscores: batch_chunk*H*S*S elements of A (scratch). probs as the forward
// left it: with kept_probs the whole batch's P, else a chunk buffer in which
// each chunk's P is recomputed (dprobs serving as its scores scratch).
template <class A>
void attention_backward(cublasHandle_t h, const attention_dims& d, int64_t batch_chunk, const A* doh, const A* qh,
                        const A* kh, const A* vh, A* probs, bool kept_probs, float* dprobs, A* dscores, A* dqh,
                        A* dkh, A* dvh, cudaStream_t s) {
  check_batch_chunk(batch_chunk);
  const float scale = 1.0f / std::sqrt(float(d.hd));
  cublas_ok(cublasSetStream(h, s), "cublasSetStream");
  for (int64_t b0 = 0; b0 < d.B; b0 += batch_chunk) {
    const attention_chunk c = chunk_of(d, b0, batch_chunk);
    const attention_plan p = plan_attention(c.dims, scale);
    A* pc = kept_probs ? probs + c.probs : probs;
    if (!kept_probs) attention_probs<A>(h, c, qh, kh, dprobs, pc, s);
    batched_gemm<A>(h, p.dprobs, vh + c.kv, doh + c.q, dprobs, CUDA_R_32F, "attention dP");
    batched_gemm<A>(h, p.dv, doh + c.q, pc, dvh + c.kv, cuda_dtype<A>(), "attention dV");
    causal_softmax_backward<A>(pc, dprobs, dscores, c.dims.B * d.H * d.S, d.S, scale, s);
    batched_gemm<A>(h, p.dq, kh + c.kv, dscores, dqh + c.q, cuda_dtype<A>(), "attention dQ");
    batched_gemm<A>(h, p.dk, qh + c.q, dscores, dkh + c.kv, cuda_dtype<A>(), "attention dK");
  }
}

}  // namespace gpu
}  // namespace llama
