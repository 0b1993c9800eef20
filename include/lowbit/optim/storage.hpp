// lowbit/optim/storage.hpp
// How one optimizer-managed tensor (a weight, or a state such as Adam's m or
// v) is stored: a run-time descriptor (float32, bfloat16, float16, or a
// blockwise quantized layout) plus the per-format tables the fused step needs
// to decode it and to re-encode it by nearest or stochastic rounding. The
// compile-time policies of policies.hpp choose these descriptors; the CPU and
// CUDA step executors read and write through them with the shared element
// math of formats/.
#pragma once

#include <cstdint>

#include "../core/dtype.hpp"
#include "../core/view.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/layout.hpp"
#include "../formats/nested_scales.hpp"
#include "../formats/quantized_view.hpp"
#include "../formats/stochastic_rounding.hpp"

namespace lowbit {
namespace optim {

enum class storage_kind : uint8_t { none, f32, bf16, f16, blockwise };

inline const char* storage_kind_name(storage_kind k) {
  switch (k) {
    case storage_kind::none: return "none";
    case storage_kind::f32: return "float32";
    case storage_kind::bf16: return "bfloat16";
    case storage_kind::f16: return "float16";
    case storage_kind::blockwise: return "blockwise";
  }
  return "?";
}

// A non-owning view of one stored tensor of n elements.
struct storage_view {
  storage_kind kind = storage_kind::none;
  int64_t n = 0;
  void* data = nullptr;  // values (f32 / bf16 / f16) or packed codes (blockwise)
  quantized_view q;      // blockwise only (q.codes == data)

  LOWBIT_HD bool is_blockwise() const { return kind == storage_kind::blockwise; }
  // Bytes this tensor occupies (codes + scales + nested scales for blockwise).
  int64_t bytes() const {
    switch (kind) {
      case storage_kind::none: return 0;
      case storage_kind::f32: return 4 * n;
      case storage_kind::bf16:
      case storage_kind::f16: return 2 * n;
      case storage_kind::blockwise: return q.layout.total_bytes();
    }
    return 0;
  }
};

// Elements [first, first + count) of s as a storage of their own (no copy);
// blockwise storages through lowbit::slice (first must start a block).
inline storage_view storage_part(const storage_view& s, int64_t first, int64_t count) {
  storage_view p = s;
  p.n = count;
  switch (s.kind) {
    case storage_kind::none: break;
    case storage_kind::f32: p.data = static_cast<float*>(s.data) + first; break;
    case storage_kind::bf16:
    case storage_kind::f16: p.data = static_cast<uint16_t*>(s.data) + first; break;
    case storage_kind::blockwise:
      p.q = slice(s.q, first, count);
      p.data = p.q.codes;
      break;
  }
  return p;
}

inline storage_view dense_storage(const tensor_view& v, const char* what) {
  require_contiguous(v, what);
  storage_view s;
  s.n = v.numel();
  s.data = v.data;
  switch (v.type) {
    case dtype::f32: s.kind = storage_kind::f32; break;
    case dtype::bf16: s.kind = storage_kind::bf16; break;
    case dtype::f16: s.kind = storage_kind::f16; break;
    default:
      throw error(errc::invalid_argument,
                  std::string(what) + " must be float32, bfloat16 or float16, got " + dtype_name(v.type));
  }
  return s;
}

inline storage_view blockwise_storage(const quantized_view& q, const char* what) {
  q.validate(what);
  storage_view s;
  s.kind = storage_kind::blockwise;
  s.n = q.layout.n;
  s.data = q.codes;
  s.q = q;
  return s;
}

// Decode and encode tables of one blockwise format (about 2.3 KB).
struct format_tables {
  code_table decode;
  sorted_codebook sorted;
};

inline format_tables make_format_tables(format f) { return {make_code_table(f), make_sorted_codebook(f)}; }

// ---- element access shared by the CPU and CUDA steps --------------------------------

// A bf16 / f16 storage element: its 16 bits as a float, and a float rounded
// to them (stochastically with `random_bits` when `stochastic`, else to
// nearest). The CUDA step's wide accesses pack and unpack these bits.
LOWBIT_HD float widen16(storage_kind kind, uint16_t bits) {
  return kind == storage_kind::bf16 ? to_float(bf16{bits}) : to_float(fp16{bits});
}

LOWBIT_HD uint16_t narrow16(storage_kind kind, float v, bool stochastic, uint32_t random_bits) {
  if (kind == storage_kind::bf16) return (stochastic ? to_bf16_stochastic(v, random_bits) : to_bf16(v)).bits;
  return (stochastic ? to_fp16_stochastic(v, random_bits) : to_fp16(v)).bits;
}

LOWBIT_HD float load_dense(storage_kind kind, const void* data, int64_t i) {
  switch (kind) {
    case storage_kind::f32: return static_cast<const float*>(data)[i];
    case storage_kind::bf16:
    case storage_kind::f16: return widen16(kind, static_cast<const uint16_t*>(data)[i]);
    default: return 0.0f;
  }
}

// Stores v rounded to the storage's dtype: stochastically with `random_bits`
// when `stochastic`, else to nearest.
LOWBIT_HD void store_dense(storage_kind kind, void* data, int64_t i, float v, bool stochastic, uint32_t random_bits) {
  switch (kind) {
    case storage_kind::f32: static_cast<float*>(data)[i] = v; break;
    case storage_kind::bf16:
    case storage_kind::f16: static_cast<uint16_t*>(data)[i] = narrow16(kind, v, stochastic, random_bits); break;
    default: break;
  }
}

LOWBIT_HD int load_code(const uint8_t* codes, int64_t i, bool four_bit) {
  if (!four_bit) return codes[i];
  const uint8_t b = codes[i >> 1];
  return (i & 1) ? (b & 15) : (b >> 4);
}

// Decoded scale of block b of a blockwise storage (`map` = signed dynamic map
// for nested scales).
LOWBIT_HD float stored_block_scale(const quantized_view& q, int64_t b, const float* map) {
  if (!q.layout.nested) return q.absmax[b];
  return decode_nested_scale(q.absmax_codes[b], q.nested_absmax[b / nested_block_size], *q.nested_offset, map);
}

LOWBIT_HD uint8_t encode_code(float u, bool stochastic, uint32_t random_bits, const sorted_codebook& t) {
  return stochastic ? encode_stochastic(u, random_bits, t.value, t.code, t.size, t.steps)
                    : encode_nearest(u, t.value, t.code, t.size, t.steps);
}

}  // namespace optim
}  // namespace lowbit
