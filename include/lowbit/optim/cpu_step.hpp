// lowbit/optim/cpu_step.hpp
// The CPU executor of the fused optimizer step. Tiles (see fused_step.hpp)
// are spread over threads; in each tile the weight and states are decoded
// into small float buffers, the rule is applied per element, then states are
// re-encoded with fresh block scales (nearest rounding) and the weight is
// written back (stochastic rounding for bf16 / quantized weights). Every
// element operation is the shared host/device code, so the CUDA executor
// produces the same bits. Also: the gradient pre-pass (finite check and
// deterministic sum of squares) used for skipping and global-norm clipping.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../core/reduce.hpp"
#include "../core/rng.hpp"
#include "../cpu/floor_index.hpp"
#include "../cpu/parallel.hpp"
#include "../cpu/quantize.hpp"
#include "../cpu/vector_codec.hpp"
#include "fused_step.hpp"
#include "stable_scales.hpp"
#include "storage.hpp"

namespace lowbit {
namespace optim {

struct grad_stats {
  bool finite = true;
  double sumsq = 0.0;  // deterministic (core/reduce.hpp order); meaningless when !finite
};

// One pass over a host gradient: finiteness and sum of squares.
inline grad_stats cpu_grad_stats(const void* grad, dtype type, int64_t n) {
  grad_stats out;
  if (n == 0) return out;
  const int64_t chunks = (n + sumsq_chunk - 1) / sumsq_chunk;
  std::vector<double> chunk_sum(size_t(chunks), 0.0);
  dispatch_float_dtype(type, "gradient", [&](auto t) {
    using T = decltype(t);
    const T* g = static_cast<const T*>(grad);
    cpu::parallel_for(chunks, 8, [&](int64_t c0, int64_t c1) {
      std::vector<double> lane(sumsq_chunk_lanes);
      for (int64_t c = c0; c < c1; ++c) {
        // row by row: lane l accumulates elements l, l + 256, l + 512, ... in
        // increasing order, exactly sumsq_lane's order, but with contiguous
        // (vectorizable) loads
        std::fill(lane.begin(), lane.end(), 0.0);
        const int64_t begin = c * sumsq_chunk, end = std::min<int64_t>(n, begin + sumsq_chunk);
        for (int64_t r = begin; r < end; r += sumsq_chunk_lanes) {
          const int width = int(std::min<int64_t>(sumsq_chunk_lanes, end - r));
          for (int l = 0; l < width; ++l) {
            const double x = double(to_float(g[r + l]));
            lane[size_t(l)] += x * x;
          }
        }
        chunk_sum[size_t(c)] = tree_sum(lane);
      }
    });
  });
  out.sumsq = sum_chunk_results(chunk_sum);
  out.finite = out.sumsq <= 1.7976931348623157e308;  // NaN/inf in g (or overflow) poisons the sum
  return out;
}

namespace detail {

// out[j] = element s + j of a dense buffer, with the dtype switch outside the
// loop so each loop vectorizes.
inline void load_dense_run(storage_kind kind, const void* data, int64_t s, int64_t cnt, float* out) {
  switch (kind) {
    case storage_kind::f32: {
      const float* p = static_cast<const float*>(data) + s;
      for (int64_t j = 0; j < cnt; ++j) out[j] = p[j];
      break;
    }
    case storage_kind::bf16: {
      const bf16* p = static_cast<const bf16*>(data) + s;
      for (int64_t j = 0; j < cnt; ++j) out[j] = to_float(p[j]);
      break;
    }
    case storage_kind::f16: {
      const fp16* p = static_cast<const fp16*>(data) + s;
      for (int64_t j = 0; j < cnt; ++j) out[j] = to_float(p[j]);
      break;
    }
    default:
      for (int64_t j = 0; j < cnt; ++j) out[j] = 0.0f;
  }
}

// Decodes elements [s, s+cnt) of a storage into out.
inline void load_tile(const storage_view& st, const format_tables* tab, int64_t s, int64_t cnt, float* out) {
  if (st.kind == storage_kind::none) {
    std::fill(out, out + cnt, 0.0f);
    return;
  }
  if (!st.is_blockwise()) {
    load_dense_run(st.kind, st.data, s, cnt, out);
    return;
  }
  const quantized_view& q = st.q;
  const int bs = q.layout.block_size;
  const bool four = is_4bit(q.layout.fmt);
  const float* map = signed_dynamic_map().data();
  // Codes are widened to int first (load_code's arithmetic, spelled out),
  // then decoded: both loops vectorize, a gather indexed by bytes did not.
  float decode[256];  // a local copy: gathers from it vectorize, through tab they did not
  std::copy(tab->decode.value, tab->decode.value + 256, decode);
  const uint8_t* codes = q.codes;
  int idx[max_block_size];
  for (int64_t j0 = 0; j0 < cnt; j0 += bs) {
    const float scale = stored_block_scale(q, (s + j0) / bs, map);
    const int len = int(std::min<int64_t>(cnt - j0, bs));
    const int64_t base = s + j0;
    if (!four) {
      for (int k = 0; k < len; ++k) idx[k] = codes[base + k];
    } else {  // base is even; an odd len reads the pad nibble into idx[len], unused
      for (int k = 0; k < (len + 1) / 2; ++k) {
        const int byte = codes[(base >> 1) + k];
        idx[2 * k] = byte >> 4;
        idx[2 * k + 1] = byte & 15;
      }
    }
    for (int k = 0; k < len; ++k) out[j0 + k] = mul_rn(decode[idx[k]], scale);
  }
}

// Encodes vals into elements [s, s+cnt) of a storage. Blockwise storages get
// fresh block scales, written to `absmax_out` (the storage's own absmax, or a
// float32 scratch when its scales are nested).
inline void store_dense_tile(const storage_view& st, int64_t s, int64_t cnt, const float* vals, bool stochastic,
                             const rng_stream& rng) {
  if (st.kind == storage_kind::none || st.is_blockwise()) return;
  if (stochastic && st.kind != storage_kind::f32) {
    for (int64_t j = 0; j < cnt; j += 8) {
      const philox_result r = rng.quad(uint64_t(s + j) >> 3);  // s is a multiple of 8
      for (int k = 0; k < 8 && j + k < cnt; ++k)
        store_dense(st.kind, st.data, s + j + k, vals[j + k], true, random16(r, k));
    }
  } else if (st.kind == storage_kind::f32) {
    float* p = static_cast<float*>(st.data) + s;
    for (int64_t j = 0; j < cnt; ++j) p[j] = vals[j];
  } else if (st.kind == storage_kind::bf16) {
    bf16* p = static_cast<bf16*>(st.data) + s;
    for (int64_t j = 0; j < cnt; ++j) p[j] = to_bf16(vals[j]);
  } else {
    for (int64_t j = 0; j < cnt; ++j) store_dense(st.kind, st.data, s + j, vals[j], false, 0);
  }
}

// Stable block scales (optimizer_options::stable_weight_scales): `keep`
// holds every block's decoded scale before the step; the choice is
// stable_scales.hpp's (with the sorted map's binary search, which chooses
// what the CUDA kernel's full search chooses). A nested block that takes a new scale code gets it written
// here; when no code of its group covers it, *renest is set and all scales
// are re-quantized after the step.
inline float stable_block_scale(const quantized_view& q, int64_t b, float m, const float* keep, bool* renest) {
  const bool nested = q.layout.nested;
  static const sorted_scale_map sorted = sort_scale_map(signed_dynamic_map().data());
  const stable_scale c = choose_stable_scale(keep[b], m, nested, nested ? q.nested_absmax[b / nested_block_size] : 0.0f,
                                             nested ? *q.nested_offset : 0.0f, signed_dynamic_map().data(), &sorted);
  if (c.code >= 0) q.absmax_codes[b] = uint8_t(c.code);
  if (c.renest) *renest = true;
  return c.value;
}

inline void store_tile(const storage_view& st, const format_tables* tab, int64_t s, int64_t cnt, const float* vals,
                       bool stochastic, const rng_stream& rng, float* absmax_out, const float* keep = nullptr,
                       bool* renest = nullptr) {
  if (!st.is_blockwise()) {
    store_dense_tile(st, s, cnt, vals, stochastic, rng);
    return;
  }
  const quantized_view& q = st.q;
  const int bs = q.layout.block_size;
  const bool four = is_4bit(q.layout.fmt);
  const uint8_t zero = zero_code(q.layout.fmt);
  const cpu::floor_index_table& floor_table = cpu::floor_index_for(q.layout.fmt, tab->sorted);
  int code32[256];  // the sorted table's codes as int, for a vectorizable lookup
  for (int i = 0; i < 256; ++i) code32[i] = tab->sorted.code[i];
  for (int64_t j0 = 0; j0 < cnt; j0 += bs) {
    const int64_t j1 = std::min(cnt, j0 + bs);
    // the fold of absmax_step, as an integer maximum that vectorizes
    float m = cpu::vector_block_absmax(vals + j0, j1 - j0);
    if (keep) m = stable_block_scale(q, (s + j0) / bs, m, keep, renest);
    absmax_out[(s + j0) / bs] = m;
    const float inv = inverse_scale(m);
    const sorted_codebook& t = tab->sorted;
    // Whole-block passes over small arrays, each branch-free so the compiler
    // can vectorize it (gathers for the table reads). The arithmetic is that
    // of nearest_from_floor / stochastic_from_floor, so the codes equal the
    // CUDA kernel's.
    const int len = int(j1 - j0);
    float u[max_block_size];
    int lo[max_block_size];
    uint32_t bits[max_block_size];
    for (int k = 0; k < len; ++k) u[k] = mul_rn(vals[j0 + k], inv);
    if (floor_table.usable) {
      cpu::floor_indices(floor_table, t, u, len, lo);  // same indices, fewer gathers
    } else {
      for (int k = 0; k < len; ++k) lo[k] = 0;
      for (int step = 1 << (t.steps - 1); step >= 1; step >>= 1)
        for (int k = 0; k < len; ++k) lo[k] = t.value[lo[k] + step] <= u[k] ? lo[k] + step : lo[k];
    }
    if (keep) {
      // With a kept scale, an unchanged weight comes back as table[c] * s
      // * (1 / s), a few ulps off its own grid value; snap it there so that
      // stochastic rounding does not re-draw weights that did not move.
      for (int k = 0; k < len; ++k) lo[k] = snap_onto_grid(u[k], lo[k], t.value, t.size);
    }
    if (stochastic)
      for (int k = 0; k < len; k += 8) {  // s + j0 is a multiple of 8
        const philox_result r = rng.quad(uint64_t(s + j0 + k) >> 3);
        for (int e = 0; e < 8; ++e) bits[k + e] = random16(r, e);
      }
    // The choice between the neighbours, then the code lookup, as separate
    // loops: with the rounding mode hoisted out and codes widened to int,
    // each loop vectorizes (a byte-table gather inside the loop did not).
    const float first = t.value[0], last = t.value[t.size - 1];
    int idx[max_block_size];
    if (stochastic) {
      for (int k = 0; k < len; ++k) {
        const int hi = lo[k] + 1 < t.size ? lo[k] + 1 : t.size - 1;
        const float below = t.value[lo[k]], above = t.value[hi];
        const int pick = round_up_stochastic(u[k] - below, above - below, bits[k]) ? hi : lo[k];
        idx[k] = !(u[k] > first) ? 0 : (u[k] >= last ? t.size - 1 : pick);
      }
    } else {
      for (int k = 0; k < len; ++k) {
        const int hi = lo[k] + 1 < t.size ? lo[k] + 1 : t.size - 1;
        const float below = t.value[lo[k]], above = t.value[hi];
        const int pick = (above - u[k] < u[k] - below) ? hi : lo[k];
        idx[k] = !(u[k] > first) ? 0 : (u[k] >= last ? t.size - 1 : pick);
      }
    }
    for (int k = 0; k < len; ++k) lo[k] = code32[idx[k]];
    const int64_t base = s + j0;
    if (!four) {
      uint8_t* out = q.codes + base;  // a local pointer: a byte store through q.codes could alias q itself
      for (int k = 0; k < len; ++k) out[k] = uint8_t(lo[k]);
    } else {  // base is even (block starts are); an odd tail pads with the zero code
      uint8_t* out = q.codes + (base >> 1);
      for (int k = 0; k < len / 2; ++k) out[k] = uint8_t((lo[2 * k] << 4) | lo[2 * k + 1]);
      if (len & 1) q.codes[(base + len - 1) >> 1] = uint8_t((lo[len - 1] << 4) | zero);
    }
  }
}

}  // namespace detail

namespace detail {

inline bool is_plain_f32(const storage_view& s) { return s.kind == storage_kind::f32 || s.kind == storage_kind::none; }

// One contiguous range of the all-float32 case; restrict-qualified pointers
// and values held in locals so the loop vectorizes.
template <class Rule, bool TwoStates, bool Clamp>
void f32_range(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g, int64_t i0,
               int64_t i1, float scale, float max_update, const typename Rule::consts c) {
  for (int64_t i = i0; i < i1; ++i) {
    float mi = m[i];
    float vi = TwoStates ? v[i] : 0.0f;
    const float old = p[i];
    float next = Rule::apply(old, mul_rn(g[i], scale), mi, vi, c);
    if (Clamp) {
      const float d = add_rn(next, -old);
      next = add_rn(old, d > max_update ? max_update : (d < -max_update ? -max_update : d));
    }
    m[i] = mi;
    if (TwoStates) v[i] = vi;
    p[i] = next;
  }
}

// All-float32 case (weights, states and gradient): update the arrays in place
// in one pass, no tile buffers. Same arithmetic as the tiled path.
template <class Rule>
void fused_step_f32(const fused_step_args& a, const typename Rule::consts& c) {
  float* p = static_cast<float*>(a.weight.data);
  float* m = static_cast<float*>(a.state1.data);
  float* v = static_cast<float*>(a.state2.data);
  const float* g = static_cast<const float*>(a.grad);
  const float scale = a.grad_scale, max_update = a.max_update;
  constexpr bool two = Rule::n_states == 2;
  cpu::parallel_for(a.weight.n, 1 << 16, [&](int64_t i0, int64_t i1) {
    if (max_update > 0.0f) f32_range<Rule, two, true>(p, m, v, g, i0, i1, scale, max_update, c);
    else f32_range<Rule, two, false>(p, m, v, g, i0, i1, scale, max_update, c);
  });
}

}  // namespace detail

// Runs Rule's fused update over every element of a.weight (host memory).
template <class Rule>
void cpu_fused_step(const fused_step_args& a, const typename Rule::consts& c) {
  const int64_t n = a.weight.n;
  if (n == 0) return;
  if (a.weight.kind == storage_kind::f32 && detail::is_plain_f32(a.state1) && detail::is_plain_f32(a.state2) &&
      a.weight_copy.kind == storage_kind::none && a.grad_type == dtype::f32 && a.state1.kind == storage_kind::f32 &&
      (Rule::n_states == 1 || a.state2.kind == storage_kind::f32)) {
    detail::fused_step_f32<Rule>(a, c);
    return;
  }
  const int64_t tile = fused_tile_size(a);
  const int64_t tiles = (n + tile - 1) / tile;
  const bool nested_weight = a.weight.is_blockwise() && a.weight.q.layout.nested;
  std::vector<float> weight_scratch(nested_weight ? size_t(a.weight.q.layout.n_blocks()) : 0);
  float* weight_absmax = nested_weight ? weight_scratch.data() : a.weight.q.absmax;
  std::vector<float> kept_scales;  // decoded block scales before the step (stable scales)
  if (a.stable_weight_scales && a.weight.is_blockwise()) {
    kept_scales.resize(size_t(a.weight.q.layout.n_blocks()));
    for (int64_t b = 0; b < a.weight.q.layout.n_blocks(); ++b) kept_scales[size_t(b)] = cpu::block_scale(a.weight.q, b);
  }
  const float* keep = kept_scales.empty() ? nullptr : kept_scales.data();
  std::atomic<bool> renest{false};
  const rng_stream rw = a.stream(rng_purpose::weight), r1 = a.stream(rng_purpose::state1),
                   r2 = a.stream(rng_purpose::state2);
  cpu::parallel_for(tiles, std::max<int64_t>(1, 16384 / tile), [&](int64_t t0, int64_t t1) {
    const size_t len = static_cast<size_t>(tile);
    std::vector<float> p(len), g(len), m(len), v(len);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t s = t * tile, cnt = std::min(tile, n - s);
      detail::load_tile(a.weight, a.weight_tables, s, cnt, p.data());
      detail::load_tile(a.state1, a.state1_tables, s, cnt, m.data());
      detail::load_tile(a.state2, a.state2_tables, s, cnt, v.data());
      const storage_kind gk = a.grad_type == dtype::f32    ? storage_kind::f32
                              : a.grad_type == dtype::bf16 ? storage_kind::bf16
                                                           : storage_kind::f16;
      detail::load_dense_run(gk, a.grad, s, cnt, g.data());
      if (a.grad_scale != 1.0f)
        for (int64_t j = 0; j < cnt; ++j) g[size_t(j)] = mul_rn(g[size_t(j)], a.grad_scale);
      // the rule over the tile (gradient already scaled): the same vectorized
      // loop as the all-float32 path
      if (a.max_update > 0.0f)
        detail::f32_range<Rule, Rule::n_states == 2, true>(p.data(), m.data(), v.data(), g.data(), 0, cnt, 1.0f,
                                                           a.max_update, c);
      else
        detail::f32_range<Rule, Rule::n_states == 2, false>(p.data(), m.data(), v.data(), g.data(), 0, cnt, 1.0f,
                                                            a.max_update, c);
      detail::store_tile(a.state1, a.state1_tables, s, cnt, m.data(), a.state_stochastic, r1, a.state1.q.absmax);
      detail::store_tile(a.state2, a.state2_tables, s, cnt, v.data(), a.state_stochastic, r2, a.state2.q.absmax);
      bool tile_renest = false;
      detail::store_tile(a.weight, a.weight_tables, s, cnt, p.data(), a.weight_stochastic, rw, weight_absmax, keep,
                         &tile_renest);
      if (tile_renest) renest = true;
      detail::store_dense_tile(a.weight_copy, s, cnt, p.data(), false, rw);
    }
  });
  if (nested_weight && (!keep || renest)) cpu::quantize_nested_scales(weight_scratch.data(), a.weight.q);
}

}  // namespace optim
}  // namespace lowbit
