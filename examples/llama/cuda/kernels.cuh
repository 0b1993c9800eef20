// examples/llama/cuda/kernels.cuh
// The model's non-matmul layers on CUDA, the twins of ops.hpp: RMSNorm,
// rotary embeddings fused with the head-major permutation the attention
// GEMMs need, the causal softmax and its backward, SwiGLU, the residual add,
// the token embedding (forward gather, backward scatter) and the
// cross-entropy loss. Activations are of type A (float or lowbit::bf16;
// every kernel computes in float and rounds once on store); RMSNorm's 1/rms,
// the scores and the logits are float32, the parameter gradients of type G
// (float32, or bfloat16 with --grad-dtype bf16: summed in float32, rounded
// once when written).
// Determinism: no atomics; every reduction has a fixed order (a block tree
// for per-row sums, row chunks summed in order for the RMSNorm gain), so the
// same inputs give the same bits on every run.
// Launches go through launch.cuh's LLAMA_LAUNCH, so that the CPU test
// (tests/test_kernels_emulated.cpp) runs these very kernels under g++ with
// the emulator of tests/emulation/cuda_emulator.hpp (library tests).
// Shapes as in ops.hpp: M = batch * seq rows, row m is position m % seq of
// sequence m / seq. Head-major ("permuted") tensors are [batch, heads, seq,
// head_dim], so that the query heads sharing one kv head form one
// contiguous (group * seq) x head_dim matrix (see attention.cuh).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <lowbit/core/dtype.hpp>
#include <lowbit/cuda/check.cuh>

#include "gemm_plans.hpp"
#include "launch.cuh"

namespace llama {
namespace gpu {

using lowbit::bf16;

__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, int64_t i) { return lowbit::to_float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, int64_t i, float v) { p[i] = lowbit::to_bf16(v); }

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Sum (or max) over a block of blockDim.x threads (a multiple of 32, at
// most 1024); every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <bool Max>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = Max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : (Max ? -INFINITY : 0.0f);
  r = Max ? warp_max(r) : warp_sum(r);
  return r;
}

constexpr int row_threads = 256;

// ---- RMSNorm --------------------------------------------------------------
template <class A>
__global__ void rmsnorm_forward_kernel(const A* x, const float* w, A* y, float* rstd, int64_t D, float eps) {
  __shared__ float scratch[32];
  const int64_t m = blockIdx.x;
  const A* xr = x + m * D;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const float v = ld(xr, j);
    ss += v * v;
  }
  ss = block_reduce<false>(ss, scratch);
  const float r = 1.0f / sqrtf(ss / float(D) + eps);
  if (threadIdx.x == 0) rstd[m] = r;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) st(y + m * D, j, (ld(xr, j) * r) * w[j]);
}

template <class A>
void rmsnorm_forward(const A* x, const float* w, A* y, float* rstd, int64_t M, int64_t D, float eps, cudaStream_t s) {
  if (M == 0) return;
  LLAMA_LAUNCH(rmsnorm_forward_kernel<A>, unsigned(M), row_threads, s)(x, w, y, rstd, D, eps);
  LLAMA_CHECK_LAUNCH();
}

// dx += r (dy w - (x r) c), c = sum_j (dy_j w_j)(x_j r) / D, per row.
template <class A>
__global__ void rmsnorm_backward_dx_kernel(const A* dy, const A* x, const float* w, const float* rstd, A* dx,
                                           int64_t D) {
  __shared__ float scratch[32];
  const int64_t m = blockIdx.x;
  const float r = rstd[m];
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dot += (ld(dy, m * D + j) * w[j]) * (ld(x, m * D + j) * r);
  const float c = block_reduce<false>(dot, scratch) / float(D);
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
    const int64_t i = m * D + j;
    st(dx, i, ld(dx, i) + r * (ld(dy, i) * w[j] - (ld(x, i) * r) * c));
  }
}

// dw[j] partial sums over a chunk of rows: partial[chunk][j].
constexpr int64_t norm_rows_per_chunk = 64;
// gridDim.y is capped at 65535: a block row walks chunks blockIdx.y, + gridDim.y, ...
template <class A>
__global__ void rmsnorm_backward_dw_partial_kernel(const A* dy, const A* x, const float* rstd, float* partial,
                                                   int64_t M, int64_t D, int64_t chunks) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= D) return;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const int64_t m0 = c * norm_rows_per_chunk, m1 = M < m0 + norm_rows_per_chunk ? M : m0 + norm_rows_per_chunk;
    float s = 0.0f;
    for (int64_t m = m0; m < m1; ++m) s += ld(dy, m * D + j) * (ld(x, m * D + j) * rstd[m]);
    partial[c * D + j] = s;
  }
}
template <class G>
__global__ void sum_chunks_kernel(const float* partial, int64_t chunks, G* out, int64_t D, bool accumulate) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= D) return;
  float s = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * D + j];
  st(out, j, accumulate ? ld(out, j) + s : s);  // bf16: the float32 sum rounded once
}

inline int64_t rmsnorm_dw_scratch(int64_t M, int64_t D) {
  return ((M + norm_rows_per_chunk - 1) / norm_rows_per_chunk) * D;
}

// dx += d(rmsnorm)/dx . dy ; dw written (G: float32, or bfloat16 rounded
// once from the float32 sum), or with accumulate added to dw's value
// (gradient accumulation). scratch: rmsnorm_dw_scratch(M, D) floats.
template <class A, class G>
void rmsnorm_backward(const A* dy, const A* x, const float* w, const float* rstd, A* dx, G* dw, float* scratch,
                      int64_t M, int64_t D, cudaStream_t s, bool accumulate = false) {
  if (M == 0) return;
  LLAMA_LAUNCH(rmsnorm_backward_dx_kernel<A>, unsigned(M), row_threads, s)(dy, x, w, rstd, dx, D);
  LLAMA_CHECK_LAUNCH();
  const int64_t chunks = (M + norm_rows_per_chunk - 1) / norm_rows_per_chunk;
  const dim3 dw_grid(blocks_for(D, 128), unsigned(chunks < 65535 ? chunks : 65535));
  LLAMA_LAUNCH(rmsnorm_backward_dw_partial_kernel<A>, dw_grid, 128, s)(dy, x, rstd, scratch, M, D, chunks);
  LLAMA_CHECK_LAUNCH();
  LLAMA_LAUNCH(sum_chunks_kernel<G>, blocks_for(D, 128), 128, s)(scratch, chunks, dw, D, accumulate);
  LLAMA_CHECK_LAUNCH();
}

// ---- rotary embeddings + head-major permutation ------------------------------
// Row-major src [M, heads * hd] <-> head-major dst [B, heads, S, hd]. With
// rope, element i of a head pairs with i + hd/2 (Hugging Face "rotate half")
// at angle pos * theta^(-2i/hd) from the float32 tables cos/sin [S, hd/2];
// inverse applies the transpose (the backward). One thread per pair.
template <class A>
__global__ void permute_heads_kernel(const A* src, A* dst, const float* cos_t, const float* sin_t, int64_t S,
                                     int64_t heads, int64_t hd, bool rope, bool inverse, bool to_head_major,
                                     int64_t n_pairs) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_pairs) return;
  const int64_t half = hd / 2;
  const int64_t i = t % half, mh = t / half, h = mh % heads, m = mh / heads;
  const int64_t b = m / S, p = m % S;
  const int64_t row_idx = row_major_offset(b, h, p, i, S, heads, hd);    // [M, heads*hd]
  const int64_t head_idx = head_major_offset(b, h, p, i, S, heads, hd);  // [B, heads, S, hd]
  const int64_t src_i = to_head_major ? row_idx : head_idx, dst_i = to_head_major ? head_idx : row_idx;
  float a = ld(src, src_i), c2 = ld(src, src_i + half);
  if (rope) {
    const float c = cos_t[p * half + i], sn = inverse ? -sin_t[p * half + i] : sin_t[p * half + i];
    const float a2 = a * c - c2 * sn;
    c2 = c2 * c + a * sn;
    a = a2;
  }
  st(dst, dst_i, a);
  st(dst, dst_i + half, c2);
}

template <class A>
void permute_heads(const A* src, A* dst, const float* cos_t, const float* sin_t, int64_t B, int64_t S, int64_t heads,
                   int64_t hd, bool rope, bool inverse, bool to_head_major, cudaStream_t s) {
  const int64_t n = B * S * heads * (hd / 2);
  if (n == 0) return;
  LLAMA_LAUNCH(permute_heads_kernel<A>, blocks_for(n, 256), 256, s)(src, dst, cos_t, sin_t, S, heads, hd, rope, inverse,
                                                                   to_head_major, n);
  LLAMA_CHECK_LAUNCH();
}

// ---- causal softmax ---------------------------------------------------------
// scores [rows, S] float32 (already scaled), row r is query position r % S;
// probs[r][j] = softmax over j <= r % S, 0 above the diagonal.
template <class A>
__global__ void causal_softmax_kernel(const float* scores, A* probs, int64_t S) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x, i = r % S;
  const float* sr = scores + r * S;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, sr[j]);
  mx = block_reduce<true>(mx, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(sr[j] - mx);
  const float inv = 1.0f / block_reduce<false>(sum, scratch);
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x) st(probs + r * S, j, j <= i ? expf(sr[j] - mx) * inv : 0.0f);
}

template <class A>
void causal_softmax(const float* scores, A* probs, int64_t rows, int64_t S, cudaStream_t s) {
  if (rows == 0) return;
  LLAMA_LAUNCH(causal_softmax_kernel<A>, unsigned(rows), row_threads, s)(scores, probs, S);
  LLAMA_CHECK_LAUNCH();
}

// dS_j = p_j (dP_j - sum_l p_l dP_l) * scale for j <= i, 0 above.
template <class A>
__global__ void causal_softmax_backward_kernel(const A* probs, const float* dprobs, A* dscores, int64_t S,
                                               float scale) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x, i = r % S;
  const A* pr = probs + r * S;
  const float* dpr = dprobs + r * S;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dot += ld(pr, j) * dpr[j];
  dot = block_reduce<false>(dot, scratch);
  for (int64_t j = threadIdx.x; j < S; j += blockDim.x)
    st(dscores + r * S, j, j <= i ? ld(pr, j) * (dpr[j] - dot) * scale : 0.0f);
}

template <class A>
void causal_softmax_backward(const A* probs, const float* dprobs, A* dscores, int64_t rows, int64_t S, float scale,
                             cudaStream_t s) {
  if (rows == 0) return;
  LLAMA_LAUNCH(causal_softmax_backward_kernel<A>, unsigned(rows), row_threads, s)(probs, dprobs, dscores, S, scale);
  LLAMA_CHECK_LAUNCH();
}

// ---- SwiGLU and the residual add ------------------------------------------------
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <class A>
__global__ void swiglu_forward_kernel(const A* gate, const A* up, A* h, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = ld(gate, i);
    st(h, i, g * sigmoidf(g) * ld(up, i));
  }
}
template <class A>
// Every element's inputs are read before its outputs are written, so the
// model runs it in place (dgate over gate, dup over up): no buffers of its own.
__global__ void swiglu_backward_kernel(const A* dh, const A* gate, const A* up, A* dgate, A* dup, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = ld(gate, i), s = sigmoidf(g), d = ld(dh, i), u = ld(up, i);
    st(dup, i, d * (g * s));
    st(dgate, i, d * u * (s * (1.0f + g * (1.0f - s))));
  }
}
template <class A>
__global__ void add_into_kernel(A* y, const A* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    st(y, i, ld(y, i) + ld(x, i));
}

inline unsigned grid_stride_blocks(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return unsigned(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

template <class A>
void swiglu_forward(const A* gate, const A* up, A* h, int64_t n, cudaStream_t s) {
  LLAMA_LAUNCH(swiglu_forward_kernel<A>, grid_stride_blocks(n), 256, s)(gate, up, h, n);
  LLAMA_CHECK_LAUNCH();
}
template <class A>
void swiglu_backward(const A* dh, const A* gate, const A* up, A* dgate, A* dup, int64_t n, cudaStream_t s) {
  LLAMA_LAUNCH(swiglu_backward_kernel<A>, grid_stride_blocks(n), 256, s)(dh, gate, up, dgate, dup, n);
  LLAMA_CHECK_LAUNCH();
}
template <class A>
void add_into(A* y, const A* x, int64_t n, cudaStream_t s) {
  LLAMA_LAUNCH(add_into_kernel<A>, grid_stride_blocks(n), 256, s)(y, x, n);
  LLAMA_CHECK_LAUNCH();
}

// y = x (accumulate: y + x), computed in float and rounded once into Y:
// the head's dX summed over vocabulary chunks in float32, then stored.
template <class Y, class X>
__global__ void convert_into_kernel(Y* y, const X* x, int64_t n, bool accumulate) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    st(y, i, accumulate ? ld(y, i) + ld(x, i) : ld(x, i));
}
template <class Y, class X>
void convert_into(Y* y, const X* x, int64_t n, bool accumulate, cudaStream_t s) {
  if (n == 0) return;
  auto* k = &convert_into_kernel<Y, X>;  // (a template-id with a comma is no macro argument)
  LLAMA_LAUNCH(k, grid_stride_blocks(n), 256, s)(y, x, n, accumulate);
  LLAMA_CHECK_LAUNCH();
}

// ---- token embedding ----------------------------------------------------------
// Dense tables (float32 / bfloat16): out[m, :] = table[tokens[m], :].
// (Quantized tables go through lowbit::cuda::dequantize_rows.)
template <class W, class A>
__global__ void embed_gather_kernel(const W* table, const int32_t* tokens, A* out, int64_t D, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / D, j = i % D;
    st(out, i, ld(table, int64_t(tokens[m]) * D + j));
  }
}
template <class W, class A>
void embed_gather(const W* table, const int32_t* tokens, A* out, int64_t M, int64_t D, cudaStream_t s) {
  if (M == 0) return;
  auto* k = &embed_gather_kernel<W, A>;  // (a template-id with a comma is no macro argument)
  LLAMA_LAUNCH(k, grid_stride_blocks(M * D), 256, s)(table, tokens, out, D, M * D);
  LLAMA_CHECK_LAUNCH();
}

// Backward: grad[v, :] += sum of dx[m, :] over the rows m with tokens[m] == v,
// in increasing m (the CPU trainer's order), summed in float32 from grad's
// value and written once (a bfloat16 grad is rounded once per row; onto a
// tied head's bfloat16 gradient that is its second rounding, see
// model.cuh). The host sorts the rows by
// token (build_scatter_plan, a CSR list: rows[start[u] .. start[u+1]) are
// the rows of token ids[u]); block row y owns tokens ids[y], ids[y +
// gridDim.y], ... (gridDim.y is capped at 65535), so no two blocks write
// one row.
struct scatter_plan {
  std::vector<int32_t> ids;    // distinct token ids, increasing
  std::vector<int32_t> start;  // ids.size() + 1 offsets into rows
  std::vector<int32_t> rows;   // row indices grouped by token, increasing within a token
  int64_t n_ids() const { return int64_t(ids.size()); }
};

// Host: the plan of tokens[0 .. M) (a stable sort keeps each token's rows in
// increasing order).
inline scatter_plan build_scatter_plan(const int32_t* tokens, int64_t M) {
  scatter_plan p;
  p.rows.resize(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) p.rows[size_t(m)] = int32_t(m);
  std::stable_sort(p.rows.begin(), p.rows.end(), [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
  for (int64_t k = 0; k < M; ++k) {
    const int32_t t = tokens[p.rows[size_t(k)]];
    if (p.ids.empty() || p.ids.back() != t) {
      p.ids.push_back(t);
      p.start.push_back(int32_t(k));
    }
  }
  p.start.push_back(int32_t(M));
  return p;
}

template <class A, class G>
__global__ void embed_scatter_kernel(const A* dx, const int32_t* ids, const int32_t* start, const int32_t* rows,
                                     int64_t n_ids, G* grad, int64_t D, int32_t id_base) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= D) return;
  for (int64_t u = blockIdx.y; u < n_ids; u += gridDim.y) {
    G* g = grad + int64_t(ids[u] - id_base) * D;
    float acc = ld(g, j);
    for (int32_t k = start[u]; k < start[u + 1]; ++k) acc += ld(dx, int64_t(rows[k]) * D + j);
    st(g, j, acc);
  }
}
// grad holds the rows of ids id_base.. (0: the whole table; a vocabulary
// chunk's gradient rows otherwise, with ids / start the chunk's part of the
// plan).
template <class A, class G>
void embed_scatter(const A* dx, const int32_t* ids, const int32_t* start, const int32_t* rows, int64_t n_ids,
                   G* grad, int64_t D, cudaStream_t s, int32_t id_base = 0) {
  if (n_ids == 0) return;
  auto* k = &embed_scatter_kernel<A, G>;  // (a template-id with a comma is no macro argument)
  LLAMA_LAUNCH(k, dim3(blocks_for(D, 128), unsigned(n_ids < 65535 ? n_ids : 65535)), 128, s)(
      dx, ids, start, rows, n_ids, grad, D, id_base);
  LLAMA_CHECK_LAUNCH();
}

// ---- cross-entropy ----------------------------------------------------------------
// The loss over vocabulary chunks, so that the float32 logits [M, V] never
// exist whole (for a 128256-entry vocabulary and 2048 rows they would take
// 1 GiB): the model produces logits [M, vc] for columns [c0, c0 + vc) of
// the vocabulary at a time (one GEMM with a row panel of the head) and
//   ce_begin       sets every row's running max to -inf, its sum to 0;
//   ce_accumulate  folds one chunk in (online logsumexp: the running sum of
//                  exp(l - max) is rescaled when the max grows) and picks
//                  the target's logit when it lies in the chunk;
//   ce_finish      lse = max + log(sum), row_loss = lse - logit[target];
//   ce_gradient    writes dloss/dlogits of the mean loss, (softmax - onehot)
//                  / M, of one chunk into out [M, vc] (row stride out_ld):
//                  the model recomputes each chunk's logits in its backward
//                  and consumes the chunk's dlogits at once (head gradient
//                  rows, dX), so dlogits [M, V] does not exist either.
// With one chunk (vc = V) the arithmetic is the one-pass kernel's: max,
// then the sum of exp(l - max) in the block's order, then lse, bit for bit.
struct ce_rows {
  float* max = nullptr;     // [M] running max of the logits seen
  float* sum = nullptr;     // [M] running sum of exp(l - max)
  float* target = nullptr;  // [M] the target's logit
  float* lse = nullptr;     // [M] logsumexp, after ce_finish
};

__global__ void ce_begin_kernel(ce_rows r, int64_t M) {
  const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  r.max[m] = -INFINITY;
  r.sum[m] = 0.0f;
  r.target[m] = NAN;  // stays NaN (and so does the loss) if no chunk held the target
}
inline void ce_begin(const ce_rows& r, int64_t M, cudaStream_t s) {
  if (M == 0) return;
  LLAMA_LAUNCH(ce_begin_kernel, blocks_for(M, 256), 256, s)(r, M);
  LLAMA_CHECK_LAUNCH();
}

// One block per row of the chunk [M, vc] (row stride vc).
__global__ void ce_accumulate_kernel(const float* chunk, int64_t c0, int64_t vc, const int32_t* targets, ce_rows r) {
  __shared__ float scratch[32];
  const int64_t m = blockIdx.x;
  const float* l = chunk + m * vc;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) mx = fmaxf(mx, l[j]);
  mx = block_reduce<true>(mx, scratch);
  const float old_max = r.max[m], new_max = fmaxf(old_max, mx);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) sum += expf(l[j] - new_max);
  sum = block_reduce<false>(sum, scratch);
  if (threadIdx.x == 0) {
    // old_max = -inf (first chunk): the old sum is 0 and its factor 0
    r.sum[m] = r.sum[m] * expf(old_max - new_max) + sum;
    r.max[m] = new_max;
    const int64_t t = targets[m];
    if (t >= c0 && t < c0 + vc) r.target[m] = l[t - c0];
  }
}
inline void ce_accumulate(const float* chunk, int64_t c0, int64_t vc, const int32_t* targets, const ce_rows& r,
                          int64_t M, cudaStream_t s) {
  if (M == 0 || vc == 0) return;
  LLAMA_LAUNCH(ce_accumulate_kernel, unsigned(M), row_threads, s)(chunk, c0, vc, targets, r);
  LLAMA_CHECK_LAUNCH();
}

__global__ void ce_finish_kernel(ce_rows r, float* row_loss, int64_t M) {
  const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= M) return;
  const float lse = r.max[m] + logf(r.sum[m]);
  r.lse[m] = lse;
  row_loss[m] = lse - r.target[m];
}
inline void ce_finish(const ce_rows& r, float* row_loss, int64_t M, cudaStream_t s) {
  if (M == 0) return;
  LLAMA_LAUNCH(ce_finish_kernel, blocks_for(M, 256), 256, s)(r, row_loss, M);
  LLAMA_CHECK_LAUNCH();
}

template <class A>
__global__ void ce_gradient_kernel(const float* chunk, int64_t c0, int64_t vc, const int32_t* targets,
                                   const float* lse_rows, A* dlogits, int64_t out_ld, int64_t M) {
  const int64_t m = blockIdx.x;
  const float* l = chunk + m * vc;
  const float lse = lse_rows[m], inv_m = 1.0f / float(M);
  const int64_t t = targets[m] - c0;
  A* out = dlogits + m * out_ld;
  for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) {
    float g = expf(l[j] - lse) * inv_m;
    if (j == t) g -= inv_m;
    st(out, j, g);
  }
}
template <class A>
void ce_gradient(const float* chunk, int64_t c0, int64_t vc, const int32_t* targets, const ce_rows& r, A* out,
                 int64_t out_ld, int64_t M, cudaStream_t s) {
  if (M == 0 || vc == 0) return;
  LLAMA_LAUNCH(ce_gradient_kernel<A>, unsigned(M), row_threads, s)(chunk, c0, vc, targets, r.lse, out, out_ld, M);
  LLAMA_CHECK_LAUNCH();
}

// The whole loss from logits [M, V] held at once (one chunk): row_loss[m] =
// logsumexp - logit[target]; with dlogits, (softmax - onehot) / M. `rows`
// is scratch of 4 M floats (ce_rows).
template <class A>
void cross_entropy(const float* logits, const int32_t* targets, float* row_loss, A* dlogits, int64_t M, int64_t V,
                   float* rows_scratch, cudaStream_t s) {
  const ce_rows r{rows_scratch, rows_scratch + M, rows_scratch + 2 * M, rows_scratch + 3 * M};
  ce_begin(r, M, s);
  ce_accumulate(logits, 0, V, targets, r, M, s);
  ce_finish(r, row_loss, M, s);
  if (dlogits) ce_gradient(logits, 0, V, targets, r, dlogits, V, M, s);  // (c0 = 0: out is dlogits itself)
}

}  // namespace gpu
}  // namespace llama
