// lowbit/cuda/gemm/mma_gemm.cuh
// The tensor-core regime of the CUDA dequant-GEMM: C[M][P] = A[M][R] B[R][P]
// with A the bfloat16 / float16 activations (X forward, dY backward) and B
// the quantized W decoded tile by tile into shared memory, fp32 accumulation
// with mma.sync.m16n8k16 (sm_80+; compiled for sm_90).
//
//   forward  (Y = X W^T):  P = N, R = K, B[r][p] = W[p][r]
//   backward (dX = dY W):  P = K, R = N, B[r][p] = W[r][p]
//
// Both directions read the same packed W in its stored row-major order (each
// thread decodes one run of 16 consecutive codes of one row per tile) and
// store the decoded run as it lies in W: forward tiles are [BN][BK] (W's
// rows are output columns; fragments come from ldmatrix), backward tiles are
// [BK][BN] (W's rows are the reduction; fragments from ldmatrix.trans). No
// transposed or dequantized copy of W exists anywhere.
//
// Decoded weights are mul_rn(table[code], scale) rounded to the activation
// dtype, i.e. exactly what cuda::dequantize writes when asked for
// bfloat16 / float16 (tensor cores take 16-bit operands).
//
// CTA tile 64 (M) x 128 (P) x 32 (R), 8 warps of 32 x 32, two shared-memory
// stages: while the tensor cores work on stage s, A's next tile arrives by
// cp.async and W's next codes and scales by ordinary loads into registers;
// they are decoded and stored into stage s^1 after the MMAs, so both
// latencies hide behind the math. Padded rows (+8 elements) make every
// ldmatrix phase conflict-free. When the output tiles alone cannot fill the
// device (small M), the reduction is split across CTAs ("split-K") into fp32
// partials that finalize_kernel sums in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "decode.cuh"

namespace lowbit {
namespace cuda {
namespace gemm_detail {

constexpr int mma_bm = 64, mma_bn = 128, mma_bk = 32, mma_threads = 256;
constexpr int mma_a_ld = mma_bk + 8;   // A stage [BM][40] (80-byte rows)
constexpr int mma_bf_ld = mma_bk + 8;  // forward B stage [BN][40]
constexpr int mma_bb_ld = mma_bn + 8;  // backward B stage [BK][136] (272-byte rows)
constexpr int mma_a_stage = mma_bm * mma_a_ld;  // elements
template <bool Bwd>
LOWBIT_HD constexpr int mma_b_stage() {
  return Bwd ? mma_bk * mma_bb_ld : mma_bn * mma_bf_ld;
}
constexpr int mma_ctas_per_sm = 2;  // split target

template <decode_kind D, bool Bwd>
inline int mma_smem_bytes() {
  return decode_smem_bytes(D) + 2 * 2 * (mma_a_stage + mma_b_stage<Bwd>());
}

struct mma_args {
  const void* act = nullptr;  // A [M][R], T
  void* out = nullptr;        // C [M][P]
  dtype out_type = dtype::bf16;
  const void* bias = nullptr;  // forward only, [P]
  dtype bias_type = dtype::f32;
  float* partial = nullptr;  // splits > 1: [splits][M][P]
  int64_t M = 0, P = 0, R = 0;
  int64_t m_base = 0;
  int64_t r_per_split = 0;
  int splits = 1;
  weight_args w;  // forward: rows = P, cols = R; backward: rows = R, cols = P
  bool a_vec = false;  // A rows 16-byte aligned (R % 8 == 0, aligned base): cp.async
  bool w_vec = false;  // W rows allow 16-code vector loads (cols % 16 == 0, aligned codes)
};

#if defined(LOWBIT_CUDA_EMULATION)
// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16 for the emulator: lane l
// gives the address of row l % 8 of matrix l / 8 (8 16-bit elements, 16
// bytes); register j of lane l receives matrix j's elements (row l / 4,
// columns 2 (l % 4) and 2 (l % 4) + 1), or with .trans (rows 2 (l % 4) and
// 2 (l % 4) + 1, column l / 4); the lower-indexed element in the low half.
inline void emulated_ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  uint16_t mine[8], rows[32][8];
  std::memcpy(mine, p, sizeof mine);
  cuda_emulator::warp_allgather(mine, sizeof mine, rows);
  const int l = cuda_emulator::lane_id(), g = l >> 2, t = l & 3;
  for (int j = 0; j < 4; ++j) {
    const uint32_t lo = trans ? rows[8 * j + 2 * t][g] : rows[8 * j + g][2 * t];
    const uint32_t hi = trans ? rows[8 * j + 2 * t + 1][g] : rows[8 * j + g][2 * t + 1];
    r[j] = lo | (hi << 16);
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16} for the emulator. With
// g = lane / 4, t = lane % 4: a[0..3] hold A (16 x 16) at rows g, g + 8, g,
// g + 8 and columns (2t, 2t + 1), (2t, 2t + 1), (2t + 8, 2t + 9), (2t + 8,
// 2t + 9); b0 / b1 hold B (16 x 8) at rows (2t, 2t + 1) / (2t + 8, 2t + 9),
// column g; d[0..3] is C at (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
// The products of 16-bit values are exact in double; each output's 16 are
// summed in double and added to d in one float rounding (the tensor cores'
// order and rounding are unspecified; the tests' bounds allow any order).
template <class T>
inline void emulated_mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct fragments {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
  cuda_emulator::warp_allgather(&mine, sizeof mine, all);
  auto value = [](uint32_t word, int half) {
    T h;
    h.bits = uint16_t(word >> (16 * half));
    return double(to_float(h));
  };
  auto a_at = [&](int row, int k) {  // A[row][k]
    const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return value(all[4 * (row & 7) + ((k & 7) >> 1)].a[reg], k & 1);
  };
  auto b_at = [&](int k, int col) {  // B[k][col]
    return value(all[4 * col + ((k & 7) >> 1)].b[k >= 8 ? 1 : 0], k & 1);
  };
  const int l = cuda_emulator::lane_id(), g = l >> 2, t = l & 3;
  for (int c = 0; c < 4; ++c) {
    const int row = g + (c >> 1) * 8, col = 2 * t + (c & 1);
    double s = 0.0;
    for (int k = 0; k < 16; ++k) s += a_at(row, k) * b_at(k, col);
    d[c] = float(double(d[c]) + s);
  }
}
#endif

// ---- PTX wrappers (sm_80+) ---------------------------------------------------------
// Each has a third branch for the CPU emulator of the tests
// (LOWBIT_CUDA_EMULATION, tests/emulation/cuda_emulator.hpp), which runs
// the kernel on the host: the warp-collective instructions exchange their
// operands through cuda_emulator::warp_allgather and compute what the PTX
// ISA specifies for each lane (fragment layouts of ldmatrix .m8n8 and
// mma.m16n8k16, "Warp-level matrix fragments"). So the kernel's indexing,
// tiling, split-K and edges are tested without a GPU; nvcc's code and the
// tensor cores' summation order are not (tests/gpu does that).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
  (void)p;
  return 0u;
#endif
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
#elif defined(LOWBIT_CUDA_EMULATION)
  // src_bytes of 16 copied, the rest zero-filled (the copy completes at once)
  unsigned char* d = static_cast<unsigned char*>(dst);
  for (int i = 0; i < 16; ++i) d[i] = i < src_bytes ? static_cast<const unsigned char*>(src)[i] : 0u;
#else
  (void)dst, (void)src, (void)src_bytes;
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
#elif defined(LOWBIT_CUDA_EMULATION)
  emulated_ldmatrix_x4(r, p, false);
#else
  (void)r, (void)p;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
#elif defined(LOWBIT_CUDA_EMULATION)
  emulated_ldmatrix_x4(r, p, true);
#else
  (void)r, (void)p;
  __trap();
#endif
}

// d += a (16x16, row) * b (16x8, col), fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, bf16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#elif defined(LOWBIT_CUDA_EMULATION)
  emulated_mma_16816<T>(d, a, b0, b1);
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();
#endif
}

template <decode_kind D, class T, bool Bwd>
__global__ void __launch_bounds__(mma_threads, mma_ctas_per_sm)
    mma_gemm_kernel(const mma_args p, const __grid_constant__ code_table table,
                    const __grid_constant__ code_table map_src) {
  LOWBIT_DYNAMIC_SHARED(smem);
  float* map = nullptr;
  const decoder dec = setup_decoder<D>(smem, table.value, map_src.value, p.w.nested, &map);
  uint16_t* const As = reinterpret_cast<uint16_t*>(smem + decode_smem_bytes(D));  // [2][BM][A_LD]
  uint16_t* const Bs = As + 2 * mma_a_stage;                                       // [2][B stage]
  constexpr int b_stage = mma_b_stage<Bwd>();

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int wm = warp & 1, wn = warp >> 1;  // 2 x 4 warps, 32 x 32 outputs each
  const int64_t p0 = int64_t(blockIdx.x) * mma_bn;
  const int64_t m0 = p.m_base + int64_t(blockIdx.y) * mma_bm;
  const int split = int(blockIdx.z);
  const int64_t r_beg = int64_t(split) * p.r_per_split;
  const int64_t r_end = r_beg + p.r_per_split < p.R ? r_beg + p.r_per_split : p.R;
  const int ktiles = r_end > r_beg ? int((r_end - r_beg + mma_bk - 1) / mma_bk) : 0;
  const float offset = p.w.nested ? *p.w.nested_offset : 0.0f;
  const uint16_t* const act = static_cast<const uint16_t*>(p.act);

  // A: thread -> (row tid / 4, 8 elements at chunk tid % 4).
  auto load_a = [&](int stage, int64_t r0) {
    const int row = tid >> 2, chunk = tid & 3;
    const int64_t gm = m0 + row, gr = r0 + chunk * 8;
    uint16_t* dst = As + stage * mma_a_stage + row * mma_a_ld + chunk * 8;
    if (p.a_vec) {
      const bool ok = gm < p.M && gr < r_end;  // R % 8 == 0: a chunk is all in or all out
      cp_async16(dst, ok ? static_cast<const void*>(act + gm * p.R + gr) : p.act, ok ? 16 : 0);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = (gm < p.M && gr + 2 * e < r_end) ? act[gm * p.R + gr + 2 * e] : 0u;
        const uint32_t hi = (gm < p.M && gr + 2 * e + 1 < r_end) ? act[gm * p.R + gr + 2 * e + 1] : 0u;
        w[e] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  };

  // W: thread -> one run of 16 consecutive codes of one row of W.
  //   forward:  W row p0 + tid / 2, columns r0 + 16 (tid % 2) ..
  //   backward: W row r0 + tid / 8, columns p0 + 16 (tid % 8) ..
  auto run_origin = [&](int64_t r0, int64_t* wrow, int64_t* wcol) {
    if constexpr (Bwd) {
      *wrow = r0 + (tid >> 3);
      *wcol = p0 + 16 * (tid & 7);
    } else {
      *wrow = p0 + (tid >> 1);
      *wcol = r0 + 16 * (tid & 1);
    }
  };
  auto elem_valid = [&](int64_t wrow, int64_t wcol) {
    return Bwd ? (wrow < r_end && wcol < p.P) : (wrow < p.P && wcol < r_end);
  };
  uint4 wraw = make_uint4(0u, 0u, 0u, 0u);
  scale_raw wsr;
  bool wvalid = false;
  auto fetch_w = [&](int64_t r0) {  // vector path: issue the loads only
    int64_t wrow, wcol;
    run_origin(r0, &wrow, &wcol);
    wvalid = elem_valid(wrow, wcol);  // cols % 16 == 0: a run is all in or all out
    if (wvalid) {
      const int64_t i0 = wrow * p.w.cols + wcol;
      if constexpr (kind_is_4bit(D)) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(p.w.codes + (i0 >> 1)));
        wraw = make_uint4(v.x, v.y, 0u, 0u);
      } else {
        wraw = __ldg(reinterpret_cast<const uint4*>(p.w.codes + i0));
      }
      wsr = fetch_scale(p.w, i0 >> p.w.bs_log2);
    }
  };
  auto store_w = [&](int stage, int64_t r0) {
    float v[16];
    int64_t wrow, wcol;
    run_origin(r0, &wrow, &wcol);
    if (p.w_vec) {
      if (wvalid) {
        const float s = finish_scale(p.w, wsr, map, offset);
        if constexpr (kind_is_4bit(D)) {
          decode_word<D>(dec, wraw.x, s, v);
          decode_word<D>(dec, wraw.y, s, v + 8);
        } else {
          decode_word<D>(dec, wraw.x, s, v);
          decode_word<D>(dec, wraw.y, s, v + 4);
          decode_word<D>(dec, wraw.z, s, v + 8);
          decode_word<D>(dec, wraw.w, s, v + 12);
        }
      } else {
#pragma unroll
        for (int e = 0; e < 16; ++e) v[e] = 0.0f;
      }
    } else {
#pragma unroll
      for (int e = 0; e < 16; ++e)
        v[e] = elem_valid(wrow, wcol + e) ? decode_at<D>(dec, p.w, wrow * p.w.cols + wcol + e, map, offset) : 0.0f;
    }
    uint32_t h[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = pack2<T>(v[2 * e], v[2 * e + 1]);
    uint16_t* dst = Bs + stage * b_stage +
                    (Bwd ? (tid >> 3) * mma_bb_ld + 16 * (tid & 7) : (tid >> 1) * mma_bf_ld + 16 * (tid & 1));
    reinterpret_cast<uint4*>(dst)[0] = make_uint4(h[0], h[1], h[2], h[3]);
    reinterpret_cast<uint4*>(dst)[1] = make_uint4(h[4], h[5], h[6], h[7]);
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;

  auto compute = [&](int stage) {
    const uint16_t* a_st = As + stage * mma_a_stage;
    const uint16_t* b_st = Bs + stage * b_stage;
#pragma unroll
    for (int kk = 0; kk < mma_bk / 16; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        ldmatrix_x4(a[i], a_st + (wm * 32 + i * 16 + (lane & 15)) * mma_a_ld + kk * 16 + (lane >> 4) * 8);
      uint32_t b[4][2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        uint32_t r[4];
        if constexpr (Bwd) {
          ldmatrix_x4_trans(r, b_st + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * mma_bb_ld + wn * 32 + jj * 16 +
                                   (lane >> 4) * 8);
        } else {
          ldmatrix_x4(r, b_st + (wn * 32 + jj * 16 + (lane & 7) + ((lane >> 4) << 3)) * mma_bf_ld + kk * 16 +
                             ((lane >> 3) & 1) * 8);
        }
        b[2 * jj][0] = r[0], b[2 * jj][1] = r[1], b[2 * jj + 1][0] = r[2], b[2 * jj + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_16816<T>(acc[i][j], a[i], b[j][0], b[j][1]);
    }
  };

  __syncthreads();  // decoder tables are ready
  if (ktiles > 0) {
    load_a(0, r_beg);
    if (p.w_vec) fetch_w(r_beg);
    store_w(0, r_beg);
    cp_async_wait_all();
  }
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int st = kt & 1;
    const bool more = kt + 1 < ktiles;
    const int64_t rn = r_beg + int64_t(kt + 1) * mma_bk;
    if (more) {
      load_a(st ^ 1, rn);
      if (p.w_vec) fetch_w(rn);
    }
    compute(st);
    if (more) store_w(st ^ 1, rn);
    cp_async_wait_all();
    __syncthreads();
  }

  // Accumulator (i, j, c): row wm*32 + i*16 + lane/4 (+8 for c >= 2),
  // column wn*32 + j*8 + 2*(lane%4) + c%2.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t row = m0 + wm * 32 + i * 16 + (lane >> 2) + (c >> 1) * 8;
        const int64_t col = p0 + wn * 32 + j * 8 + (lane & 3) * 2 + (c & 1);
        if (row >= p.M || col >= p.P) continue;
        float y = acc[i][j][c];
        if (p.splits == 1) {
          if (p.bias) y = add_rn(y, load_as_float(p.bias, p.bias_type, col));
          store_from_float(p.out, p.out_type, row * p.P + col, y);
        } else {
          p.partial[(int64_t(split) * p.M + row) * p.P + col] = y;
        }
      }
}

// Splits of the reduction for this problem (1 when the output tiles fill
// the device); *r_per_split gets the reduction length per split.
inline int mma_splits(int64_t M, int64_t P, int64_t R, int64_t* r_per_split) {
  const int64_t tiles = ((P + mma_bn - 1) / mma_bn) * ((M + mma_bm - 1) / mma_bm);
  int splits = 1;
  *r_per_split = split_length(R, mma_bk, tiles, int64_t(sm_count()) * mma_ctas_per_sm, 4, &splits);
  return splits;
}

inline bool device_has_mma() {
  int dev = 0, major = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major >= 8;
}

template <decode_kind D, class T, bool Bwd>
void launch_mma_gemm(mma_args p, const code_table& table, const code_table& map, cudaStream_t stream) {
  static std::atomic<uint64_t> smem_set{0};
  const int smem = mma_smem_bytes<D, Bwd>();
  auto kernel = mma_gemm_kernel<D, T, Bwd>;
  allow_dynamic_smem(kernel, smem, smem_set);
  const int64_t gx = (p.P + mma_bn - 1) / mma_bn;
  const int64_t groups = (p.M + mma_bm - 1) / mma_bm;
  for (int64_t g0 = 0; g0 < groups; g0 += 65535) {
    const int64_t gy = groups - g0 < 65535 ? groups - g0 : 65535;
    p.m_base = g0 * mma_bm;
    LOWBIT_LAUNCH(kernel, dim3(unsigned(gx), unsigned(gy), unsigned(p.splits)), mma_threads, smem, stream)(p, table,
                                                                                                      map);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace lowbit
