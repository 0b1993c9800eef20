// lowbit/cuda/dequantize_rows.cuh
// CUDA twin of cpu/dequantize_rows.hpp: a row gather from a quantized matrix
// (an embedding lookup), out[i, :] = row rows_idx[i] of the row-major rows x
// cols matrix held by w, dequantized into float32 / bfloat16 / float16 on
// `stream`. One CTA decodes one output row at a time (grid-stride over
// rows), its threads striding over the columns with 64-bit element offsets,
// so rows may start mid-block and mid-byte. The element math is that of
// cuda::dequantize: the format's code table (make_code_table) in shared
// memory, value = mul_rn(table[code], scale) with the scale float32 or
// decoded by formats/nested_scales.hpp, rounded once by from_float, so the
// output is bit-identical to cpu::dequantize_rows and to the same elements of
// cpu::dequantize / cuda::dequantize. Indices live in device memory and are
// checked in the kernel: a row whose index is outside [0, rows) is written
// as NaN (nothing is read for it). With check = true (the default) the call
// then synchronizes the stream and throws lowbit::error(errc::invalid_argument)
// naming the first bad position and its index; with check = false it stays
// fully asynchronous and the NaN rows are the only report. The entry point
// is a template only so that including this header compiles no kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/dynamic_map.hpp"
#include "../formats/gemm_checks.hpp"
#include "../formats/nested_scales.hpp"
#include "../formats/quantized_view.hpp"
#include "check.cuh"
#include "launch.cuh"

namespace lowbit {
namespace cuda {

namespace rows_detail {

struct rows_args {
  const uint8_t* codes = nullptr;
  const float* absmax = nullptr;          // float32 scales (not nested)
  const uint8_t* absmax_codes = nullptr;  // nested: one code per block
  const float* nested_absmax = nullptr;   // nested: one float per 256 blocks
  const float* nested_offset = nullptr;   // nested: one float
  int64_t rows = 0, cols = 0, count = 0;
  int bs_log2 = 6;                        // log2(block size)
  const int32_t* rows_idx = nullptr;      // count indices
  void* out = nullptr;                    // [count, cols]
  unsigned long long* first_bad = nullptr;  // check: lowest bad position (else nullptr)
};

template <bool Four, class T>
__global__ void dequantize_rows_kernel(rows_args a, code_table table_param, code_table map_param) {
  constexpr int table_size = Four ? 16 : 256;
  __shared__ float table[table_size];
  __shared__ float map[256];
  for (int i = threadIdx.x; i < table_size; i += blockDim.x) table[i] = table_param.value[i];
  const bool nested = a.absmax_codes != nullptr;
  if (nested)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = map_param.value[i];
  __syncthreads();
  const float offset = nested ? *a.nested_offset : 0.0f;
  T* out = static_cast<T*>(a.out);
  for (int64_t r = blockIdx.x; r < a.count; r += gridDim.x) {
    const int32_t idx = a.rows_idx[r];
    T* y = out + r * a.cols;
    if (idx < 0 || int64_t(idx) >= a.rows) {
      for (int64_t j = threadIdx.x; j < a.cols; j += blockDim.x) y[j] = from_float<T>(bits_float(0x7FC00000u));
      if (a.first_bad && threadIdx.x == 0) atomicMin(a.first_bad, static_cast<unsigned long long>(r));
      continue;
    }
    const int64_t first = int64_t(idx) * a.cols;
    for (int64_t j = threadIdx.x; j < a.cols; j += blockDim.x) {
      const int64_t e = first + j;
      const int64_t b = e >> a.bs_log2;
      const float scale =
          nested ? decode_nested_scale(a.absmax_codes[b], a.nested_absmax[b / nested_block_size], offset, map)
                 : a.absmax[b];
      uint32_t c;
      if constexpr (Four) {
        const uint32_t byte = a.codes[e >> 1];  // element 2j in the high nibble
        c = (e & 1) ? (byte & 15u) : (byte >> 4);
      } else {
        c = a.codes[e];
      }
      y[j] = from_float<T>(mul_rn(table[c], scale));
    }
  }
}

// The CUDA path reads rows_idx in the kernel: refuse pageable host memory
// unless the device can access it (HMM / ATS systems).
inline void require_device_readable(const void* p, const std::string& what) {
  cudaPointerAttributes attr{};
  LOWBIT_CUDA_CHECK(cudaPointerGetAttributes(&attr, p));
  if (attr.type != cudaMemoryTypeUnregistered) return;  // device, managed or pinned host memory
  int dev = 0, pageable = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev));
  require(pageable != 0, errc::invalid_argument,
          what + " is pageable host memory; the CUDA path needs device, managed or pinned memory");
}

}  // namespace rows_detail

// out[i, :] = row rows_idx[i] of w, dequantized, for i in [0, count), on
// `stream`. w: quantized_view of a row-major rows x cols matrix (w.layout.n
// == rows * cols), any format, float32 or nested scales, device or managed
// memory. rows_idx: count int32 indices in device-readable memory, repeats
// allowed. out: contiguous [count, cols] float32 / bfloat16 / float16 view in
// device or managed memory, not overlapping w. Out-of-range indices: see the
// top of this file (NaN rows; with check, a stream sync and an error).
template <int Unused = 0>
inline void dequantize_rows(const quantized_view& w, int64_t rows, int64_t cols, const int32_t* rows_idx,
                            int64_t count, const tensor_view& out, cudaStream_t stream = nullptr, bool check = true) {
  const char* fn = "cuda::dequantize_rows";
  gemm_checks::check_row_gather(w, fn, rows, cols, rows_idx, count, out, gemm_checks::side::device);
  if (count == 0) return;
  rows_detail::require_device_readable(rows_idx, gemm_checks::fn_arg(fn, "rows_idx"));

  rows_detail::rows_args a;
  a.codes = w.codes;
  a.absmax = w.layout.nested ? nullptr : w.absmax;
  a.absmax_codes = w.layout.nested ? w.absmax_codes : nullptr;
  a.nested_absmax = w.layout.nested ? w.nested_absmax : nullptr;
  a.nested_offset = w.layout.nested ? w.nested_offset : nullptr;
  a.rows = rows;
  a.cols = cols;
  a.count = count;
  a.bs_log2 = 0;
  while ((1 << a.bs_log2) < w.layout.block_size) ++a.bs_log2;  // block_size is a power of two (validated)
  a.rows_idx = rows_idx;
  a.out = out.data;
  if (check) {
    LOWBIT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&a.first_bad), sizeof(unsigned long long), stream));
    LOWBIT_CUDA_CHECK(cudaMemsetAsync(a.first_bad, 0xFF, sizeof(unsigned long long), stream));
  }

  const code_table table = make_code_table(w.layout.fmt);
  code_table map{};
  if (w.layout.nested)
    for (int i = 0; i < 256; ++i) map.value[i] = signed_dynamic_map()[size_t(i)];
  // one CTA per row at a time: up to 256 threads, fewer for short rows
  const int64_t warps = (cols + 31) / 32;
  const int threads = warps >= 8 ? 256 : (warps < 1 ? 32 : int(warps) * 32);
  const int64_t cap = int64_t(sm_count()) * (2048 / threads);
  const int grid = int(count < cap ? count : cap);
  const bool four = is_4bit(w.layout.fmt);
  dispatch_float_dtype(out.type, "cuda::dequantize_rows: out", [&](auto t) {
    using T = decltype(t);
    auto* kernel = four ? &rows_detail::dequantize_rows_kernel<true, T> : &rows_detail::dequantize_rows_kernel<false, T>;
    LOWBIT_LAUNCH(kernel, grid, threads, 0, stream)(a, table, map);
  });
  const cudaError_t launched = cudaGetLastError();
  if (launched != cudaSuccess && check) (void)cudaFreeAsync(a.first_bad, stream);
  LOWBIT_CUDA_CHECK(launched);
  if (!check) return;

  unsigned long long bad = 0;
  LOWBIT_CUDA_CHECK(cudaMemcpyAsync(&bad, a.first_bad, sizeof(bad), cudaMemcpyDeviceToHost, stream));
  LOWBIT_CUDA_CHECK(cudaFreeAsync(a.first_bad, stream));
  LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (bad == ~0ull) return;
  int32_t value = 0;
  LOWBIT_CUDA_CHECK(cudaMemcpyAsync(&value, rows_idx + bad, sizeof(value), cudaMemcpyDefault, stream));
  LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  throw error(errc::invalid_argument, std::string(fn) + ": rows_idx[" + std::to_string(bad) + "] = " +
                                          std::to_string(value) + " is out of range [0, " + std::to_string(rows) +
                                          ") (its output row was written as NaN)");
}

}  // namespace cuda
}  // namespace lowbit
