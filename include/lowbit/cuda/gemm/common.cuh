// lowbit/cuda/gemm/common.cuh
// What the three dequant-GEMM regimes share: the public options type (the
// regime names and the dispatch rule are in dispatch.hpp), argument validation (shapes, dtypes, memory spaces, with errors that
// name the argument like the CPU twin), the stream-ordered scratch buffer,
// the split-reduction finalize kernel (sums fp32 partials in a fixed order,
// adds the bias, rounds once into the output dtype), and the runtime-format
// to decode-kind dispatch.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../../core/view.hpp"
#include "../../formats/codebooks.hpp"
#include "../../formats/dynamic_map.hpp"
#include "../../formats/gemm_checks.hpp"
#include "../../formats/quantized_view.hpp"
#include "../check.cuh"
#include "../launch.cuh"
#include "decode.cuh"
#include "dispatch.hpp"

namespace lowbit {
namespace cuda {

struct gemm_options {
  gemm_regime regime = gemm_regime::automatic;
  gemm_policy policy{};
  // Scratch for split reductions and the dequant_cublas weight tiles. With
  // nullptr the call allocates it stream-ordered on the call's stream from
  // lowbit's per-device scratch pool, which keeps freed memory for the next
  // call (release_gemm_scratch() returns it to the system). A
  // caller-provided buffer too small for the call is an invalid_argument
  // error naming the size needed.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // dequant_cublas: at most this many bytes of dequantized W (plus fp32
  // staging) per cuBLAS call; larger W is processed in column panels.
  size_t max_tile_bytes = size_t(128) << 20;
  // dequant_cublas: the cuBLAS handle; nullptr uses lowbit's per-thread,
  // per-device handle (default_cublas_handle). Its stream is set for the
  // call and restored after.
  cublasHandle_t cublas_handle = nullptr;
};

namespace gemm_detail {

using gemm_checks::check_shape;
using gemm_checks::fn_arg;
inline void check_dense(const tensor_view& v, const char* fn, const char* name, int ndim) {
  gemm_checks::check_dense(v, fn, name, ndim, gemm_checks::side::device);
}
inline void check_weight(const quantized_view& w, const char* fn, int64_t n, int64_t k) {
  gemm_checks::check_weight(w, fn, n, k, gemm_checks::side::device);
}

inline void check_bias(const tensor_view* bias, const char* fn, int64_t n) {
  gemm_checks::check_bias(bias, fn, n, gemm_checks::side::device);
}
inline int64_t check_activations(const tensor_view& in, const char* in_name, int64_t in_cols, const tensor_view& out,
                                 const char* out_name, int64_t out_cols, const char* fn) {
  return gemm_checks::check_activations(in, in_name, in_cols, out, out_name, out_cols, fn, gemm_checks::side::device);
}

inline int log2_exact(int64_t v) {
  int s = 0;
  while ((int64_t(1) << s) < v) ++s;
  return s;
}

inline weight_args make_weight_args(const quantized_view& w, int64_t n, int64_t k) {
  weight_args a;
  a.codes = w.codes;
  a.absmax = w.layout.nested ? nullptr : w.absmax;
  a.absmax_codes = w.layout.nested ? w.absmax_codes : nullptr;
  a.nested_absmax = w.layout.nested ? w.nested_absmax : nullptr;
  a.nested_offset = w.layout.nested ? w.nested_offset : nullptr;
  a.rows = n;
  a.cols = k;
  a.bs_log2 = log2_exact(w.layout.block_size);
  a.nested = w.layout.nested;
  return a;
}

inline bool is_aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes)) == 0; }

inline code_table nested_map_table(bool nested) {
  code_table t{};
  if (nested) {
    const auto& m = signed_dynamic_map();
    for (int i = 0; i < 256; ++i) t.value[i] = m[size_t(i)];
  }
  return t;
}

// Calls fn(std::integral_constant-like tag) with the decode kind of `f`.
template <decode_kind D>
struct kind_tag {
  static constexpr decode_kind value = D;
};
template <class Fn>
void dispatch_kind(format f, Fn&& fn) {
  switch (decode_kind_of(f)) {
    case decode_kind::table4: fn(kind_tag<decode_kind::table4>{}); return;
    case decode_kind::int4_magic: fn(kind_tag<decode_kind::int4_magic>{}); return;
    case decode_kind::int8_magic: fn(kind_tag<decode_kind::int8_magic>{}); return;
    case decode_kind::table8: fn(kind_tag<decode_kind::table8>{}); return;
  }
}

// Raises a kernel's dynamic shared-memory limit once per device (needed
// above 48 KiB). `done` is a per-kernel bit set of device ordinals < 64.
template <class Kernel>
void allow_dynamic_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done) {
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return;
  LOWBIT_CUDA_CHECK(
      cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (bit) done.fetch_or(bit, std::memory_order_acq_rel);
}

// lowbit's stream-ordered pool for GEMM scratch, one per device. It is the
// device's default pool with one difference: freed memory is kept (release
// threshold at its maximum) instead of going back to the system at the next
// synchronization. With the default pool every call made after a
// synchronization mapped its dequant_cublas workspace again (about 0.15 ms
// for a 90 MB LLaMA-7B MLP panel on an H100, measured 2026-11-26: as much as
// the cuBLAS GEMM itself at M = 256). What it keeps is at most the largest
// scratch one call needed (gemm_options::max_tile_bytes plus staging);
// release_gemm_scratch() returns it to the system.
inline cudaMemPool_t gemm_scratch_pool(int dev) {
  static std::mutex mu;
  static std::vector<cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mu);
  if (int(pools.size()) <= dev) pools.resize(size_t(dev) + 1, nullptr);
  if (!pools[size_t(dev)]) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    cudaMemPool_t pool = nullptr;
    LOWBIT_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = ~uint64_t(0);
    LOWBIT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[size_t(dev)] = pool;
  }
  return pools[size_t(dev)];
}

// Stream-ordered scratch: the caller's buffer when it has one, else bytes
// from gemm_scratch_pool, freed (stream-ordered) when this goes out of scope.
class scratch {
 public:
  scratch(const gemm_options& opt, size_t bytes, cudaStream_t stream, const char* fn) : stream_(stream) {
    if (bytes == 0) return;
    if (opt.workspace) {
      require(opt.workspace_bytes >= bytes, errc::invalid_argument,
              std::string(fn) + ": workspace of " + std::to_string(opt.workspace_bytes) + " bytes is too small, need " +
                  std::to_string(bytes));
      require(is_aligned(opt.workspace, 256), errc::invalid_argument,
              std::string(fn) + ": workspace must be 256-byte aligned");
      ptr_ = opt.workspace;
    } else {
      int dev = 0;
      LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
      LOWBIT_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, gemm_scratch_pool(dev), stream));
      owned_ = true;
    }
  }
  ~scratch() {
    if (owned_ && ptr_) (void)cudaFreeAsync(ptr_, stream_);
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  template <class T>
  T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
  bool owned_ = false;
  cudaStream_t stream_;
};

inline size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// ---- split-reduction finalize ----------------------------------------------------
// out[m * out_ld + col0 + p] = T(sum_{s < splits} partial[(s * M + m) * P + p]
// (+ bias[col0 + p])), s in increasing order, for m < M, p < P. splits == 0
// writes the bias (or zeros): the product over an empty reduction.
struct finalize_args {
  const float* partial = nullptr;
  int splits = 0;
  int64_t M = 0, P = 0;
  const void* bias = nullptr;
  dtype bias_type = dtype::f32;
  void* out = nullptr;
  dtype out_type = dtype::f32;
  int64_t out_ld = 0, col0 = 0;
};

// (A template only so that the header can be included by several
// translation units of one program without duplicate kernel symbols.)
template <int Unused = 0>
__global__ void __launch_bounds__(256) finalize_kernel(finalize_args a) {
  const int64_t total = a.M * a.P;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t m = i / a.P, p = i - m * a.P;
    float s = 0.0f;
    for (int j = 0; j < a.splits; ++j) s = add_rn(s, a.partial[int64_t(j) * total + i]);
    if (a.bias) s = add_rn(s, load_as_float(a.bias, a.bias_type, a.col0 + p));
    store_from_float(a.out, a.out_type, m * a.out_ld + a.col0 + p, s);
  }
}

inline void launch_finalize(const finalize_args& a, cudaStream_t stream) {
  const int64_t total = a.M * a.P;
  if (total == 0) return;
  const int64_t want = (total + 255) / 256;
  const int64_t cap = int64_t(sm_count()) * 8;
  auto* kernel = &finalize_kernel<0>;
  LOWBIT_LAUNCH(kernel, dim3(unsigned(want < cap ? want : cap)), dim3(256), size_t(0), stream)(a);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// out[M][P] (row stride P) = the sum of `splits` fp32 partials [splits][M][P]
// in split order (+ bias), rounded once into out_type.
inline void finalize_partials(const float* partial, int splits, int64_t M, int64_t P, const void* bias,
                              dtype bias_type, void* out, dtype out_type, cudaStream_t stream) {
  finalize_args f;
  f.partial = partial;
  f.splits = splits;
  f.M = M;
  f.P = P;
  f.bias = bias;
  f.bias_type = bias_type;
  f.out = out;
  f.out_type = out_type;
  f.out_ld = P;
  launch_finalize(f, stream);
}

// Splits of a reduction of length R over `units` granules (multiples of
// `granule`) so that tiles * splits reaches about `target` CTAs, each split
// keeping at least min_granules granules. Returns the split length.
inline int64_t split_length(int64_t R, int64_t granule, int64_t tiles, int64_t target, int64_t min_granules,
                            int* splits_out) {
  const int64_t granules = (R + granule - 1) / granule;
  int64_t splits = 1;
  if (tiles < target && granules > min_granules) {
    splits = (target + tiles - 1) / tiles;
    const int64_t cap = granules / min_granules;
    if (splits > cap) splits = cap;
    if (splits < 1) splits = 1;
  }
  const int64_t per = ((granules + splits - 1) / splits) * granule;
  *splits_out = int(per > 0 ? (R + per - 1) / per : 1);
  if (*splits_out < 1) *splits_out = 1;
  return per > 0 ? per : granule;
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace lowbit
