// lowbit/cuda/gemm/dequant_cublas.cuh
// The cuBLAS side of the CUDA dequant-GEMM: lowbit's per-thread cuBLAS
// handles, the tile dequantization kernel, the dequantize-then-cuBLAS
// regime, and the plain weight-gradient GEMM.
//
// dequant_cublas regime: W is decoded panel by panel into a workspace in the
// activation dtype (bf16 / fp16 / fp32; values bit-identical to
// cuda::dequantize into that dtype), and each panel goes through
// cublasGemmEx with fp32 accumulation (CUBLAS_COMPUTE_32F; for float32
// operands CUBLAS_COMPUTE_32F_PEDANTIC, so no TF32). The forward cuts W into
// row panels (disjoint output columns of Y), the backward into column panels
// (disjoint output columns of dX), so every output element gets its whole
// reduction from one cuBLAS call and is rounded once. A bias, or an output
// dtype other than the activations' or float32, goes through an fp32
// staging panel and finalize_kernel (bias added in fp32, one rounding);
// cuBLAS writes a float32 output itself. All of W, or a
// forward row panel (a contiguous range of W's elements), is decoded by
// cuda::dequantize_range (quantize.cuh) rather than the tile kernel below:
// on the H100 (2026-11-26) the regime with the tile kernel cost about 270 us
// more than cuBLAS bf16 alone on 11008x4096 at every M, while
// cuda::dequantize decodes at 78 to 86 % of copy bandwidth into bf16 (about
// 50 us for that matrix). The tile kernel remains for the backward's column
// panels (W over the budget); both write the same values (the GPU test
// checks every regime against cuda::dequantize).
//
// Linking: code that calls these functions links cuBLAS (CMake:
// CUDA::cublas). Including the header alone does not reference cuBLAS.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../../core/view.hpp"
#include "../check.cuh"
#include "../launch.cuh"
#include "../quantize.cuh"
#include "common.cuh"
#include "decode.cuh"

namespace lowbit {
namespace cuda {

inline void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw error(errc::cuda, std::string(what) + " failed: cuBLAS status " + std::to_string(int(s)) + " (" +
                                cublasGetStatusString(s) + ") (" + file + ":" + std::to_string(line) + ")");
}

#define LOWBIT_CUBLAS_CHECK(expr) ::lowbit::cuda::cublas_check((expr), #expr, __FILE__, __LINE__)

// lowbit's cuBLAS handle for the calling thread and current device, created
// on first use. Handles are never destroyed (destroying them during process
// teardown races the CUDA runtime's own teardown); a thread that ends leaves
// its handles behind, so short-lived threads should pass their own handle.
inline cublasHandle_t default_cublas_handle() {
  constexpr int max_devices = 64;
  thread_local cublasHandle_t handles[max_devices] = {};
  int dev = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  require(dev >= 0 && dev < max_devices, errc::unsupported,
          "default_cublas_handle: device ordinal " + std::to_string(dev) + " >= 64; pass a cublasHandle_t");
  if (!handles[dev]) LOWBIT_CUBLAS_CHECK(cublasCreate(&handles[dev]));
  return handles[dev];
}

namespace gemm_detail {

// Sets a handle's stream for one call and restores the previous stream.
class cublas_stream_scope {
 public:
  cublas_stream_scope(cublasHandle_t h, cudaStream_t s) : h_(h) {
    LOWBIT_CUBLAS_CHECK(cublasGetStream(h_, &old_));
    LOWBIT_CUBLAS_CHECK(cublasSetStream(h_, s));
  }
  ~cublas_stream_scope() { (void)cublasSetStream(h_, old_); }
  cublas_stream_scope(const cublas_stream_scope&) = delete;
  cublas_stream_scope& operator=(const cublas_stream_scope&) = delete;

 private:
  cublasHandle_t h_;
  cudaStream_t old_ = nullptr;
};

inline cudaDataType_t cuda_type(dtype t) {
  switch (t) {
    case dtype::bf16: return CUDA_R_16BF;
    case dtype::f16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

inline cublasComputeType_t compute_type(dtype operands) {
  return operands == dtype::f32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
}

inline void require_int_dims(const char* fn, int64_t a, int64_t b, int64_t c) {
  require(a <= INT_MAX && b <= INT_MAX && c <= INT_MAX, errc::unsupported,
          std::string(fn) + ": the cuBLAS path takes dimensions below 2^31, got " + std::to_string(a) + ", " +
              std::to_string(b) + ", " + std::to_string(c));
}

// out[r][c] (row stride cols) = W[r0 + r][c0 + c] decoded, for r < rows,
// c < cols; each thread writes 8 consecutive elements of a row. Rows go
// over gridDim.y and column groups over gridDim.x (grid-stride both ways:
// no 64-bit division per group). `wide`: c0, cols and W's row length are
// multiples of 8 and the codes are aligned for one 32-bit (4-bit) or 64-bit
// (8-bit) load, so a thread's 8 codes are one aligned word (or two) in one
// quantization block (blocks are powers of two >= 32): one load, one scale,
// decode_word; otherwise every element is decoded on its own.
template <decode_kind D, class T>
__global__ void __launch_bounds__(256)
    dequant_tile_kernel(const weight_args w, int64_t r0, int64_t rows, int64_t c0, int64_t cols, T* out, bool wide,
                        const __grid_constant__ code_table table, const __grid_constant__ code_table map_src) {
  LOWBIT_DYNAMIC_SHARED(smem);
  float* map = nullptr;
  const decoder dec = setup_decoder<D>(smem, table.value, map_src.value, w.nested, &map);
  __syncthreads();
  const float offset = w.nested ? *w.nested_offset : 0.0f;
  const int64_t groups_per_row = (cols + 7) / 8;
  const bool vec_store = (cols % 8) == 0;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t cg = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; cg < groups_per_row;
         cg += int64_t(gridDim.x) * blockDim.x) {
      const int64_t c = cg * 8;
      const int64_t i0 = (r0 + r) * w.cols + c0 + c;
      const int n = cols - c < 8 ? int(cols - c) : 8;
      float v[8];
      if (wide) {  // n == 8 here: cols is a multiple of 8
        const float sc = finish_scale(w, fetch_scale(w, i0 >> w.bs_log2), map, offset);
        if constexpr (kind_is_4bit(D)) {
          decode_word<D>(dec, *reinterpret_cast<const uint32_t*>(w.codes + (i0 >> 1)), sc, v);
        } else {
          const uint2 cw = *reinterpret_cast<const uint2*>(w.codes + i0);
          decode_word<D>(dec, cw.x, sc, v);
          decode_word<D>(dec, cw.y, sc, v + 4);
        }
      } else {
        int64_t cur_b = -1;
        float sc = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          v[e] = 0.0f;
          if (e < n) {
            const int64_t i = i0 + e;
            const int64_t b = i >> w.bs_log2;
            if (b != cur_b) {
              sc = finish_scale(w, fetch_scale(w, b), map, offset);
              cur_b = b;
            }
            v[e] = mul_rn(code_value<D>(dec, code_at<D>(w, i)), sc);
          }
        }
      }
      T* dst = out + r * cols + c;
      if (vec_store && n == 8) {
        detail::store8(dst, v);  // cuda::dequantize's wide store (quantize.cuh)
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          if (e < n) dst[e] = from_float<T>(v[e]);
      }
    }
  }
}

template <decode_kind D, class T>
void launch_dequant_tile(const weight_args& w, int64_t r0, int64_t rows, int64_t c0, int64_t cols, T* out,
                         const code_table& table, const code_table& map, cudaStream_t stream) {
  static std::atomic<uint64_t> smem_set{0};
  const int smem = decode_smem_bytes(D);
  auto kernel = dequant_tile_kernel<D, T>;
  allow_dynamic_smem(kernel, smem, smem_set);
  const int64_t groups_per_row = (cols + 7) / 8;
  if (rows == 0 || groups_per_row == 0) return;
  const bool wide = c0 % 8 == 0 && cols % 8 == 0 && w.cols % 8 == 0 &&
                    is_aligned(w.codes, kind_is_4bit(D) ? 4 : 8) && is_aligned(out, 16);
  // about 8 CTAs per SM in all, spread over the row's groups first
  const int64_t cap = int64_t(sm_count()) * 8;
  int64_t gx = (groups_per_row + 255) / 256;
  if (gx > cap) gx = cap;
  int64_t gy = cap / gx;
  if (gy < 1) gy = 1;
  if (gy > rows) gy = rows;
  if (gy > 65535) gy = 65535;
  LOWBIT_LAUNCH(kernel, dim3(unsigned(gx), unsigned(gy)), dim3(256), size_t(smem), stream)(w, r0, rows, c0, cols, out,
                                                                                          wide, table, map);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// W decoded into `tile` ([rows][cols] of the panel): whole rows (all of W,
// or the forward's row panels, a contiguous range of its elements) through
// cuda::dequantize_range, column panels through the tile kernel.
template <decode_kind D, class T>
void dequantize_panel(const weight_args& w, const quantized_view& whole, int64_t r0, int64_t rows, int64_t c0,
                      int64_t cols, T* tile, const code_table& table, const code_table& map, cudaStream_t stream) {
  if (c0 == 0 && cols == w.cols) {
    int dev = 0;
    LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
    dequantize_range(whole, r0 * cols, rows * cols, make_flat_view(tile, rows * cols, device::cuda(dev)), stream);
    return;
  }
  launch_dequant_tile<D, T>(w, r0, rows, c0, cols, tile, table, map, stream);
}

// Whether a dequant_cublas call writes through the fp32 staging panel: with
// a bias (added by the finalize kernel), or an output type cuBLAS cannot
// write from these operands. cuBLAS writes float32 from bfloat16 or float16
// operands itself (CUBLAS_COMPUTE_32F), so a float32 output of 16-bit
// activations goes straight into Y / dX: staging it would double the
// output's memory (the LLaMA head's float32 logits chunk: 64 MiB more).
inline bool needs_staging(bool has_bias, dtype activations, dtype output) {
  return has_bias || (output != activations && output != dtype::f32);
}

// Panels of the dequant_cublas regime: `units` rows of W per panel
// (forward) or columns (backward), as many as fit `budget` bytes of
// dequantized weights plus fp32 staging, at least min(total, 64).
struct panel_plan {
  int64_t units = 0;
  size_t tile_bytes = 0;   // dequantized panel, rounded up to 256
  size_t stage_bytes = 0;  // fp32 [M][units] staging (bias or dtype change)
  size_t bytes() const { return tile_bytes + stage_bytes; }
};

inline panel_plan plan_panels(bool backward, int64_t M, int64_t N, int64_t K, size_t elem, bool staging,
                              size_t budget) {
  const int64_t total = backward ? K : N;
  const int64_t reduction = backward ? N : K;
  const size_t per_unit = size_t(reduction) * elem + (staging ? size_t(M) * 4 : 0);
  int64_t u = per_unit ? int64_t(budget / per_unit) : total;
  const int64_t floor_units = total < 64 ? total : 64;
  if (u < floor_units) u = floor_units;
  if (u > total) u = total;
  if (u > 64 && u < total) u = u / 64 * 64;
  panel_plan p;
  p.units = u;
  p.tile_bytes = round_up(size_t(u) * size_t(reduction) * elem, 256);
  p.stage_bytes = staging ? size_t(M) * size_t(u) * 4 : 0;
  return p;
}

// A staged panel's float32 products (cuBLAS wrote them [M][units], units
// contiguous) into columns col0 .. col0 + units of the output (row length
// out_ld), plus the bias's entries for those columns where there is one.
inline void store_staged_panel(const float* stage, int64_t M, int64_t units, const tensor_view* bias,
                               const tensor_view& out, int64_t out_ld, int64_t col0, cudaStream_t stream) {
  finalize_args f;
  f.partial = stage;
  f.splits = 1;
  f.M = M;
  f.P = units;
  f.bias = bias ? bias->data : nullptr;
  f.bias_type = bias ? bias->type : dtype::f32;
  f.out = out.data;
  f.out_type = out.type;
  f.out_ld = out_ld;
  f.col0 = col0;
  launch_finalize(f, stream);
}

// Y[M][N] = X[M][K] W^T (+ bias). x.type is the operand dtype T.
template <decode_kind D, class T>
void dequant_cublas_forward(const tensor_view& x, const weight_args& w, const quantized_view& whole,
                            const tensor_view* bias, const tensor_view& y,
                            int64_t M, int64_t N, int64_t K, const gemm_options& opt, const code_table& table,
                            const code_table& map, cudaStream_t stream, const char* fn) {
  require_int_dims(fn, M, N, K);
  const bool staging = needs_staging(bias != nullptr, x.type, y.type);
  const panel_plan pp = plan_panels(false, M, N, K, sizeof(T), staging, opt.max_tile_bytes);
  const int64_t nc_max = pp.units;
  scratch ws(opt, pp.bytes(), stream, fn);
  T* tile = ws.as<T>();
  float* stage = staging ? ws.as<float>(pp.tile_bytes) : nullptr;
  cublasHandle_t h = opt.cublas_handle ? opt.cublas_handle : default_cublas_handle();
  cublas_stream_scope scope(h, stream);
  const float one = 1.0f, zero = 0.0f;
  for (int64_t n0 = 0; n0 < N; n0 += nc_max) {
    const int64_t nc = N - n0 < nc_max ? N - n0 : nc_max;
    dequantize_panel<D, T>(w, whole, n0, nc, 0, K, tile, table, map, stream);
    // column-major view: Y^T[n0:n0+nc, :] (nc x M) = (W panel) (nc x K) * X^T (K x M)
    void* c = staging ? static_cast<void*>(stage) : static_cast<void*>(static_cast<char*>(y.data) + n0 * dtype_size(y.type));
    LOWBIT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(nc), int(M), int(K), &one, tile,
                                     cuda_type(x.type), int(K), x.data, cuda_type(x.type), int(K), &zero, c,
                                     staging ? CUDA_R_32F : cuda_type(y.type), staging ? int(nc) : int(N),
                                     compute_type(x.type), CUBLAS_GEMM_DEFAULT));
    if (staging) store_staged_panel(stage, M, nc, bias, y, N, n0, stream);
  }
}

// dX[M][K] = dY[M][N] W. dy.type is the operand dtype T.
template <decode_kind D, class T>
void dequant_cublas_backward(const tensor_view& dy, const weight_args& w, const quantized_view& whole,
                             const tensor_view& dx, int64_t M, int64_t N,
                             int64_t K, const gemm_options& opt, const code_table& table, const code_table& map,
                             cudaStream_t stream, const char* fn) {
  require_int_dims(fn, M, N, K);
  const bool staging = needs_staging(false, dy.type, dx.type);
  const panel_plan pp = plan_panels(true, M, N, K, sizeof(T), staging, opt.max_tile_bytes);
  const int64_t kc_max = pp.units;
  scratch ws(opt, pp.bytes(), stream, fn);
  T* tile = ws.as<T>();
  float* stage = staging ? ws.as<float>(pp.tile_bytes) : nullptr;
  cublasHandle_t h = opt.cublas_handle ? opt.cublas_handle : default_cublas_handle();
  cublas_stream_scope scope(h, stream);
  const float one = 1.0f, zero = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = K - k0 < kc_max ? K - k0 : kc_max;
    dequantize_panel<D, T>(w, whole, 0, N, k0, kc, tile, table, map, stream);
    // column-major view: dX^T[k0:k0+kc, :] (kc x M) = (W panel)^T (kc x N) * dY^T (N x M)
    void* c = staging ? static_cast<void*>(stage) : static_cast<void*>(static_cast<char*>(dx.data) + k0 * dtype_size(dx.type));
    LOWBIT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(kc), int(M), int(N), &one, tile,
                                     cuda_type(dy.type), int(kc), dy.data, cuda_type(dy.type), int(N), &zero, c,
                                     staging ? CUDA_R_32F : cuda_type(dx.type), staging ? int(kc) : int(K),
                                     compute_type(dy.type), CUBLAS_GEMM_DEFAULT));
    if (staging) store_staged_panel(stage, M, kc, nullptr, dx, K, k0, stream);
  }
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace lowbit
