// lowbit/cuda/quantize.cuh
// CUDA quantize / dequantize (whole tensors, or dequantize_range: any range
// of elements) for every format, scale kind and float dtype.
// Each thread owns 8 consecutive elements (16- or 32-byte vector loads when
// pointers are aligned), the threads of one quantization block reduce its
// absmax with warp shuffles (and shared memory for blocks > 256 elements),
// and grid-stride loops cover any n with 64-bit indices. The element math is
// the shared host/device code of formats/, so codes and scales are
// bit-identical to cpu/quantize.hpp. Double quantization adds two small
// kernels: the deterministic mean (same lane/tree order as the host) and the
// nested 256-scale blocks.
//
// Non-finite input: with check_finite (the default) quantize synchronizes the
// stream and throws lowbit::error(errc::non_finite); without it the call is
// fully asynchronous and a non-finite block's absmax is NaN, so its decoded
// values are NaN (never silently finite garbage).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/block_codec.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/nested_scales.hpp"
#include "../formats/quantized_view.hpp"
#include "check.cuh"
#include "launch.cuh"

namespace lowbit {
namespace cuda {

namespace detail {

constexpr int elems_per_thread = 8;

// ---- 8-element vector load / store -----------------------------------------
template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 a = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = to_float(T{uint16_t(w[i] & 0xFFFFu)});
      v[2 * i + 1] = to_float(T{uint16_t(w[i] >> 16)});
    }
  }
}

template <class T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      w[i] = uint32_t(from_float<T>(v[2 * i]).bits) | (uint32_t(from_float<T>(v[2 * i + 1]).bits) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// ---- quantize ------------------------------------------------------------------
// threads_per_qblock = block_size / 8 consecutive threads share one block.
template <format F, class T, bool Vec>
__global__ void quantize_kernel(const T* __restrict__ x, int64_t n, int block_size, uint8_t* __restrict__ codes,
                                float* __restrict__ absmax, int* __restrict__ nonfinite_flag, code_table dyn_param) {
  __shared__ float dyn[256];
  __shared__ float warp_max[32];
  if (uses_dynamic_table(F)) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) dyn[i] = dyn_param.value[i];
    __syncthreads();
  }
  const int tpq = block_size / elems_per_thread;  // threads per quantization block
  const int64_t tile = int64_t(blockDim.x) * elems_per_thread;
  for (int64_t base = int64_t(blockIdx.x) * tile; base < n; base += int64_t(gridDim.x) * tile) {
    const int64_t idx = base + int64_t(threadIdx.x) * elems_per_thread;
    float v[8];
    const bool full = idx + elems_per_thread <= n;
    if (Vec && full) {
      load8(x + idx, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = idx + i < n ? to_float(x[idx + i]) : 0.0f;
    }
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) m = absmax_step(m, v[i]);
    // reduce over the tpq threads of this quantization block
    const int width = tpq < 32 ? tpq : 32;
    for (int off = width / 2; off >= 1; off /= 2) m = absmax_combine(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
    if (tpq > 32) {
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      if (lane == 0) warp_max[warp] = m;
      __syncthreads();
      const int warps_per_q = tpq / 32, first = (warp / warps_per_q) * warps_per_q;
      m = warp_max[first];
      for (int w = 1; w < warps_per_q; ++w) m = absmax_combine(m, warp_max[first + w]);
      __syncthreads();
    }
    if (idx < n && (threadIdx.x % tpq) == 0) {
      absmax[idx / block_size] = m;
      if (nonfinite_flag && !is_finite_scale(m)) atomicOr(nonfinite_flag, 1);
    }
    if (idx >= n) continue;
    const float inv = inverse_scale(m);
    uint8_t c[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) c[i] = encode_normalized<F>(mul_rn(v[i], inv), dyn);
    if constexpr (is_4bit(F)) {
      if (full) {
        uint32_t w = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) w |= uint32_t((c[2 * j] << 4) | c[2 * j + 1]) << (8 * j);
        if (Vec) *reinterpret_cast<uint32_t*>(codes + idx / 2) = w;
        else
          for (int j = 0; j < 4; ++j) codes[idx / 2 + j] = uint8_t(w >> (8 * j));
      } else {
        for (int j = 0; 2 * j < 8 && idx + 2 * j < n; ++j) {
          const uint8_t lo = idx + 2 * j + 1 < n ? c[2 * j + 1] : zero_code(F);
          codes[idx / 2 + j] = uint8_t((c[2 * j] << 4) | lo);
        }
      }
    } else {
      if (Vec && full) {
        uint2 w;
        w.x = uint32_t(c[0]) | (uint32_t(c[1]) << 8) | (uint32_t(c[2]) << 16) | (uint32_t(c[3]) << 24);
        w.y = uint32_t(c[4]) | (uint32_t(c[5]) << 8) | (uint32_t(c[6]) << 16) | (uint32_t(c[7]) << 24);
        *reinterpret_cast<uint2*>(codes + idx) = w;
      } else {
        for (int i = 0; i < 8 && idx + i < n; ++i) codes[idx + i] = c[i];
      }
    }
  }
}

// Deterministic mean of the block absmax: the lane / tree order of
// formats/nested_scales.hpp (launch with exactly mean_lanes threads, 1 block).
// only_if: when non-null and *only_if == 0, the kernel does nothing (the
// optimizer step's stable scales re-quantize on demand without a host sync).
// (Kernels that are not templates otherwise are templates with an unused
// parameter, so that two translation units of one program can include this
// header without duplicate definitions: a header-only library's kernels must
// be inline-like, and templates are.)
template <int Unused = 0>
__global__ void nested_mean_kernel(const float* __restrict__ absmax, int64_t nb, float* __restrict__ offset,
                                   const int* only_if = nullptr) {
  if (only_if && *only_if == 0) return;
  __shared__ double lane[mean_lanes];
  lane[threadIdx.x] = mean_lane_sum(absmax, nb, int(threadIdx.x));
  __syncthreads();
  for (int stride = mean_lanes / 2; stride >= 1; stride /= 2) {
    if (int(threadIdx.x) < stride) lane[threadIdx.x] += lane[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *offset = nb ? float(lane[0] / double(nb)) : 0.0f;
}

// One CUDA block of nested_block_size threads per nested block of scales.
template <int Unused = 0>
__global__ void nested_encode_kernel(const float* __restrict__ absmax, int64_t nb, const float* __restrict__ offset_p,
                                     uint8_t* __restrict__ absmax_codes, float* __restrict__ nested_absmax,
                                     code_table map_param, const int* only_if = nullptr) {
  if (only_if && *only_if == 0) return;  // as in nested_mean_kernel
  __shared__ float map[256];
  __shared__ float warp_max[nested_block_size / 32];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = map_param.value[i];
  __syncthreads();
  const float offset = *offset_p;
  const int64_t n_chunks = (nb + nested_block_size - 1) / nested_block_size;
  for (int64_t chunk = blockIdx.x; chunk < n_chunks; chunk += gridDim.x) {
    const int64_t i = chunk * nested_block_size + threadIdx.x;
    const float v = i < nb ? nested_centered(absmax[i], offset) : 0.0f;
    float m = absmax_step(0.0f, v);
    for (int off = 16; off >= 1; off /= 2) m = absmax_combine(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
    __syncthreads();
    m = warp_max[0];
    for (int w = 1; w < nested_block_size / 32; ++w) m = absmax_combine(m, warp_max[w]);
    __syncthreads();
    if (threadIdx.x == 0) nested_absmax[chunk] = m;
    if (i < nb) absmax_codes[i] = dynamic_encode(mul_rn(v, inverse_scale(m)), map);
  }
}

// ---- dequantize ----------------------------------------------------------------
// y[i] = element first + i of the tensor, i < n. Vec: first is a multiple
// of 8 and codes / y are aligned for the wide accesses (a group of 8 then
// never straddles a block: blocks are powers of two >= 32); without Vec any
// first works (a per-element path where first is not a multiple of 8).
template <format F, class T, bool Vec>
__global__ void dequantize_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                  const uint8_t* __restrict__ absmax_codes, const float* __restrict__ nested_absmax,
                                  const float* __restrict__ nested_offset, int64_t first, int64_t n, int block_size,
                                  T* __restrict__ y, code_table table_param, code_table map_param) {
  constexpr int table_size = is_4bit(F) ? 16 : 256;
  __shared__ float table[table_size];
  __shared__ float map[256];
  for (int i = threadIdx.x; i < table_size; i += blockDim.x) table[i] = table_param.value[i];
  const bool nested = absmax_codes != nullptr;
  if (nested)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = map_param.value[i];
  __syncthreads();
  const float offset = nested ? *nested_offset : 0.0f;
  auto scale_of = [&](int64_t b) {
    return nested ? decode_nested_scale(absmax_codes[b], nested_absmax[b / nested_block_size], offset, map) : absmax[b];
  };
  const int64_t groups = (n + elems_per_thread - 1) / elems_per_thread;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t idx = g * elems_per_thread;  // output position
    const int64_t e0 = first + idx;            // tensor element
    if (!Vec && (first & (elems_per_thread - 1)) != 0) {
      // a range starting off a group boundary: scale and code per element
      for (int i = 0; i < elems_per_thread && idx + i < n; ++i) {
        const int64_t e = e0 + i;
        const uint32_t c = is_4bit(F) ? ((e & 1) ? (codes[e >> 1] & 15u) : (codes[e >> 1] >> 4)) : codes[e];
        y[idx + i] = from_float<T>(mul_rn(table[c], scale_of(e / block_size)));
      }
      continue;
    }
    const float scale = scale_of(e0 / block_size);
    const bool full = idx + elems_per_thread <= n;
    uint8_t c[8];
    if constexpr (is_4bit(F)) {
      uint32_t w = 0;
      if (Vec && full) {
        w = *reinterpret_cast<const uint32_t*>(codes + e0 / 2);
      } else {
        for (int j = 0; j < 4 && idx + 2 * j < n; ++j) w |= uint32_t(codes[e0 / 2 + j]) << (8 * j);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        c[2 * j] = uint8_t((w >> (8 * j + 4)) & 15u);
        c[2 * j + 1] = uint8_t((w >> (8 * j)) & 15u);
      }
    } else {
      if (Vec && full) {
        const uint2 w = *reinterpret_cast<const uint2*>(codes + e0);
#pragma unroll
        for (int j = 0; j < 4; ++j) c[j] = uint8_t(w.x >> (8 * j)), c[4 + j] = uint8_t(w.y >> (8 * j));
      } else {
        for (int i = 0; i < 8; ++i) c[i] = idx + i < n ? codes[e0 + i] : uint8_t(0);
      }
    }
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = mul_rn(table[c[i]], scale);
    if (Vec && full) {
      store8(y + idx, v);
    } else {
      for (int i = 0; i < 8 && idx + i < n; ++i) y[idx + i] = from_float<T>(v[i]);
    }
  }
}

inline bool aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes)) == 0; }

inline void check_device_pair(const tensor_view& dense, const quantized_view& q, const char* dense_name) {
  require_contiguous(dense, dense_name);
  q.validate("quantized tensor");
  require(dense.dev.device_accessible(), errc::invalid_argument,
          std::string(dense_name) + " is in host memory; the CUDA path needs device or managed memory");
  require(q.dev.device_accessible(), errc::invalid_argument,
          "quantized tensor is in host memory; the CUDA path needs device or managed memory");
  require(dense.numel() == q.layout.n, errc::invalid_argument,
          std::string(dense_name) + " has " + std::to_string(dense.numel()) +
              " elements but the quantized layout has " + std::to_string(q.layout.n));
}

inline int grid_for(int64_t work_items, int threads) {
  const int64_t want = (work_items + threads - 1) / threads;
  const int64_t cap = int64_t(sm_count()) * 16;
  return int(want < 1 ? 1 : (want < cap ? want : cap));
}

inline code_table table_or_zero(const float* p) {
  code_table t{};
  if (p)
    for (int i = 0; i < 256; ++i) t.value[i] = p[i];
  return t;
}

}  // namespace detail

// Quantizes `input` (float32 / bfloat16 / float16, contiguous, device or
// managed memory) into `out` (device or managed memory) on `stream`.
inline void quantize(const tensor_view& input, const quantized_view& out, cudaStream_t stream = nullptr,
                     bool check_finite = true) {
  detail::check_device_pair(input, out, "quantize input");
  const blockwise_layout& l = out.layout;
  if (l.n == 0) {
    if (l.nested) LOWBIT_CUDA_CHECK(cudaMemsetAsync(out.nested_offset, 0, sizeof(float), stream));
    return;
  }
  // scratch: the non-finite flag, and float32 absmax when scales are nested
  const int64_t nb = l.n_blocks();
  const size_t scratch_bytes = 16 + (l.nested ? size_t(nb) * sizeof(float) : 0);
  void* scratch = nullptr;
  LOWBIT_CUDA_CHECK(cudaMallocAsync(&scratch, scratch_bytes, stream));
  int* flag = check_finite ? static_cast<int*>(scratch) : nullptr;
  float* absmax = l.nested ? reinterpret_cast<float*>(static_cast<char*>(scratch) + 16) : out.absmax;
  if (flag) LOWBIT_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream));

  const int threads = l.block_size / detail::elems_per_thread > 256 ? l.block_size / detail::elems_per_thread : 256;
  const code_table dyn = detail::table_or_zero(dynamic_table(l.fmt));
  dispatch_float_dtype(input.type, "quantize input", [&](auto t) {
    using T = decltype(t);
    const T* x = static_cast<const T*>(input.data);
    const bool vec = detail::aligned(x, 16) && detail::aligned(out.codes, 8);
    const int grid = detail::grid_for((l.n + detail::elems_per_thread - 1) / detail::elems_per_thread, threads);
    dispatch_format(l.fmt, [&](auto tag) {
      constexpr format F = decltype(tag)::value;
      auto* kernel = vec ? &detail::quantize_kernel<F, T, true> : &detail::quantize_kernel<F, T, false>;
      LOWBIT_LAUNCH(kernel, grid, threads, 0, stream)(x, l.n, l.block_size, out.codes, absmax, flag, dyn);
    });
  });
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  if (l.nested) {
    LOWBIT_LAUNCH(detail::nested_mean_kernel<0>, 1, mean_lanes, 0, stream)(absmax, nb, out.nested_offset, nullptr);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
    const int64_t chunks = l.n_nested_blocks();
    const int grid = int(chunks < int64_t(sm_count()) * 16 ? chunks : int64_t(sm_count()) * 16);
    LOWBIT_LAUNCH(detail::nested_encode_kernel<0>, grid, nested_block_size, 0, stream)(
        absmax, nb, out.nested_offset, out.absmax_codes, out.nested_absmax,
        detail::table_or_zero(signed_dynamic_map().data()), nullptr);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
  int flagged = 0;
  if (flag) LOWBIT_CUDA_CHECK(cudaMemcpyAsync(&flagged, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
  LOWBIT_CUDA_CHECK(cudaFreeAsync(scratch, stream));
  if (flag) {
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
    require(!flagged, errc::non_finite, "quantize: input contains NaN or infinity (CUDA path)");
  }
}

// Dequantizes elements [first, first + count) of `in` (device or managed
// memory) into `output` (count elements of float32 / bfloat16 / float16,
// contiguous, device or managed memory) on `stream`, bit-identical to the
// same elements of dequantize's output: the CUDA twin of
// cpu::dequantize_range. A range may start anywhere (mid-block, mid-byte);
// one starting at a multiple of 8 elements takes the wide loads and stores.
// The dequant-GEMM decodes row panels of W through it.
inline void dequantize_range(const quantized_view& in, int64_t first, int64_t count, const tensor_view& output,
                             cudaStream_t stream = nullptr) {
  in.validate("dequantize_range: quantized tensor");
  require_contiguous(output, "dequantize_range output");
  require(output.dev.device_accessible(), errc::invalid_argument,
          "dequantize_range: output is in host memory; the CUDA path needs device or managed memory");
  require(in.dev.device_accessible(), errc::invalid_argument,
          "dequantize_range: quantized tensor is in host memory; the CUDA path needs device or managed memory");
  const blockwise_layout& l = in.layout;
  require(first >= 0 && count >= 0 && first <= l.n - count, errc::invalid_argument,
          "dequantize_range: range [" + std::to_string(first) + ", " + std::to_string(first + count) +
              ") is outside the tensor's " + std::to_string(l.n) + " elements");
  require(output.numel() == count, errc::invalid_argument,
          "dequantize_range: output has " + std::to_string(output.numel()) + " elements for a range of " +
              std::to_string(count));
  if (count == 0) return;
  const code_table table = make_code_table(l.fmt);
  const code_table map = l.nested ? detail::table_or_zero(signed_dynamic_map().data()) : code_table{};
  const int threads = 256;
  const int grid = detail::grid_for((count + detail::elems_per_thread - 1) / detail::elems_per_thread, threads);
  dispatch_float_dtype(output.type, "dequantize output", [&](auto t) {
    using T = decltype(t);
    T* y = static_cast<T*>(output.data);
    const uint8_t* group_codes = in.codes + (is_4bit(l.fmt) ? first / 2 : first);
    const bool vec = first % detail::elems_per_thread == 0 && detail::aligned(y, 16) &&
                     detail::aligned(group_codes, is_4bit(l.fmt) ? 4 : 8);
    dispatch_format(l.fmt, [&](auto tag) {
      constexpr format F = decltype(tag)::value;
      const float* absmax = l.nested ? nullptr : in.absmax;
      const uint8_t* acodes = l.nested ? in.absmax_codes : nullptr;
      auto* kernel = vec ? &detail::dequantize_kernel<F, T, true> : &detail::dequantize_kernel<F, T, false>;
      LOWBIT_LAUNCH(kernel, grid, threads, 0, stream)(in.codes, absmax, acodes, in.nested_absmax, in.nested_offset,
                                                      first, count, l.block_size, y, table, map);
    });
  });
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// Dequantizes `in` (device or managed memory) into `output` (float32 /
// bfloat16 / float16, contiguous, device or managed memory) on `stream`.
inline void dequantize(const quantized_view& in, const tensor_view& output, cudaStream_t stream = nullptr) {
  detail::check_device_pair(output, in, "dequantize output");
  dequantize_range(in, 0, in.layout.n, output, stream);
}

}  // namespace cuda
}  // namespace lowbit
