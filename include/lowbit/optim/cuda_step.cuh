// lowbit/optim/cuda_step.cuh
// The CUDA executor of the fused optimizer step and the GPU gradient
// statistics. One kernel pass reads the gradient, decodes weight and states,
// applies the rule, re-encodes states with fresh block scales and writes the
// weight back (stochastic rounding where the policy says), with no full-size
// temporary. Each thread owns 8 consecutive elements (read and written with
// one wide access where the address allows; on that path the loads of every
// storage are issued before any is decoded); the threads of one
// quantization block reduce its absmax with warp shuffles (shared memory for
// blocks over 256 elements); re-encoding finds each value's place in the
// sorted codebook through the CPU step's bucket table and picks its code
// with element_encode.hpp's branch-free choice; one resident wave of
// blocks loops over the tensor. Every element operation, the random stream and
// the reduction orders are those of cpu_step.hpp, so results are
// bit-identical to the CPU executor. Nested (double-quantized) weight scales
// are finished by the nested kernels of cuda/quantize.cuh.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "../core/reduce.hpp"
#include "../core/rng.hpp"
#include "../cpu/floor_index.hpp"
#include "../cuda/check.cuh"
#include "../cuda/launch.cuh"
#include "../cuda/quantize.cuh"
#include "cpu_step.hpp"
#include "element_encode.hpp"
#include "fused_step.hpp"
#include "rules.hpp"
#include "stable_scales.hpp"
#include "storage.hpp"

namespace lowbit {
namespace optim {
namespace cuda_detail {

constexpr int n_buckets = cpu::floor_index_table::n_buckets;

// Tables for the three storages plus the signed map of nested scales, passed
// by value (about 18 KB of kernel parameters; CUDA 12.1+ allows 32 KB).
// bucket[s] is cpu/floor_index.hpp's bucket table of storage s as bytes
// (every start index is < 256): the floor index of a value in the sorted
// codebook and its neighbours from one table read and one read of four
// consecutive entries (element_encode.hpp) instead of a binary search of 8
// dependent reads (the search made the QFT step instruction-bound: about
// 360 instructions per element, ncu, 2026-11-26). Every lowbit format's
// table is usable; the kernel has no fallback.
struct step_tables {
  format_tables weight, state1, state2;
  code_table nested_map;
  uint8_t bucket[3][n_buckets];
};

struct shared_tables {
  float decode[3][256];
  float sorted[3][padded_codebook_size];  // +infinity past each format's entries (element_encode.hpp)
  uint8_t code[3][256];
  uint8_t bucket[3][n_buckets];
  int size[3];
  float nested_map[256];
};

// What the kernel knows of one storage: its kind, and for blockwise ones the
// code width, whether scales are nested and the block size. A kernel
// instantiated for a fixed storage shape (see storage_shape below) gets
// these as compile-time constants, so the switches over kinds, the nibble
// or byte paths and the shuffle loop of the block absmax fold away; the
// generic instantiation reads them from the views at run time.
struct storage_traits {
  storage_kind kind;
  bool four;    // blockwise, 4-bit codes
  bool nested;  // blockwise, nested (double-quantized) scales
  int block;    // blockwise block size (1 for dense storages)
};

// A storage shape as one int, usable as a template argument (C++17 has no
// class-type template parameters): 0 means "read at run time"; otherwise
// bit 0 is set, bits 1-3 hold the storage_kind, bit 4 four-bit codes, bit 5
// nested scales and bits 8 and up the block size.
namespace storage_shape {
constexpr int any = 0;
constexpr int of(storage_kind k, int code_bits = 8, bool nested = false, int block = 0) {
  return 1 | (int(k) << 1) | ((code_bits == 4 ? 1 : 0) << 4) | ((nested ? 1 : 0) << 5) | (block << 8);
}
constexpr int none = of(storage_kind::none), f32 = of(storage_kind::f32), bf16 = of(storage_kind::bf16);
constexpr int b8_256 = of(storage_kind::blockwise, 8, false, 256);
constexpr int b4_128 = of(storage_kind::blockwise, 4, false, 128);
constexpr int b4_nested_64 = of(storage_kind::blockwise, 4, true, 64);
// The shape a storage view has (for matching against fixed shapes).
inline int of_view(const storage_view& s) {
  return s.is_blockwise() ? of(s.kind, is_4bit(s.q.layout.fmt) ? 4 : 8, s.q.layout.nested, s.q.layout.block_size)
                          : of(s.kind);
}
}  // namespace storage_shape

template <int Shape>
__device__ __forceinline__ storage_traits traits_of(const storage_view& s) {
  if constexpr (Shape == storage_shape::any) {
    const bool q = s.is_blockwise();
    return {s.kind, q && is_4bit(s.q.layout.fmt), q && s.q.layout.nested, q ? s.q.layout.block_size : 1};
  } else {
    constexpr storage_kind kind = storage_kind((Shape >> 1) & 7);
    constexpr int block = kind == storage_kind::blockwise ? (Shape >> 8) : 1;
    return {kind, ((Shape >> 4) & 1) != 0, ((Shape >> 5) & 1) != 0, block};
  }
}

constexpr int per_thread = 8;
// Launch bounds: blocks of up to 512 threads (one thread per 8 elements of a
// tile of up to 4096), at least 2 of them (32 warps) per SM, which caps
// registers at 64 a thread.
constexpr int fused_max_threads = 512;
constexpr int fused_min_blocks_at_max = 2;

// Wide memory access to a thread's 8 consecutive elements. A warp's threads
// own consecutive 8-element groups, so one scalar access per element makes
// each warp instruction touch 32 sectors with a 16- or 32-byte stride and
// each scalar store a partial-sector write; one 16-byte (or 8- / 4-byte for
// codes) access per group makes the warp's access one contiguous span. The
// wide form is taken when the 8 elements are all in range and the address
// is aligned for it (views may start anywhere); otherwise the scalar form.
// Both read and write the same values, so results do not depend on which
// form ran.
template <int Bytes>
__device__ __forceinline__ bool aligned_for(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & uintptr_t(Bytes - 1)) == 0;
}

// The 8 values of 16-bit elements packed little-endian in four words.
__device__ __forceinline__ void unpack16x8(storage_kind kind, const uint32_t (&w)[4], float (&v)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = widen16(kind, uint16_t(w[k / 2] >> (16 * (k % 2))));
}

// The codes of 8 elements packed in w0 (4-bit: byte j holds elements 2j in
// its high nibble and 2j+1 in its low one) or in w0, w1 (8-bit, byte k of
// the pair is element k); little-endian.
__device__ __forceinline__ void unpack_codes8(bool four, uint32_t w0, uint32_t w1, int (&c)[8]) {
  if (four) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t byte = (w0 >> (8 * j)) & 0xFFu;
      c[2 * j] = int(byte >> 4);
      c[2 * j + 1] = int(byte & 15u);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = int(((k < 4 ? w0 : w1) >> (8 * (k % 4))) & 0xFFu);
}

// v[k] = element idx + k of a dense storage (0 past n).
__device__ __forceinline__ void load_dense8(storage_kind kind, const void* data, int64_t idx, int64_t n,
                                            float (&v)[8]) {
  if (idx + 8 <= n) {
    if (kind == storage_kind::f32) {
      const float* p = static_cast<const float*>(data) + idx;
      if (aligned_for<16>(p)) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        return;
      }
    } else if (kind == storage_kind::bf16 || kind == storage_kind::f16) {
      const uint16_t* p = static_cast<const uint16_t*>(data) + idx;
      if (aligned_for<16>(p)) {
        const uint4 w = *reinterpret_cast<const uint4*>(p);
        unpack16x8(kind, {w.x, w.y, w.z, w.w}, v);
        return;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = idx + k < n ? load_dense(kind, data, idx + k) : 0.0f;
}

// Stores v[k] to element idx + k of a dense storage (elements past n are
// left alone), rounded as store_dense rounds. Full: the caller knows all 8
// elements are in range and the storage is aligned for the wide access
// (the kernel's full spans), so no test is compiled.
template <bool Full = false>
__device__ __forceinline__ void store_dense8(storage_kind kind, void* data, int64_t idx, int64_t n,
                                             const float (&v)[8], bool stochastic, const uint32_t (&bits)[8]) {
  if (Full || idx + 8 <= n) {
    if (kind == storage_kind::f32) {
      float* p = static_cast<float*>(data) + idx;
      if (Full || aligned_for<16>(p)) {
        reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
        return;
      }
    } else if (kind == storage_kind::bf16 || kind == storage_kind::f16) {
      uint16_t* p = static_cast<uint16_t*>(data) + idx;
      if (Full || aligned_for<16>(p)) {
        uint32_t words[4] = {0, 0, 0, 0};
#pragma unroll
        for (int k = 0; k < 8; ++k) words[k / 2] |= uint32_t(narrow16(kind, v[k], stochastic, bits[k])) << (16 * (k % 2));
        *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
        return;
      }
    }
  }
  if constexpr (!Full)
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (idx + k < n) store_dense(kind, data, idx + k, v[k], stochastic, bits[k]);
}

// c[k] = code of element idx + k of a blockwise storage (idx is a multiple
// of 8; 0 past n).
__device__ __forceinline__ void load_codes8(const uint8_t* codes, int64_t idx, int64_t n, bool four,
                                            int (&c)[8]) {
  if (idx + 8 <= n) {
    if (four && aligned_for<4>(codes + (idx >> 1))) {
      unpack_codes8(true, *reinterpret_cast<const uint32_t*>(codes + (idx >> 1)), 0u, c);
      return;
    }
    if (!four && aligned_for<8>(codes + idx)) {
      const uint2 w = *reinterpret_cast<const uint2*>(codes + idx);
      unpack_codes8(false, w.x, w.y, c);
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = idx + k < n ? load_code(codes, idx + k, four) : 0;
}

// Writes the codes c[k] of elements idx..idx+7 (idx a multiple of 8; past
// n: nothing, and a 4-bit byte's unused low half gets `zero`). Full: as for
// store_dense8.
template <bool Full = false>
__device__ __forceinline__ void store_codes8(uint8_t* codes, int64_t idx, int64_t n, bool four, uint8_t zero,
                                             const uint8_t (&c)[8]) {
  if (four) {
    if (Full || (idx + 8 <= n && aligned_for<4>(codes + (idx >> 1)))) {
      uint32_t w = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) w |= uint32_t(uint8_t((c[2 * j] << 4) | c[2 * j + 1])) << (8 * j);
      *reinterpret_cast<uint32_t*>(codes + (idx >> 1)) = w;
      return;
    }
    if constexpr (!Full)
      for (int j = 0; j < 4 && idx + 2 * j < n; ++j)
        codes[(idx >> 1) + j] = uint8_t((c[2 * j] << 4) | (idx + 2 * j + 1 < n ? c[2 * j + 1] : zero));
    return;
  }
  if (Full || (idx + 8 <= n && aligned_for<8>(codes + idx))) {
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) lo |= uint32_t(c[k]) << (8 * k), hi |= uint32_t(c[4 + k]) << (8 * k);
    *reinterpret_cast<uint2*>(codes + idx) = make_uint2(lo, hi);
    return;
  }
  if constexpr (!Full)
    for (int k = 0; k < 8 && idx + k < n; ++k) codes[idx + k] = c[k];
}

// Index of the block holding element idx, as a shift: block sizes are
// powers of two (formats/layout.hpp), and a 64-bit division costs dozens of
// instructions, paid for every storage of every 8 elements.
__device__ __forceinline__ int log2_of_pow2(int bs) {
#if defined(__CUDA_ARCH__)
  return __ffs(bs) - 1;
#else
  return __builtin_ctz(unsigned(bs));  // the CPU emulator of the tests
#endif
}
__device__ __forceinline__ int64_t block_of(int64_t idx, int bs) { return idx >> log2_of_pow2(bs); }
__device__ __forceinline__ bool starts_block(int64_t idx, int bs) { return (idx & int64_t(bs - 1)) == 0; }

// The fast path of the main loop (8 elements all in range, every storage
// aligned for its wide access) separates loading from decoding: fetch8
// issues the loads of one storage's 8 elements (values or codes, and the raw
// parts of the block scale) into registers without using them, so the loads
// of weight, states and gradient are all in flight together; decode8 then
// turns them into floats. (Loading and decoding storage by storage left the
// plain fp32 AdamW step latency-bound at 36 % of DRAM bandwidth, ncu,
// 2026-11-26.)
struct raw8 {
  uint4 a = make_uint4(0u, 0u, 0u, 0u), b = make_uint4(0u, 0u, 0u, 0u);  // up to 32 bytes of values or codes
  float scale = 0.0f;        // absmax, or (nested) the group's absmax
  uint32_t scale_code = 0;   // nested: the block's scale code
};

__device__ __forceinline__ void fetch8(const storage_traits& tr, const storage_view& st, const void* data,
                                       int64_t idx, raw8& r) {
  switch (tr.kind) {
    case storage_kind::f32: {
      const uint4* p = reinterpret_cast<const uint4*>(static_cast<const float*>(data) + idx);
      r.a = p[0];
      r.b = p[1];
      break;
    }
    case storage_kind::bf16:
    case storage_kind::f16: r.a = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + idx); break;
    case storage_kind::blockwise: {
      const quantized_view& q = st.q;
      if (tr.four) {
        r.a.x = *reinterpret_cast<const uint32_t*>(q.codes + (idx >> 1));
      } else {
        const uint2 w = *reinterpret_cast<const uint2*>(q.codes + idx);
        r.a.x = w.x, r.a.y = w.y;
      }
      const int64_t b = block_of(idx, tr.block);
      if (tr.nested) {
        r.scale_code = q.absmax_codes[b];
        r.scale = q.nested_absmax[b >> 8];  // nested_block_size == 256
      } else {
        r.scale = q.absmax[b];
      }
      break;
    }
    default: break;
  }
}

// The values fetched by fetch8; returns the block scale (0 for dense).
__device__ __forceinline__ float decode8(const storage_traits& tr, const storage_view& st, const shared_tables& t,
                                         int which, const raw8& r, float (&v)[8]) {
  switch (tr.kind) {
    case storage_kind::f32: {
      const uint32_t w[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = bits_float(w[k]);
      return 0.0f;
    }
    case storage_kind::bf16:
    case storage_kind::f16: unpack16x8(tr.kind, {r.a.x, r.a.y, r.a.z, r.a.w}, v); return 0.0f;
    case storage_kind::blockwise: {
      const quantized_view& q = st.q;
      const float scale =
          tr.nested ? decode_nested_scale(uint8_t(r.scale_code), r.scale, *q.nested_offset, t.nested_map) : r.scale;
      int c[8];
      unpack_codes8(tr.four, r.a.x, r.a.y, c);
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = mul_rn(t.decode[which][c[k]], scale);
      return scale;
    }
    default:
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = 0.0f;
      return 0.0f;
  }
}

// Whether every storage of the step is aligned for the fast path's wide
// accesses (element 0 aligned makes every 8-element group aligned).
inline bool wide_aligned(const storage_view& st) {
  const auto at = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  switch (st.kind) {
    case storage_kind::f32:
    case storage_kind::bf16:
    case storage_kind::f16: return at(st.data, 16);
    case storage_kind::blockwise: return at(st.q.codes, is_4bit(st.q.layout.fmt) ? 4 : 8);
    default: return true;
  }
}

// Decodes elements idx..idx+7; returns the block scale they were decoded
// with (0 for dense storages), which stable weight scales keep.
__device__ __forceinline__ float load8(const storage_traits& tr, const storage_view& st, const shared_tables& t,
                                       int which, int64_t idx, int64_t n, float (&v)[8]) {
  if (tr.kind == storage_kind::none) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = 0.0f;
    return 0.0f;
  }
  if (tr.kind != storage_kind::blockwise) {
    load_dense8(tr.kind, st.data, idx, n, v);
    return 0.0f;
  }
  const quantized_view& q = st.q;
  const float scale = idx < n ? stored_block_scale(q, block_of(idx, tr.block), t.nested_map) : 0.0f;
  int c[8];
  load_codes8(q.codes, idx, n, tr.four, c);
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = idx + k < n ? mul_rn(t.decode[which][c[k]], scale) : 0.0f;
  return scale;
}

// Absmax over the `bs / 8` consecutive threads of one block (bs >= 32).
template <bool Full>
__device__ __forceinline__ float block_absmax8(const float (&v)[8], int64_t idx, int64_t n, int bs, float* warp_max) {
  absmax_accumulator acc;  // absmax_step's fold, in fewer GPU instructions
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (Full || idx + k < n) acc.add(v[k]);
  float m = acc.value();
  const int tpq = bs / per_thread;
  const int width = tpq < 32 ? tpq : 32;
  for (int off = width / 2; off >= 1; off /= 2) m = absmax_combine(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  if (tpq > 32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) warp_max[warp] = m;
    __syncthreads();
    const int wpq = tpq / 32, first = (warp / wpq) * wpq;
    m = warp_max[first];
    for (int w = 1; w < wpq; ++w) m = absmax_combine(m, warp_max[first + w]);
  }
  return m;
}

// The codes of 8 block-normalized values u in storage `which`'s codebook
// (element_encode.hpp, with the rounding and snapping fixed per call): the
// floor index and neighbours through the bucket table, as the CPU step
// finds them (every lowbit format's table is usable; cuda_fused_step
// checks). One element at a time from search to code, so that only its
// neighbours are live (holding all 8 elements' neighbours made the step
// kernels spill at 64 registers).
template <bool Stochastic, bool Snap>
__device__ __forceinline__ void encode_codes8(const shared_tables& t, int which, const float (&u)[8],
                                              const uint32_t (&bits)[8], uint8_t (&c)[8]) {
  const float* sorted = t.sorted[which];
  const int size = t.size[which];
  const float first = sorted[0], last = sorted[size - 1];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const neighbours nb = bucketed_neighbours(u[k], t.bucket[which][cpu::floor_bucket(u[k])], sorted);
    c[k] = t.code[which][pick_entry<Stochastic, Snap>(u[k], nb, bits[k], first, last, size)];
  }
}

// Encodes elements idx..idx+7 (fresh block scales for blockwise storages).
// keep: stable weight scales (stable_scales.hpp), with old_scale the block's
// scale before the step; a nested group that cannot cover the block raises
// *renest_flag.
template <bool Full>
__device__ __forceinline__ void store8(const storage_traits& tr, const storage_view& st, const shared_tables& t,
                                       int which, int64_t idx, int64_t n, const float (&v)[8], bool stochastic,
                                       const rng_stream& rng, float* absmax_out, float* warp_max, bool keep = false,
                                       float old_scale = 0.0f, int* renest_flag = nullptr) {
  if (tr.kind == storage_kind::none) return;
  stochastic = stochastic && tr.kind != storage_kind::f32;  // float32 stores exactly: no random bits needed
  uint32_t bits[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (stochastic) {  // 16 bits per element: one Philox call for the thread's 8 elements
    const philox_result r = rng.quad(uint64_t(idx) >> 3);
#pragma unroll
    for (int k = 0; k < 8; ++k) bits[k] = random16(r, k);
  }
  if (tr.kind != storage_kind::blockwise) {
    store_dense8<Full>(tr.kind, st.data, idx, n, v, stochastic, bits);
    return;
  }
  const quantized_view& q = st.q;
  const int bs = tr.block;
  float m = block_absmax8<Full>(v, idx, n, bs, warp_max);  // every thread of the CUDA block takes part
  if (!Full && idx >= n) return;
  const int64_t b = block_of(idx, bs);
  const bool first = starts_block(idx, bs);
  if (keep) {
    // Every thread of the block takes the same decision; its first thread
    // stores it. Threads of this block read the old scale in load8 before
    // block_absmax8's shuffles, so the write cannot race with those reads.
    const bool nested = tr.nested;
    const stable_scale sc = choose_stable_scale(old_scale, m, nested, nested ? q.nested_absmax[b / nested_block_size] : 0.0f,
                                                nested ? *q.nested_offset : 0.0f, t.nested_map);
    m = sc.value;
    if (first) {
      if (sc.code >= 0) q.absmax_codes[b] = uint8_t(sc.code);
      if (sc.renest) *renest_flag = 1;
    }
  }
  if (first) absmax_out[b] = m;
  const float inv = inverse_scale(m);
  float u[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) u[k] = mul_rn(v[k], inv);
  // With keep (stable scales), an unmoved weight snaps onto its grid value
  // first, as in the CPU step.
  uint8_t c[8];
  if (stochastic) {  // one test for the 8 elements (nvcc left it inside the element loop)
    if (keep)
      encode_codes8<true, true>(t, which, u, bits, c);
    else
      encode_codes8<true, false>(t, which, u, bits, c);
  } else {
    if (keep)
      encode_codes8<false, true>(t, which, u, bits, c);
    else
      encode_codes8<false, false>(t, which, u, bits, c);
  }
  store_codes8<Full>(q.codes, idx, n, tr.four, zero_code(q.layout.fmt), c);
}

// What one thread's 8-element update needs besides its index: the
// arguments, rule constants, tables and per-storage traits of the kernel.
template <class Rule>
struct step_context {
  const fused_step_args& a;
  const typename Rule::consts& c;
  const shared_tables& t;
  float* warp_max;
  storage_traits tw, t1, t2, tg;  // weight, states, gradient
  rng_stream rw, r1, r2;
  bool keep;
  float* weight_absmax;
  int* renest_flag;
};

// Decodes, updates and re-encodes elements idx..idx+7. Full: all 8 are in
// range and every storage is aligned for the wide accesses (see the
// kernel); otherwise each access is tested.
template <bool Full, class Rule>
__device__ __forceinline__ void step8(const step_context<Rule>& x, int64_t idx, int64_t n, bool wide) {
  const fused_step_args& a = x.a;
  float p[8], m[8], v[8], gr[8];
  float old_scale;
  if (Full || (wide && idx + 8 <= n)) {
    raw8 rw, r1, r2, rg;
    fetch8(x.tw, a.weight, a.weight.data, idx, rw);
    fetch8(x.t1, a.state1, a.state1.data, idx, r1);
    fetch8(x.t2, a.state2, a.state2.data, idx, r2);
    fetch8(x.tg, a.weight, a.grad, idx, rg);  // dense: the storage_view argument is not read
    old_scale = decode8(x.tw, a.weight, x.t, 0, rw, p);
    decode8(x.t1, a.state1, x.t, 1, r1, m);
    decode8(x.t2, a.state2, x.t, 2, r2, v);
    decode8(x.tg, a.weight, x.t, 0, rg, gr);
  } else {
    old_scale = load8(x.tw, a.weight, x.t, 0, idx, n, p);
    load8(x.t1, a.state1, x.t, 1, idx, n, m);
    load8(x.t2, a.state2, x.t, 2, idx, n, v);
    load_dense8(x.tg.kind, a.grad, idx, n, gr);
  }
  const float grad_scale = a.grad_scale, max_update = a.max_update;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (!Full && idx + k >= n) continue;
    const float g = mul_rn(gr[k], grad_scale);
    const float old = p[k];
    float next = Rule::apply(old, g, m[k], v[k], x.c);
    if (max_update > 0.0f) {
      const float d = add_rn(next, -old);
      next = add_rn(old, d > max_update ? max_update : (d < -max_update ? -max_update : d));
    }
    p[k] = next;
  }
  store8<Full>(x.t1, a.state1, x.t, 1, idx, n, m, a.state_stochastic, x.r1, a.state1.q.absmax, x.warp_max);
  store8<Full>(x.t2, a.state2, x.t, 2, idx, n, v, a.state_stochastic, x.r2, a.state2.q.absmax, x.warp_max);
  store8<Full>(x.tw, a.weight, x.t, 0, idx, n, p, a.weight_stochastic, x.rw, x.weight_absmax, x.warp_max, x.keep,
               old_scale, x.renest_flag);
  if (a.weight_copy.kind != storage_kind::none && (Full || idx < n)) {
    const uint32_t no_bits[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    store_dense8<Full>(a.weight_copy.kind, a.weight_copy.data, idx, n, p, false, no_bits);
  }
}

// The large by-value parameters are __grid_constant__: the kernel takes their
// addresses (references to the storages and tables), which would otherwise
// make nvcc copy them into every thread's local memory. W, S1 and S2 are the
// storage shapes of weight, first and second state (storage_shape::any:
// read at run time; cuda_fused_step picks a fixed-shape instantiation where
// one matches).
template <class Rule, int W = storage_shape::any, int S1 = storage_shape::any, int S2 = storage_shape::any>
__global__ void __launch_bounds__(fused_max_threads, fused_min_blocks_at_max) fused_step_kernel(const __grid_constant__ fused_step_args a,
                                  const __grid_constant__ typename Rule::consts c,
                                  const __grid_constant__ step_tables tables_param, float* weight_absmax,
                                  int* renest_flag, bool wide) {
  // A deferred gradient check found NaN or infinity: change nothing (the
  // test is uniform over the grid, before any barrier).
  if (a.skip_flag != nullptr && *a.skip_flag != 0) return;
  __shared__ shared_tables t;
  __shared__ float warp_max[32];
  const storage_view* sts[3] = {&a.weight, &a.state1, &a.state2};
  const format_tables* src[3] = {&tables_param.weight, &tables_param.state1, &tables_param.state2};
  for (int s = 0; s < 3; ++s) {
    if (!sts[s]->is_blockwise()) continue;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      t.decode[s][i] = src[s]->decode.value[i];
      t.code[s][i] = src[s]->sorted.code[i];
    }
    const int size = src[s]->sorted.size;
    for (int i = threadIdx.x; i < padded_codebook_size; i += blockDim.x)
      t.sorted[s][i] = i < size ? src[s]->sorted.value[i] : bits_float(0x7F800000u);
    for (int i = threadIdx.x; i < n_buckets; i += blockDim.x) t.bucket[s][i] = tables_param.bucket[s][i];
    if (threadIdx.x == 0) t.size[s] = size;
  }
  for (int i = threadIdx.x; i < 256; i += blockDim.x) t.nested_map[i] = tables_param.nested_map.value[i];
  __syncthreads();

  const int64_t n = a.weight.n;
  const storage_kind gk = a.grad_type == dtype::f32    ? storage_kind::f32
                          : a.grad_type == dtype::bf16 ? storage_kind::bf16
                                                       : storage_kind::f16;
  const rng_stream rw = a.stream(rng_purpose::weight), r1 = a.stream(rng_purpose::state1),
                   r2 = a.stream(rng_purpose::state2);
  const storage_traits tw = traits_of<W>(a.weight), t1 = traits_of<S1>(a.state1), t2 = traits_of<S2>(a.state2);
  const storage_traits tg{gk, false, false, 1};
  const bool keep = a.stable_weight_scales && tw.kind == storage_kind::blockwise;
  // Nested weight scales are re-quantized after this kernel only where the
  // flag says so: always when every block's scale is re-encoded; with
  // stable scales, when a block raised it (store8). A skipped step leaves
  // it 0, so nothing is re-quantized from the unwritten scratch.
  if (!keep && renest_flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *renest_flag = 1;
  const int64_t span = int64_t(blockDim.x) * per_thread;
  const step_context<Rule> ctx{a, c, t, warp_max, tw, t1, t2, tg, rw, r1, r2, keep, weight_absmax, renest_flag};
  for (int64_t base = int64_t(blockIdx.x) * span; base < n; base += int64_t(gridDim.x) * span) {
    // A span whose elements are all in range, with every storage aligned,
    // takes the Full instantiation: no per-element range test and no
    // alignment test is compiled into it. The test is uniform over the
    // CUDA block, so the block's threads stay together for the shuffles
    // and barriers of the block absmax.
    const int64_t idx = base + int64_t(threadIdx.x) * per_thread;
    if (wide && base + span <= n)
      step8<true>(ctx, idx, n, true);
    else
      step8<false>(ctx, idx, n, wide);
  }
}

// Resident blocks per SM of a step kernel instantiation at `threads` threads
// (cached per device and block size; at least 1).
template <class Rule, int W, int S1, int S2>
int fused_blocks_per_sm(int threads) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, int> cache;
  int dev = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({dev, threads});
  if (it != cache.end()) return it->second;
  int blocks = 0;
  LOWBIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fused_step_kernel<Rule, W, S1, S2>, threads, 0));
  if (blocks < 1) blocks = 1;
  cache[{dev, threads}] = blocks;
  return blocks;
}

// The storage shapes (weight, state1, state2) that get their own kernel
// instantiation: the trainer's modes and the benchmark's rows. Everything
// else runs the generic instantiation, which reads the shapes at run time
// and computes the same values. Kept short: every entry is one more
// instantiation of the kernel per rule in every program that steps with it.
template <int W, int S1, int S2>
struct fixed_shapes {};
template <class Rule>
struct fixed_shape_list {  // one state (Lion, SGD with momentum)
  using type = std::tuple<fixed_shapes<storage_shape::f32, storage_shape::b8_256, storage_shape::none>,
                          fixed_shapes<storage_shape::bf16, storage_shape::b8_256, storage_shape::none>,
                          fixed_shapes<storage_shape::b8_256, storage_shape::b8_256, storage_shape::none>,
                          fixed_shapes<storage_shape::b4_nested_64, storage_shape::b8_256, storage_shape::none>>;
};
template <bool Decoupled>
struct fixed_shape_list<adam_rule<Decoupled>> {
  using type = std::tuple<fixed_shapes<storage_shape::f32, storage_shape::b8_256, storage_shape::b8_256>,
                          fixed_shapes<storage_shape::bf16, storage_shape::b8_256, storage_shape::b8_256>,
                          fixed_shapes<storage_shape::b8_256, storage_shape::b8_256, storage_shape::b8_256>,
                          fixed_shapes<storage_shape::f32, storage_shape::b4_128, storage_shape::b4_128>>;
};

// Launches the instantiation of fused_step_kernel whose fixed shapes match
// a's storages, else the generic one; grid: one resident wave (at most
// `spans` blocks).
template <class Rule, int W, int S1, int S2>
void launch_fused_step(const fused_step_args& a, const typename Rule::consts& c, const step_tables& tables,
                       float* weight_absmax, int* renest_flag, bool wide, int threads, int64_t spans,
                       cudaStream_t stream) {
  // One wave of resident blocks looping over the tensor: a grid of several
  // partial waves left the last one a third full (ncu, 2026-11-26).
  const int64_t resident = int64_t(cuda::sm_count()) * fused_blocks_per_sm<Rule, W, S1, S2>(threads);
  const int grid = int(spans < resident ? spans : resident);
  const auto kernel = fused_step_kernel<Rule, W, S1, S2>;
  LOWBIT_LAUNCH(kernel, grid, threads, 0, stream)(a, c, tables, weight_absmax, renest_flag, wide);
}

template <int W, int S1, int S2>
bool shapes_match(fixed_shapes<W, S1, S2>, const storage_view& w, const storage_view& s1, const storage_view& s2) {
  return storage_shape::of_view(w) == W && storage_shape::of_view(s1) == S1 && storage_shape::of_view(s2) == S2;
}

// Launches fixed_shapes<W, S1, S2>'s instantiation if a's storages have
// those shapes; returns whether it did.
template <class Rule, int W, int S1, int S2>
bool launch_if_matching(fixed_shapes<W, S1, S2> f, const fused_step_args& a, const typename Rule::consts& c,
                        const step_tables& tables, float* weight_absmax, int* renest_flag, bool wide, int threads,
                        int64_t spans, cudaStream_t stream) {
  if (!shapes_match(f, a.weight, a.state1, a.state2)) return false;
  launch_fused_step<Rule, W, S1, S2>(a, c, tables, weight_absmax, renest_flag, wide, threads, spans, stream);
  return true;
}

// Set (benchmarks, tests) to run every step through the generic
// instantiation, for a side-by-side of the fixed-shape kernels in one binary.
inline std::atomic<bool> generic_step_kernel_only{false};

template <class Rule, class... Shapes>
void launch_matching_fused_step(std::tuple<Shapes...>*, const fused_step_args& a, const typename Rule::consts& c,
                                const step_tables& tables, float* weight_absmax, int* renest_flag, bool wide,
                                int threads, int64_t spans, cudaStream_t stream) {
  const bool launched = !generic_step_kernel_only.load(std::memory_order_relaxed) &&
                        (launch_if_matching<Rule>(Shapes{}, a, c, tables, weight_absmax, renest_flag, wide, threads,
                                                  spans, stream) ||
                         ...);
  if (!launched)
    launch_fused_step<Rule, storage_shape::any, storage_shape::any, storage_shape::any>(
        a, c, tables, weight_absmax, renest_flag, wide, threads, spans, stream);
}

template <class... Shapes>
bool any_shapes_match(std::tuple<Shapes...>*, const storage_view& w, const storage_view& s1, const storage_view& s2) {
  return (shapes_match(Shapes{}, w, s1, s2) || ...);
}

// Chunk sums of squares: one CUDA block of sumsq_chunk_lanes threads per chunk.
template <class T>
__global__ void sumsq_chunk_kernel(const T* __restrict__ g, int64_t n, double* __restrict__ chunk_sum) {
  __shared__ double lane[sumsq_chunk_lanes];
  const int64_t chunks = (n + sumsq_chunk - 1) / sumsq_chunk;
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    lane[threadIdx.x] = sumsq_lane(g, n, c, int(threadIdx.x));
    __syncthreads();
    for (int stride = sumsq_chunk_lanes / 2; stride >= 1; stride /= 2) {
      if (int(threadIdx.x) < stride) lane[threadIdx.x] = add_rn(lane[threadIdx.x], lane[threadIdx.x + stride]);
      __syncthreads();
    }
    if (threadIdx.x == 0) chunk_sum[c] = lane[0];
    __syncthreads();
  }
}

// Sum of chunk results in the host's lane order (one block of 1024 threads).
// (A template, as every kernel of a header: see nested_mean_kernel.)
template <int Unused = 0>
__global__ void sumsq_final_kernel(const double* __restrict__ chunk_sum, int64_t chunks, double* __restrict__ out) {
  __shared__ double lane[sumsq_final_lanes];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < chunks; i += sumsq_final_lanes) s = add_rn(s, chunk_sum[i]);
  lane[threadIdx.x] = s;
  __syncthreads();
  for (int stride = sumsq_final_lanes / 2; stride >= 1; stride /= 2) {
    if (int(threadIdx.x) < stride) lane[threadIdx.x] = add_rn(lane[threadIdx.x], lane[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = lane[0];
}

template <int Unused = 0>
__global__ void widen_to_f32_kernel(float* __restrict__ out, storage_kind kind, const void* __restrict__ in,
                                    int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = load_dense(kind, in, i);
}

// Deferred gradient check: *flag := 1 if any of the n gradient values is
// NaN or infinite (the caller zeroes it first), and the first thread to
// find one adds 1 to *param_skips. Whether a finite float32 value could
// overflow the float64 sum of squares of the synchronous check: no (n
// squares of at most 2^256 stay far below 2^1024), so both checks skip the
// same gradients.
template <class T>
__global__ void nonfinite_flag_kernel(const T* __restrict__ g, int64_t n, int* flag, int* param_skips) {
  bool bad = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    bad = bad || !(fabsf(to_float(g[i])) <= float_max);
  if (bad && atomicExch(flag, 1) == 0 && param_skips != nullptr) atomicAdd(param_skips, 1);
}

}  // namespace cuda_detail

// Queues on `stream` a check of n gradient values of type t for NaN and
// infinity with no host synchronization: *flag (device memory) is zeroed,
// then set to 1 if one is found, and *param_skips (device memory, may be
// null) then gains 1. A step launched after it with fused_step_args::
// skip_flag = flag changes nothing in that case.
inline void cuda_queue_gradient_check(const void* grad, dtype t, int64_t n, int* flag, int* param_skips,
                                      cudaStream_t stream) {
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream));
  if (n == 0) return;
  const int64_t blocks = (n + 255) / 256, max_grid = int64_t(cuda::sm_count()) * 8;
  const int grid = int(blocks < max_grid ? blocks : max_grid);
  dispatch_float_dtype(t, "gradient", [&](auto tag) {
    using T = decltype(tag);
    LOWBIT_LAUNCH(cuda_detail::nonfinite_flag_kernel<T>, grid, 256, 0, stream)(static_cast<const T*>(grad), n, flag,
                                                                                param_skips);
  });
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

// Gradient statistics of several tensors on the GPU: the kernels of every
// tensor are queued, then one copy and one synchronization of `stream`
// return all results (a step over hundreds of tensors waits once).
inline std::vector<grad_stats> cuda_grad_stats_all(const std::vector<const void*>& grads,
                                                   const std::vector<dtype>& types, const std::vector<int64_t>& n,
                                                   cudaStream_t stream) {
  const size_t count = grads.size();
  std::vector<grad_stats> out(count);
  std::vector<int64_t> offset(count + 1, 0);  // chunk-sum slots of tensor i start at offset[i]
  for (size_t i = 0; i < count; ++i) offset[i + 1] = offset[i] + (n[i] + sumsq_chunk - 1) / sumsq_chunk;
  if (offset[count] == 0) return out;
  double* scratch = nullptr;  // chunk sums of all tensors, then one total per tensor
  LOWBIT_CUDA_CHECK(cudaMallocAsync(&scratch, size_t(offset[count] + int64_t(count)) * sizeof(double), stream));
  double* totals = scratch + offset[count];
  LOWBIT_CUDA_CHECK(cudaMemsetAsync(totals, 0, count * sizeof(double), stream));
  const int64_t max_grid = int64_t(cuda::sm_count()) * 32;
  for (size_t i = 0; i < count; ++i) {
    const int64_t chunks = offset[i + 1] - offset[i];
    if (chunks == 0) continue;
    const int grid = int(chunks < max_grid ? chunks : max_grid);
    dispatch_float_dtype(types[i], "gradient", [&](auto t) {
      using T = decltype(t);
      LOWBIT_LAUNCH(cuda_detail::sumsq_chunk_kernel<T>, grid, sumsq_chunk_lanes, 0, stream)(
          static_cast<const T*>(grads[i]), n[i], scratch + offset[i]);
    });
    LOWBIT_CUDA_CHECK(cudaGetLastError());
    LOWBIT_LAUNCH(cuda_detail::sumsq_final_kernel<0>, 1, sumsq_final_lanes, 0, stream)(scratch + offset[i], chunks,
                                                                                  totals + i);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
  }
  std::vector<double> host(count, 0.0);
  LOWBIT_CUDA_CHECK(cudaMemcpyAsync(host.data(), totals, count * sizeof(double), cudaMemcpyDeviceToHost, stream));
  LOWBIT_CUDA_CHECK(cudaFreeAsync(scratch, stream));
  LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (size_t i = 0; i < count; ++i) {
    out[i].sumsq = host[i];
    out[i].finite = host[i] <= 1.7976931348623157e308;
  }
  return out;
}

// Gradient statistics of one tensor on the GPU (synchronizes `stream`).
inline grad_stats cuda_grad_stats(const void* grad, dtype type, int64_t n, cudaStream_t stream) {
  return cuda_grad_stats_all({grad}, {type}, {n}, stream)[0];
}

// The optimizer-facing form: statistics of every gradient view of a step.
inline std::vector<grad_stats> cuda_grad_stats_all(const std::vector<tensor_view>& grads,
                                                   const std::vector<int64_t>& n, cudaStream_t stream) {
  std::vector<const void*> ptrs;
  std::vector<dtype> types;
  for (const tensor_view& g : grads) {
    ptrs.push_back(g.data);
    types.push_back(g.type);
  }
  return cuda_grad_stats_all(ptrs, types, n, stream);
}

// Runs Rule's fused update over a.weight (all storages in device-accessible
// memory) on `stream`.
template <class Rule>
void cuda_fused_step(const fused_step_args& a, const typename Rule::consts& c, cudaStream_t stream) {
  const int64_t n = a.weight.n;
  if (n == 0) return;
  cuda_detail::step_tables tables{};
  if (a.weight_tables) tables.weight = *a.weight_tables;
  if (a.state1_tables) tables.state1 = *a.state1_tables;
  if (a.state2_tables) tables.state2 = *a.state2_tables;
  const auto& map = signed_dynamic_map();
  for (int i = 0; i < 256; ++i) tables.nested_map.value[i] = map[size_t(i)];
  const storage_view* sts[3] = {&a.weight, &a.state1, &a.state2};
  const format_tables* tabs[3] = {a.weight_tables, a.state1_tables, a.state2_tables};
  for (int s = 0; s < 3; ++s) {
    if (!sts[s]->is_blockwise() || !tabs[s]) continue;
    const cpu::floor_index_table& ft = cpu::floor_index_for(sts[s]->q.layout.fmt, tabs[s]->sorted);
    // The kernel has no binary-search fallback (it cost registers and code
    // in every instantiation); every lowbit format's table is usable
    // (tests/formats/test_floor_index.cpp), so this is a guard for new ones.
    require(ft.usable, errc::unsupported,
            std::string("the CUDA optimizer step cannot search the codebook of format ") +
                format_name(sts[s]->q.layout.fmt) + " (more than two values in a bucket of cpu/floor_index.hpp)");
    for (int i = 0; i < cuda_detail::n_buckets; ++i) tables.bucket[s][i] = uint8_t(ft.start[i]);
  }
  bool wide = cuda_detail::wide_aligned(a.weight) && cuda_detail::wide_aligned(a.state1) &&
              cuda_detail::wide_aligned(a.state2) && cuda_detail::wide_aligned(a.weight_copy);
  wide = wide && (reinterpret_cast<uintptr_t>(a.grad) & 15u) == 0;

  const bool nested_weight = a.weight.is_blockwise() && a.weight.q.layout.nested;
  const int64_t nb = nested_weight ? a.weight.q.layout.n_blocks() : 0;
  float* weight_absmax = a.weight.is_blockwise() ? a.weight.q.absmax : nullptr;
  int* renest_flag = nullptr;  // stable nested scales: set when all scales must be re-quantized
  if (nested_weight) {
    // float32 scratch of every block's new scale, then the flag
    LOWBIT_CUDA_CHECK(cudaMallocAsync(&weight_absmax, size_t(nb) * sizeof(float) + sizeof(int), stream));
    renest_flag = reinterpret_cast<int*>(weight_absmax + nb);
    LOWBIT_CUDA_CHECK(cudaMemsetAsync(renest_flag, 0, sizeof(int), stream));
  }

  const int64_t tile = fused_tile_size(a);
  const int threads = int(tile / cuda_detail::per_thread > 256 ? tile / cuda_detail::per_thread : 256);
  const int64_t spans = (n + int64_t(threads) * cuda_detail::per_thread - 1) / (int64_t(threads) * cuda_detail::per_thread);
  cuda_detail::launch_matching_fused_step<Rule>(
      static_cast<typename cuda_detail::fixed_shape_list<Rule>::type*>(nullptr), a, c, tables, weight_absmax,
      renest_flag, wide, threads, spans, stream);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
  if (nested_weight) {
    // The nested parameters are re-quantized only when the kernel raised
    // the flag (the kernels read it and return otherwise): with stable
    // scales when a block needs it, else whenever the step ran (not after a
    // deferred check skipped it).
    const quantized_view& q = a.weight.q;
    const int* only_if = renest_flag;
    LOWBIT_LAUNCH(cuda::detail::nested_mean_kernel<0>, 1, mean_lanes, 0, stream)(weight_absmax, nb, q.nested_offset,
                                                                              only_if);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
    const int64_t chunks = q.layout.n_nested_blocks();
    const int g2 = int(chunks < int64_t(cuda::sm_count()) * 16 ? chunks : int64_t(cuda::sm_count()) * 16);
    LOWBIT_LAUNCH(cuda::detail::nested_encode_kernel<0>, g2, nested_block_size, 0, stream)(
        weight_absmax, nb, q.nested_offset, q.absmax_codes, q.nested_absmax, tables.nested_map, only_if);
    LOWBIT_CUDA_CHECK(cudaGetLastError());
    LOWBIT_CUDA_CHECK(cudaFreeAsync(weight_absmax, stream));
  }
}

// Whether a step of Rule over these storages runs a fixed-shape
// instantiation of the kernel (cuda_detail::fixed_shape_list) rather than
// the generic one; both compute the same bytes. For tests and diagnostics.
template <class Rule>
bool has_fixed_shape_kernel(const storage_view& weight, const storage_view& state1, const storage_view& state2) {
  return cuda_detail::any_shapes_match(static_cast<typename cuda_detail::fixed_shape_list<Rule>::type*>(nullptr),
                                       weight, state1, state2);
}

// Fills an fp32 master copy from 16-bit working weights on the device.
inline void cuda_widen_to_f32(float* out, const storage_view& in, cudaStream_t stream) {
  if (in.n == 0) return;
  const int grid = int(in.n / 256 + 1 < int64_t(cuda::sm_count()) * 16 ? in.n / 256 + 1 : int64_t(cuda::sm_count()) * 16);
  LOWBIT_LAUNCH(cuda_detail::widen_to_f32_kernel<0>, grid, 256, 0, stream)(out, in.kind, in.data, in.n);
  LOWBIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace optim
}  // namespace lowbit
