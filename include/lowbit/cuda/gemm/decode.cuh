// lowbit/cuda/gemm/decode.cuh
// Weight decoding for the CUDA dequant-GEMM kernels: turns packed codes of a
// blockwise-quantized W into float32 values that are bit-identical to what
// cuda::dequantize / cpu::dequantize produce, value = mul_rn(table[code],
// scale), in the forms the kernels need (one element at any flat index, or
// the 8 / 4 elements of one 32-bit code word), plus the conversion of value
// pairs to packed bfloat16 / float16 for tensor-core operands.
//
// Four decoders, chosen per format at compile time (decode_kind_of):
//
//  * table4 (nf4, fp4, dynamic4, ulinear4): a 256-entry "pair table" in
//    shared memory, indexed by a whole code byte and holding the two values
//    {table[byte >> 4], table[byte & 15]}: one 64-bit shared load decodes two
//    elements, so the per-element cost is half a load plus the scale
//    multiply. A plain 256 x float2 table would see bank conflicts (16 lanes
//    of a 64-bit access phase hit 16 bank pairs at random: about 3-way on
//    average), so the table is stored 16 times, interleaved: entry e of copy
//    c sits at float2 index e * 16 + c and lane l reads copy l % 16. Every
//    lane of a phase then reads its own bank pair whatever its byte is:
//    conflict-free by construction, 32 KiB per CTA. The alternatives were
//    weighed: a 16-entry table (conflict-free without copies) needs one load
//    and two integer ops per element instead of per byte; a register table
//    read with byte permutes (prmt) needs about 4 integer ops per element for
//    16 two-byte entries (two 8-entry halves, a merge on the code's bit 3,
//    then interleaving), more than the pair table's 1.
//  * table8 (dynamic8, udynamic8): the 256-entry float table, stored 32
//    times interleaved (entry e of copy c at e * 32 + c, lane l reads copy
//    l): conflict-free, 32 KiB.
//  * int8_magic / int4_magic (int8, int4): no table. The integer q of a code
//    comes from the magic-number conversion (code bits OR-ed into the
//    mantissa of 2^23, then 2^23 + bias subtracted: exact, two's complement
//    turned into offset binary by one XOR per word), and the format's value
//    q/127 (q/7) as a correctly rounded division via one multiply by the
//    rounded reciprocal and one FMA Newton correction (exact_div_small).
//    The correction is not optional: q * (1/127.f) differs from q / 127.f
//    for 20 of the 256 codes (and q * (1/7.f) for q = +-3, +-6), and lowbit
//    defines the decoded value through the division (codebooks.hpp), so the
//    bits must match. Cost per element: 1-2 integer ops, 1 add, 1 multiply,
//    2 FMAs, against a table lookup: no shared memory, no bank conflicts, no
//    table setup per CTA. Which is faster for int4 is a benchmark question
//    (bench_dequant_gemm_cuda compares int4 and nf4 on the same shapes).
//
// Block scales are applied per element as mul_rn(value, scale), never
// folded into the dot product, because that is how dequantize rounds;
// nested (double-quantized) scales are decoded with formats/nested_scales.hpp
// from a 256-entry map in shared memory.
//
// Everything below that does not touch shared memory through threadIdx is a
// __host__ __device__ function, so the GPU test checks the decoders on the
// host against make_code_table() for every code, bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../../core/config.hpp"
#include "../../core/dtype.hpp"
#include "../../formats/codebooks.hpp"
#include "../../formats/format.hpp"
#include "../../formats/layout.hpp"
#include "../../formats/nested_scales.hpp"

namespace lowbit {
namespace cuda {
namespace gemm_detail {

enum class decode_kind : int { table4, int4_magic, int8_magic, table8 };

LOWBIT_HD constexpr decode_kind decode_kind_of(format f) {
  return f == format::int4   ? decode_kind::int4_magic
         : f == format::int8 ? decode_kind::int8_magic
         : is_4bit(f)        ? decode_kind::table4
                             : decode_kind::table8;
}
LOWBIT_HD constexpr bool kind_is_4bit(decode_kind d) {
  return d == decode_kind::table4 || d == decode_kind::int4_magic;
}
LOWBIT_HD constexpr bool kind_uses_table(decode_kind d) {
  return d == decode_kind::table4 || d == decode_kind::table8;
}
// Elements decoded from one 32-bit code word.
LOWBIT_HD constexpr int kind_elems_per_word(decode_kind d) { return kind_is_4bit(d) ? 8 : 4; }

constexpr int pair_copies = 16;    // table4: float2 [256 bytes][16 copies]
constexpr int table8_copies = 32;  // table8: float [256 codes][32 copies]
constexpr int table_smem_bytes = 32768;
constexpr int map_smem_bytes = 256 * 4;  // nested-scale map
static_assert(256 * pair_copies * 8 == table_smem_bytes, "pair table size");
static_assert(256 * table8_copies * 4 == table_smem_bytes, "table8 size");
static_assert(nested_block_size == 256, "nested scale index uses b >> 8");

// Shared-memory bytes of a decoder (table + nested map), before any tile.
LOWBIT_HD constexpr int decode_smem_bytes(decode_kind d) { return (kind_uses_table(d) ? table_smem_bytes : 0) + map_smem_bytes; }

// ---- byte permute (prmt) with a host twin ------------------------------------
// Selector nibbles must have bit 3 clear (plain byte selection).
LOWBIT_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const uint64_t in = uint64_t(x) | (uint64_t(y) << 32);
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t((in >> (8 * ((s >> (4 * n)) & 7u))) & 0xFFu) << (8 * n);
  return r;
#endif
}

// q / d correctly rounded for integers |q| <= 128 and d in {7, 127}: r =
// q * inv is within one ulp of q/d; e = fma(-r, d, q) is its exact residual
// (an FMA residual of a product is exact), and r + e * inv rounds to the
// correctly rounded quotient. Checked exhaustively for every code of int4
// and int8 (see the GPU test's host checks).
LOWBIT_HD float exact_div_small(float q, float d, float inv_d) {
  const float r = mul_rn(q, inv_d);
  const float e = fmaf(-r, d, q);
  return fmaf(e, inv_d, r);
}

// int8 code byte u (q = int8_t(u)): 0x4B000000 | (u ^ 0x80) is the float
// 2^23 + (q + 128) exactly (at 2^23 the float ulp is 1, so the low mantissa
// byte is an integer); subtracting 2^23 + 128 = 8388736 leaves q exactly.
LOWBIT_HD float int8_q(uint32_t u) { return add_rn(bits_float(0x4B000000u | ((u ^ 0x80u) & 0xFFu)), -8388736.0f); }
// int4 code nibble c (q = two's-complement nibble): c ^ 8 is q + 8 (offset
// binary); same trick with 2^23 + 8.
LOWBIT_HD float int4_q(uint32_t c) { return add_rn(bits_float(0x4B000000u | ((c ^ 8u) & 0xFu)), -8388616.0f); }

LOWBIT_HD float int8_code_value(uint32_t u) {
  constexpr float inv = 1.0f / 127.0f;
  return exact_div_small(int8_q(u), 127.0f, inv);
}
LOWBIT_HD float int4_code_value(uint32_t c) {
  constexpr float inv = 1.0f / 7.0f;
  return exact_div_small(int4_q(c), 7.0f, inv);
}

// ---- the decoder state a thread reads ----------------------------------------
// pair / tab point at the interleaved shared tables (host arrays in tests);
// copy is the table copy this thread reads (its lane id).
struct decoder {
  const float2* pair = nullptr;  // table4: [256][pair_copies]
  const float* tab = nullptr;    // table8: [256][table8_copies]
  int copy = 0;
};

// Entry idx of the interleaved tables, built from the format's code table.
LOWBIT_HD float2 pair_entry(const float* table, int idx) {
  const int byte = idx / pair_copies;
  return make_float2(table[(byte >> 4) & 15], table[byte & 15]);
}
LOWBIT_HD float table8_entry(const float* table, int idx) { return table[(idx / table8_copies) & 255]; }

// Normalized value of one code (a nibble for 4-bit formats).
template <decode_kind D>
LOWBIT_HD float code_value(const decoder& d, uint32_t code) {
  if constexpr (D == decode_kind::table4) return d.pair[(((code & 15u) << 4) * pair_copies) + uint32_t(d.copy)].x;
  else if constexpr (D == decode_kind::table8) return d.tab[(code & 255u) * table8_copies + uint32_t(d.copy)];
  else if constexpr (D == decode_kind::int4_magic) return int4_code_value(code);
  else return int8_code_value(code);
}

// Byte offset of the row of code byte j of w in an interleaved table whose
// rows are 128 bytes (the pair table: 16 float2 copies; table8: 32 float
// copies): byte_j * 128, from one shift and one mask, so a lookup costs two
// integer ops and the load.
LOWBIT_HD uint32_t table_row_offset(uint32_t w, int j) {
  return (j == 0 ? (w << 7) : (w >> (8 * j - 7))) & 0x7F80u;
}
static_assert(pair_copies * 8 == 128 && table8_copies * 4 == 128, "table rows of 128 bytes");

// The normalized values (table[code], before the block scale) of the
// elements of one 32-bit code word (the bytes at increasing addresses,
// little-endian): 8 elements for 4-bit kinds (byte j holds element 2j in its
// high nibble, 2j+1 in its low nibble), 4 for 8-bit kinds.
template <decode_kind D>
LOWBIT_HD void decode_word_values(const decoder& d, uint32_t w, float* out) {
  if constexpr (D == decode_kind::table4) {
    // the table's base is the same for the whole CTA; the lane's copy (< 128
    // bytes) is OR-ed into the row offset in the same logic op as its mask
    const unsigned char* base = reinterpret_cast<const unsigned char*>(d.pair);
    const uint32_t lane = uint32_t(d.copy) * 8u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int j = 0; j < 4; ++j) {
      const float2 p = *reinterpret_cast<const float2*>(base + (table_row_offset(w, j) | lane));
      out[2 * j] = p.x;
      out[2 * j + 1] = p.y;
    }
  } else if constexpr (D == decode_kind::table8) {
    const unsigned char* base = reinterpret_cast<const unsigned char*>(d.tab);
    const uint32_t lane = uint32_t(d.copy) * 4u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int j = 0; j < 4; ++j) out[j] = *reinterpret_cast<const float*>(base + (table_row_offset(w, j) | lane));
  } else if constexpr (D == decode_kind::int4_magic) {
    constexpr float inv = 1.0f / 7.0f;
    const uint32_t wx = w ^ 0x88888888u;  // every nibble to offset binary at once
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int e = 0; e < 8; ++e) {
      const int shift = 8 * (e >> 1) + ((e & 1) ? 0 : 4);
      const float q = add_rn(bits_float(((wx >> shift) & 0xFu) | 0x4B000000u), -8388616.0f);
      out[e] = exact_div_small(q, 7.0f, inv);
    }
  } else {
    constexpr float inv = 1.0f / 127.0f;
    const uint32_t wx = w ^ 0x80808080u;  // every byte to offset binary at once
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int j = 0; j < 4; ++j) {
      // bytes [code_j, 0x00, 0x00, 0x4B]: one prmt builds the float 2^23 + q + 128
      const float q = add_rn(bits_float(byte_perm(wx, 0x4B000000u, 0x7440u | uint32_t(j))), -8388736.0f);
      out[j] = exact_div_small(q, 127.0f, inv);
    }
  }
}

// The same elements times `scale`, rounded once: what dequantize writes.
template <decode_kind D>
LOWBIT_HD void decode_word(const decoder& d, uint32_t w, float scale, float* out) {
  constexpr int n = kind_elems_per_word(D);
  float v[n];
  decode_word_values<D>(d, w, v);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < n; ++e) out[e] = mul_rn(v[e], scale);
}

// ---- the weight as kernels see it --------------------------------------------
struct weight_args {
  const uint8_t* codes = nullptr;
  const float* absmax = nullptr;         // float32 scales (not nested)
  const uint8_t* absmax_codes = nullptr;  // nested: one code per block
  const float* nested_absmax = nullptr;   // nested: one float per 256 blocks
  const float* nested_offset = nullptr;   // nested: one float
  int64_t rows = 0, cols = 0;             // W is rows x cols, row-major (N x K)
  int bs_log2 = 6;                        // log2(block size)
  bool nested = false;
};

// The raw scale operands of block b, loaded early so their latency overlaps
// other work; finish_scale turns them into the block scale.
struct scale_raw {
  float a = 0.0f;      // absmax, or nested_absmax[b >> 8]
  uint32_t code = 0;   // nested: absmax_codes[b]
};

LOWBIT_HD scale_raw fetch_scale(const weight_args& w, int64_t b) {
  scale_raw r;
  if (w.nested) {
    r.code = w.absmax_codes[b];
    r.a = w.nested_absmax[b >> 8];
  } else {
    r.a = w.absmax[b];
  }
  return r;
}

// map: the signed dynamic map (shared memory on the GPU); offset: *nested_offset.
LOWBIT_HD float finish_scale(const weight_args& w, const scale_raw& r, const float* map, float offset) {
  return w.nested ? decode_nested_scale(uint8_t(r.code), r.a, offset, map) : r.a;
}

// Code of element i (flat row-major index into W).
template <decode_kind D>
LOWBIT_HD uint32_t code_at(const weight_args& w, int64_t i) {
  if constexpr (kind_is_4bit(D)) {
    const uint32_t byte = w.codes[i >> 1];
    return (i & 1) ? (byte & 15u) : (byte >> 4);
  } else {
    return w.codes[i];
  }
}

// Decoded element i: the value cuda::dequantize writes for it as float32.
template <decode_kind D>
LOWBIT_HD float decode_at(const decoder& d, const weight_args& w, int64_t i, const float* map, float offset) {
  const float s = finish_scale(w, fetch_scale(w, i >> w.bs_log2), map, offset);
  return mul_rn(code_value<D>(d, code_at<D>(w, i)), s);
}

// ---- shared-memory setup (device) ----------------------------------------------
// Fills the decoder tables and the nested map at smem (decode_smem_bytes(D)
// bytes: table first, then the map) from the kernel's __grid_constant__
// tables, and returns the decoder of the calling thread. The caller
// synchronizes (__syncthreads) before the first lookup. Consecutive threads
// fill consecutive entries, which share one or two source values, so the
// parameter-space reads do not diverge.
template <decode_kind D>
__device__ __forceinline__ decoder setup_decoder(unsigned char* smem, const float* table, const float* map_src,
                                                 bool nested, float** map_out) {
  decoder d;
  d.copy = int(threadIdx.x & 31u);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  if constexpr (D == decode_kind::table4) {
    float2* pair = reinterpret_cast<float2*>(smem);
    for (int i = tid; i < 256 * pair_copies; i += nt) pair[i] = pair_entry(table, i);
    d.pair = pair;
    d.copy = int(threadIdx.x & (pair_copies - 1));
  } else if constexpr (D == decode_kind::table8) {
    float* tab = reinterpret_cast<float*>(smem);
    for (int i = tid; i < 256 * table8_copies; i += nt) tab[i] = table8_entry(table, i);
    d.tab = tab;
  }
  float* map = reinterpret_cast<float*>(smem + (kind_uses_table(D) ? table_smem_bytes : 0));
  if (nested)
    for (int i = tid; i < 256; i += nt) map[i] = map_src[i];
  *map_out = map;
  return d;
}

// ---- packing pairs for tensor-core operands -----------------------------------
// Round two floats to T (round to nearest even, as lowbit::from_float<T> and
// cuda::dequantize do) and pack them, a in the low half (lower address).
template <class T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<bf16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  uint32_t r;
  memcpy(&r, &h, sizeof r);  // a bit copy (no aliasing through a cast); one register move
  return r;
}
template <>
__device__ __forceinline__ uint32_t pack2<fp16>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  uint32_t r;
  memcpy(&r, &h, sizeof r);
  return r;
}

// ---- dense operands of any float dtype -----------------------------------------
// Activations, outputs and bias are addressed through (pointer, dtype) so
// that kernels are not instantiated per dtype combination; the switch is
// uniform across a warp.
LOWBIT_HD float load_as_float(const void* p, dtype t, int64_t i) {
  switch (t) {
    case dtype::bf16: return to_float(static_cast<const bf16*>(p)[i]);
    case dtype::f16: return to_float(static_cast<const fp16*>(p)[i]);
    case dtype::f64: return float(static_cast<const double*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

LOWBIT_HD void store_from_float(void* p, dtype t, int64_t i, float v) {
  switch (t) {
    case dtype::bf16: static_cast<bf16*>(p)[i] = to_bf16(v); break;
    case dtype::f16: static_cast<fp16*>(p)[i] = to_fp16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace lowbit
