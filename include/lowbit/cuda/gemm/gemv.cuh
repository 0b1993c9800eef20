// lowbit/cuda/gemm/gemv.cuh
// The small-M regime of the CUDA dequant-GEMM: CUDA-core kernels for a few
// rows of activations, bound by reading the packed W once. Products and
// sums are fp32 FMAs of the code values (the format's table, exactly as
// cuda::dequantize reads it) with the activations; each block scale is
// applied once per vector of codes instead of to every weight (forward: to
// the vector's partial dot product; backward: to the row's dY value), which
// saves a multiply per weight at the cost of one rounding per product
// (within the fp32 accumulation bound; a one-hot activation still yields
// exactly the dequantized weight). One rounding into the output dtype at
// the end.
//
// Forward Y = X W^T: each warp owns 2 rows of W (2 output columns) and
// streams them along K with 16-byte loads (32 4-bit or 16 8-bit codes a lane;
// a warp reads 512 contiguous bytes of a row per step), decodes in registers
// (decode.cuh), and multiplies by up to MT = 4 rows of X read with 16-byte
// loads (L1-resident: X is small in this regime and every warp of an SM
// reads the same X). Both rows of a warp share each X load. Lanes then
// reduce with shuffles.
//
// Backward dX = dY W on the same packed W: each lane owns 16 (4-bit) or 8
// (8-bit) consecutive columns of W (8-byte loads: a warp reads 256
// contiguous bytes of a row), the 8 warps of a CTA take interleaved rows of
// one row range, each multiplies its decoded row segment by the dY values of
// that row (broadcast loads; gemv_bwd_rows_in_flight rows loaded per step),
// and the CTA sums its warps in a fixed tree in
// shared memory. Row ranges are spread over CTAs ("splits") until the device
// is busy; splits write fp32 partials that finalize_kernel sums in order, so
// results do not depend on timing.
//
// K (forward) or the column count (backward) that breaks the 16- / 8-byte
// alignment of rows (e.g. odd K with a 4-bit format: rows start mid-byte)
// takes a per-element path in the same kernels (`vec == false`).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "common.cuh"
#include "decode.cuh"

namespace lowbit {
namespace cuda {
namespace gemm_detail {

constexpr int gemv_threads = 256;
constexpr int gemv_warps = gemv_threads / 32;
// Rows of W per warp in the forward; both share each activation load. Tried
// and measured on the H100 (2026-11-26, bench_dequant_gemm_cuda, M = 1,
// NF4 nested): one row per warp at M = 1 (twice the warps: ncu had shown
// 0.48 waves and 24 % achieved occupancy) was no faster (31.1 / 31.8 us
// against 29.9 / 29.5 us on 4096x11008 / 11008x4096), and four vectors per
// lane in flight on top of it was slower (46 / 37 us: 79 registers, fewer
// warps); so 2 rows and one vector a step, as first measured.
constexpr int gemv_fwd_rows_per_warp = 2;
constexpr int gemv_bwd_ctas_per_sm = 4;  // split target
// Backward: rows of W each warp has in flight per step (interleaved by
// gemv_warps), so a lane keeps several 8-byte loads outstanding.
constexpr int gemv_bwd_rows_in_flight = 2;

struct gemv_args {
  const void* act = nullptr;  // x [M][K] (forward) or dy [M][N] (backward)
  dtype act_type = dtype::bf16;
  void* out = nullptr;  // y [M][N] (forward) or dx [M][K] (backward)
  dtype out_type = dtype::bf16;
  const void* bias = nullptr;  // forward only, [N]
  dtype bias_type = dtype::f32;
  float* partial = nullptr;  // backward with splits > 1: [splits][M][K]
  int64_t M = 0, N = 0, K = 0;
  int64_t m_base = 0;  // first activation row of this launch
  int64_t rows_per_split = 0;
  int splits = 1;
  int warps_per_row_group = 1;  // forward split_k: warps sharing a row pair (1, 2, 4, 8)
  weight_args w;
  bool vec = false;
};

// EPW consecutive activations starting at idx (16-byte aligned for 16-bit
// dtypes with EPW = 8 and float32 with EPW = 4; 8-byte aligned otherwise).
template <int EPW>
__device__ __forceinline__ void load_group(const void* base, dtype t, int64_t idx, float* out) {
  if (t == dtype::f32) {
    const float* p = static_cast<const float*>(base) + idx;
#pragma unroll
    for (int i = 0; i < EPW; i += 4) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p + i));
      out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
    }
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(base) + idx;
  uint32_t w[EPW / 2];
  if constexpr (EPW == 8) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  }
  if (t == dtype::bf16) {
#pragma unroll
    for (int i = 0; i < EPW / 2; ++i) {
      out[2 * i] = bits_float(w[i] << 16);
      out[2 * i + 1] = bits_float(w[i] & 0xFFFF0000u);
    }
  } else {
#pragma unroll
    for (int i = 0; i < EPW / 2; ++i) {
      out[2 * i] = __half2float(__ushort_as_half(uint16_t(w[i] & 0xFFFFu)));
      out[2 * i + 1] = __half2float(__ushort_as_half(uint16_t(w[i] >> 16)));
    }
  }
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int g) {
  return g == 0 ? v.x : g == 1 ? v.y : g == 2 ? v.z : v.w;
}

// The forward's products for the R rows n0.. of W (none when n0 >= N) and
// the MT activation rows m0.. (mcount of them real): this thread takes the
// 16-byte vectors (on the per-element path: the elements) first,
// first + stride, ... of those rows and sets acc to their code-value x
// activation sums, each vector's scaled once. The two forward kernels
// differ only in first / stride (one warp or a group of warps per row pair)
// and in how they sum threads.
template <decode_kind D, int R, int MT>
__device__ __forceinline__ void gemv_forward_accumulate(const gemv_args& p, const decoder& dec, const float* map,
                                                        int64_t n0, int64_t m0, int mcount, int64_t first,
                                                        int64_t stride, float (&acc)[R][MT]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
  if (n0 >= p.N) return;
  const float offset = p.w.nested ? *p.w.nested_offset : 0.0f;
  const int64_t K = p.K;
  if (p.vec) {
    constexpr int EPW = kind_elems_per_word(D);
    constexpr int E = 4 * EPW;  // elements per 16-byte vector
    const int64_t nvec = K / E;
    // One step: the R rows' vectors at column v * E (codes and raw scales
    // loaded first, then decoded), times the MT activation rows.
    uint4 cw[R];
    scale_raw sr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) cw[r] = make_uint4(0u, 0u, 0u, 0u);
    auto fetch = [&](int64_t v) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (n0 + r < p.N) {
          const int64_t i0 = (n0 + r) * K + v * E;
          cw[r] = __ldg(reinterpret_cast<const uint4*>(p.w.codes + (kind_is_4bit(D) ? (i0 >> 1) : i0)));
          sr[r] = fetch_scale(p.w, i0 >> p.w.bs_log2);
        }
      }
    };
    int64_t v = first;
    if (v < nvec) fetch(v);
    while (v < nvec) {
      uint4 cur[R];
      float sc[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        cur[r] = cw[r];
        sc[r] = n0 + r < p.N ? finish_scale(p.w, sr[r], map, offset) : 0.0f;
      }
      const int64_t vn = v + stride;
      if (vn < nvec) fetch(vn);  // next step's loads fly while this one computes
      // The vector's 32 (4-bit) or 16 (8-bit) elements lie in one block of
      // W (blocks are multiples of them), so its scale multiplies the dot
      // product of code values and activations once (part), not each weight.
      float part[R][MT];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) part[r][m] = 0.0f;
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        float xv[MT][EPW];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < mcount) {
            load_group<EPW>(p.act, p.act_type, (m0 + m) * K + v * E + g * EPW, xv[m]);
          } else {
#pragma unroll
            for (int e = 0; e < EPW; ++e) xv[m][e] = 0.0f;
          }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (n0 + r < p.N) {
            float tv[EPW];
            decode_word_values<D>(dec, word_of(cur[r], g), tv);
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
              for (int e = 0; e < EPW; ++e) part[r][m] = fmaf(xv[m][e], tv[e], part[r][m]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(part[r][m], sc[r], acc[r][m]);
      v = vn;
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t row = n0 + r;
      if (row >= p.N) continue;
      for (int64_t k = first; k < K; k += stride) {
        const float w = decode_at<D>(dec, p.w, row * K + k, map, offset);
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < mcount) acc[r][m] = fmaf(load_as_float(p.act, p.act_type, (m0 + m) * K + k), w, acc[r][m]);
      }
    }
  }
}

// Sums acc over the 32 lanes of each warp (a fixed butterfly: every lane
// ends with the same, order-independent-of-timing sum).
template <int R, int MT>
__device__ __forceinline__ void gemv_warp_sum(float (&acc)[R][MT]) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int off = 16; off >= 1; off >>= 1) acc[r][m] = add_rn(acc[r][m], __shfl_xor_sync(0xFFFFFFFFu, acc[r][m], off));
}

// y[m0 + m][row] = sum (+ bias[row]), rounded once into the output dtype.
__device__ __forceinline__ void gemv_store_output(const gemv_args& p, int64_t m, int64_t row, float y) {
  if (p.bias) y = add_rn(y, load_as_float(p.bias, p.bias_type, row));
  store_from_float(p.out, p.out_type, m * p.N + row, y);
}

// Forward, layout rows_per_warp: warp w of CTA b owns rows (8 b + w) R ..
// and walks their whole length.
template <decode_kind D, int MT>
__global__ void __launch_bounds__(gemv_threads)
    gemv_forward_kernel(const gemv_args p, const __grid_constant__ code_table table,
                        const __grid_constant__ code_table map_src) {
  LOWBIT_DYNAMIC_SHARED(smem);
  float* map = nullptr;
  const decoder dec = setup_decoder<D>(smem, table.value, map_src.value, p.w.nested, &map);
  __syncthreads();  // the only barrier: warps may leave early below
  constexpr int R = gemv_fwd_rows_per_warp;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u);
  const int64_t n0 = (int64_t(blockIdx.x) * gemv_warps + warp) * R;
  if (n0 >= p.N) return;
  const int64_t m0 = p.m_base + int64_t(blockIdx.y) * MT;
  const int mcount = int(p.M - m0 < MT ? p.M - m0 : MT);
  float acc[R][MT];
  gemv_forward_accumulate<D, R, MT>(p, dec, map, n0, m0, mcount, lane, 32, acc);
  gemv_warp_sum<R, MT>(acc);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int64_t row = n0 + r;
      if (lane == r * MT + m && row < p.N && m < mcount) gemv_store_output(p, m0 + m, row, acc[r][m]);
    }
}

// Forward, layout split_k: the CTA's 8 warps form 8 / wg groups of wg warps
// (wg = p.warps_per_row_group: 1, 2, 4 or 8); group g owns rows
// ((8 / wg) b + g) R .. and its wg * 32 threads take interleaved 16-byte
// vectors of them, so a row pair has up to 8 times the loads in flight of
// rows_per_warp and a 4096-row W gives 2048 CTAs instead of 256. Each warp
// sums its lanes, then the group's first warp adds the wg warp sums in warp
// order (shared memory, after the barrier): fixed order, deterministic.
// (At MT = 1, 4 CTAs per SM: at most 64 registers, so 32 warps of loads in
// flight per SM; without the bound nvcc took up to 74, leaving 3 CTAs.)
template <decode_kind D, int MT>
__global__ void __launch_bounds__(gemv_threads, MT == 1 ? 4 : 2)
    gemv_forward_split_k_kernel(const gemv_args p, const __grid_constant__ code_table table,
                                const __grid_constant__ code_table map_src) {
  LOWBIT_DYNAMIC_SHARED(smem);
  float* map = nullptr;
  const decoder dec = setup_decoder<D>(smem, table.value, map_src.value, p.w.nested, &map);
  constexpr int R = gemv_fwd_rows_per_warp;
  float* warp_sums = reinterpret_cast<float*>(smem + decode_smem_bytes(D));  // [gemv_warps][R][MT]
  __syncthreads();
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u);
  const int wg = p.warps_per_row_group;
  const int group = warp / wg, warp_in_group = warp % wg;
  const int64_t n0 = (int64_t(blockIdx.x) * (gemv_warps / wg) + group) * R;
  const int64_t m0 = p.m_base + int64_t(blockIdx.y) * MT;
  const int mcount = int(p.M - m0 < MT ? p.M - m0 : MT);
  // No thread leaves before the barrier below; groups past the last row
  // add nothing.
  float acc[R][MT];
  gemv_forward_accumulate<D, R, MT>(p, dec, map, n0, m0, mcount, int64_t(warp_in_group) * 32 + lane,
                                    int64_t(wg) * 32, acc);
  gemv_warp_sum<R, MT>(acc);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) warp_sums[(warp * R + r) * MT + m] = acc[r][m];
  }
  __syncthreads();
  if (warp_in_group == 0 && lane < R * MT) {
    const int r = lane / MT, m = lane % MT;
    const int64_t row = n0 + r;
    if (row < p.N && m < mcount) {
      float y = warp_sums[(warp * R + r) * MT + m];
      for (int j = 1; j < wg; ++j) y = add_rn(y, warp_sums[((warp + j) * R + r) * MT + m]);
      gemv_store_output(p, m0 + m, row, y);
    }
  }
}

template <decode_kind D, int MT>
__global__ void __launch_bounds__(gemv_threads)
    gemv_backward_kernel(const gemv_args p, const __grid_constant__ code_table table,
                         const __grid_constant__ code_table map_src) {
  LOWBIT_DYNAMIC_SHARED(smem);
  float* map = nullptr;
  const decoder dec = setup_decoder<D>(smem, table.value, map_src.value, p.w.nested, &map);
  constexpr int EPW = kind_elems_per_word(D);
  constexpr int E = 2 * EPW;  // columns per lane: one 8-byte vector
  float* red = reinterpret_cast<float*>(smem + decode_smem_bytes(D));  // [4][MT][E][32]
  __syncthreads();
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u);
  const float offset = p.w.nested ? *p.w.nested_offset : 0.0f;
  const int64_t K = p.K, N = p.N;
  const int64_t c0 = (int64_t(blockIdx.x) * 32 + lane) * E;
  const int64_t r_beg = int64_t(blockIdx.y) * p.rows_per_split;
  const int64_t r_end = r_beg + p.rows_per_split < N ? r_beg + p.rows_per_split : N;
  const int64_t m0 = p.m_base + int64_t(blockIdx.z) * MT;
  const int mcount = int(p.M - m0 < MT ? p.M - m0 : MT);
  const bool active = c0 < K;
  float acc[MT][E];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int e = 0; e < E; ++e) acc[m][e] = 0.0f;

  if (active) {
    if (p.vec) {
      // U rows per step (row, row + 8, ...: the warp's rows in their usual
      // order, so sums are as with one), loaded a step ahead.
      constexpr int U = gemv_bwd_rows_in_flight;
      uint2 cw[U];
      scale_raw sr[U];
      float dyv[U][MT];
      auto fetch = [&](int u, int64_t row) {
        const int64_t i0 = row * K + c0;
        cw[u] = __ldg(reinterpret_cast<const uint2*>(p.w.codes + (kind_is_4bit(D) ? (i0 >> 1) : i0)));
        sr[u] = fetch_scale(p.w, i0 >> p.w.bs_log2);
#pragma unroll
        for (int m = 0; m < MT; ++m)
          dyv[u][m] = m < mcount ? load_as_float(p.act, p.act_type, (m0 + m) * N + row) : 0.0f;
      };
      int64_t row = r_beg + warp;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (row + u * gemv_warps < r_end) fetch(u, row + u * gemv_warps);
      while (row < r_end) {
        uint2 cur[U];
        float s[U], dcur[U][MT];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const bool ok = row + u * gemv_warps < r_end;
          cur[u] = cw[u];
          s[u] = ok ? finish_scale(p.w, sr[u], map, offset) : 0.0f;
#pragma unroll
          for (int m = 0; m < MT; ++m) dcur[u][m] = ok ? dyv[u][m] : 0.0f;
        }
        const int64_t next = row + U * gemv_warps;
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (next + u * gemv_warps < r_end) fetch(u, next + u * gemv_warps);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (row + u * gemv_warps >= r_end) break;
          // the row's scale goes into its dY value once, not into each weight
          float tv[E];
          decode_word_values<D>(dec, cur[u].x, tv);
          decode_word_values<D>(dec, cur[u].y, tv + EPW);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            const float ds = mul_rn(dcur[u][m], s[u]);
#pragma unroll
            for (int e = 0; e < E; ++e) acc[m][e] = fmaf(ds, tv[e], acc[m][e]);
          }
        }
        row = next;
      }
    } else {
      for (int64_t row = r_beg + warp; row < r_end; row += gemv_warps) {
        float dyv[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) dyv[m] = m < mcount ? load_as_float(p.act, p.act_type, (m0 + m) * N + row) : 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          if (c0 + e < K) {
            const float w = decode_at<D>(dec, p.w, row * K + c0 + e, map, offset);
#pragma unroll
            for (int m = 0; m < MT; ++m) acc[m][e] = fmaf(dyv[m], w, acc[m][e]);
          }
        }
      }
    }
  }

  // Fixed tree over the 8 warps: 4..7 into 0..3, 2..3 into 0..1, 1 into 0.
#pragma unroll
  for (int half = gemv_warps / 2; half >= 1; half >>= 1) {
    if (warp >= half && warp < 2 * half) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int e = 0; e < E; ++e) red[(((warp - half) * MT + m) * E + e) * 32 + lane] = acc[m][e];
    }
    __syncthreads();
    if (warp < half) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int e = 0; e < E; ++e) acc[m][e] = add_rn(acc[m][e], red[((warp * MT + m) * E + e) * 32 + lane]);
    }
    __syncthreads();
  }
  if (warp == 0 && active) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= mcount) continue;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t k = c0 + e;
        if (k >= K) continue;
        if (p.splits == 1) store_from_float(p.out, p.out_type, (m0 + m) * K + k, acc[m][e]);
        else p.partial[(int64_t(blockIdx.y) * p.M + m0 + m) * K + k] = acc[m][e];
      }
    }
  }
}

template <decode_kind D>
inline int gemv_backward_smem_bytes(int mt) {
  return decode_smem_bytes(D) + 4 * mt * 2 * kind_elems_per_word(D) * 32 * 4;
}

// ---- launchers ---------------------------------------------------------------------
// Forward: p.act = x [M][K], p.out = y [M][N], p.bias optional.

// split_k: warps per row pair, the largest power of two up to 8 that still
// gives each of their threads at least one 16-byte vector (vector path) or
// element (per-element path) of a row.
inline int gemv_forward_warps_per_row_group(int64_t units_per_row) {
  int wg = gemv_warps;
  while (wg > 1 && int64_t(wg) * 32 > units_per_row) wg >>= 1;
  return wg;
}

template <decode_kind D>
inline int gemv_forward_smem_bytes(gemv_forward_layout layout, int mt) {
  return decode_smem_bytes(D) +
         (layout == gemv_forward_layout::split_k ? gemv_warps * gemv_fwd_rows_per_warp * mt * 4 : 0);
}

template <decode_kind D, int MT>
void launch_gemv_forward_mt(gemv_args p, gemv_forward_layout layout, const code_table& table, const code_table& map,
                            cudaStream_t stream) {
  const bool split = layout == gemv_forward_layout::split_k;
  static std::atomic<uint64_t> smem_set_rows{0}, smem_set_split{0};
  const int smem = gemv_forward_smem_bytes<D>(layout, MT);
  auto kernel = split ? gemv_forward_split_k_kernel<D, MT> : gemv_forward_kernel<D, MT>;
  allow_dynamic_smem(kernel, smem, split ? smem_set_split : smem_set_rows);
  if (split)
    p.warps_per_row_group =
        gemv_forward_warps_per_row_group(p.vec ? p.K / (4 * kind_elems_per_word(D)) : p.K);
  const int64_t rows_per_cta = int64_t(split ? gemv_warps / p.warps_per_row_group : gemv_warps) * gemv_fwd_rows_per_warp;
  const int64_t gx = (p.N + rows_per_cta - 1) / rows_per_cta;
  const int64_t groups = (p.M + MT - 1) / MT;
  for (int64_t g0 = 0; g0 < groups; g0 += 65535) {
    const int64_t gy = groups - g0 < 65535 ? groups - g0 : 65535;
    p.m_base = g0 * MT;
    LOWBIT_LAUNCH(kernel, dim3(unsigned(gx), unsigned(gy)), gemv_threads, size_t(smem), stream)(p, table, map);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
}

template <decode_kind D>
void launch_gemv_forward(const gemv_args& p, gemv_forward_layout layout, const code_table& table,
                         const code_table& map, cudaStream_t stream) {
  if (p.M == 1) launch_gemv_forward_mt<D, 1>(p, layout, table, map, stream);
  else if (p.M == 2) launch_gemv_forward_mt<D, 2>(p, layout, table, map, stream);
  else launch_gemv_forward_mt<D, 4>(p, layout, table, map, stream);
}

// Number of row splits of the backward (fp32 partials [splits][M][K] when
// more than 1) and, in *rows_per_split, the rows of W each split covers.
inline int gemv_backward_splits(bool four_bit, int64_t M, int64_t N, int64_t K, int mt, int64_t* rows_per_split) {
  const int64_t E = four_bit ? 16 : 8;
  const int64_t col_groups = (K + 32 * E - 1) / (32 * E);
  int64_t m_groups = (M + mt - 1) / mt;
  if (m_groups > 65535) m_groups = 65535;
  int splits = 1;
  *rows_per_split = split_length(N, gemv_warps, col_groups * m_groups, int64_t(sm_count()) * gemv_bwd_ctas_per_sm,
                                 4, &splits);
  return splits;
}

inline int gemv_mt_for(int64_t M) { return M == 1 ? 1 : (M == 2 ? 2 : 4); }

// Backward: p.act = dy [M][N], p.out = dx [M][K]; p.splits / p.rows_per_split
// from gemv_backward_splits, p.partial set when splits > 1 (then the caller
// runs finalize).
template <decode_kind D, int MT>
void launch_gemv_backward_mt(gemv_args p, const code_table& table, const code_table& map, cudaStream_t stream) {
  static std::atomic<uint64_t> smem_set{0};
  const int smem = gemv_backward_smem_bytes<D>(MT);
  auto kernel = gemv_backward_kernel<D, MT>;
  allow_dynamic_smem(kernel, smem, smem_set);
  constexpr int E = 2 * kind_elems_per_word(D);
  const int64_t gx = (p.K + 32 * E - 1) / (32 * E);
  const int64_t groups = (p.M + MT - 1) / MT;
  for (int64_t g0 = 0; g0 < groups; g0 += 65535) {
    const int64_t gz = groups - g0 < 65535 ? groups - g0 : 65535;
    p.m_base = g0 * MT;
    LOWBIT_LAUNCH(kernel, dim3(unsigned(gx), unsigned(p.splits), unsigned(gz)), gemv_threads, size_t(smem),
                  stream)(p, table, map);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
}

template <decode_kind D>
void launch_gemv_backward(const gemv_args& p, const code_table& table, const code_table& map, cudaStream_t stream) {
  const int mt = gemv_mt_for(p.M);
  if (mt == 1) launch_gemv_backward_mt<D, 1>(p, table, map, stream);
  else if (mt == 2) launch_gemv_backward_mt<D, 2>(p, table, map, stream);
  else launch_gemv_backward_mt<D, 4>(p, table, map, stream);
}

// ---- the regime, as dequant_gemm.cuh runs it ------------------------------------
// (Arguments already checked by the entry points; also what the CPU
// emulation test of these kernels calls.)

// The arguments both directions share (act: x or dy; out: y or dx).
inline gemv_args gemv_args_of(const void* act, dtype act_type, void* out, dtype out_type, const weight_args& w,
                              int64_t M, int64_t n, int64_t k) {
  gemv_args g;
  g.act = act;
  g.act_type = act_type;
  g.out = out;
  g.out_type = out_type;
  g.M = M;
  g.N = n;
  g.K = k;
  g.w = w;
  return g;
}

// Y[M][n] = X[M][k] W^T (+ bias): 16-byte loads where k and the pointers
// allow; `layout` divides W among warps (gemv_forward_layout, dispatch.hpp).
template <decode_kind D>
void gemv_forward(const void* x, dtype x_type, const weight_args& w, const void* bias, dtype bias_type, void* y,
                  dtype y_type, int64_t M, int64_t n, int64_t k, const code_table& table, const code_table& map,
                  cudaStream_t stream, gemv_forward_layout layout = gemv_forward_layout::rows_per_warp) {
  gemv_args g = gemv_args_of(x, x_type, y, y_type, w, M, n, k);
  g.bias = bias;
  g.bias_type = bias_type;
  g.vec = k % (4 * kind_elems_per_word(D)) == 0 && is_aligned(w.codes, 16) && is_aligned(x, 16);
  launch_gemv_forward<D>(g, layout, table, map, stream);
}

// dX[M][k] = dY[M][n] W over `splits` row ranges of `rows_per_split` rows
// (gemv_backward_splits); with splits > 1 the fp32 partials go to `partial`
// ([splits][M][k]) and the finalize kernel sums them in split order.
template <decode_kind D>
void gemv_backward(const void* dy, dtype dy_type, const weight_args& w, void* dx, dtype dx_type, int64_t M, int64_t n,
                   int64_t k, int splits, int64_t rows_per_split, float* partial, const code_table& table,
                   const code_table& map, cudaStream_t stream) {
  gemv_args g = gemv_args_of(dy, dy_type, dx, dx_type, w, M, n, k);
  g.partial = splits > 1 ? partial : nullptr;
  g.rows_per_split = rows_per_split;
  g.splits = splits;
  g.vec = k % (2 * kind_elems_per_word(D)) == 0 && is_aligned(w.codes, 8);
  launch_gemv_backward<D>(g, table, map, stream);
  if (splits > 1) finalize_partials(partial, splits, M, k, nullptr, dtype::f32, dx, dx_type, stream);
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace lowbit
