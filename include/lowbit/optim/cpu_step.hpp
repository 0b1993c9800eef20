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
#include <cstdint>
#include <vector>

#include "../core/reduce.hpp"
#include "../core/rng.hpp"
#include "../cpu/parallel.hpp"
#include "../cpu/quantize.hpp"
#include "fused_step.hpp"
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
        for (int l = 0; l < sumsq_chunk_lanes; ++l) lane[size_t(l)] = sumsq_lane(g, n, c, l);
        chunk_sum[size_t(c)] = tree_sum(lane);
      }
    });
  });
  out.sumsq = sum_chunk_results(chunk_sum);
  out.finite = out.sumsq <= 1.7976931348623157e308;  // NaN/inf in g (or overflow) poisons the sum
  return out;
}

namespace detail {

// Decodes elements [s, s+cnt) of a storage into out.
inline void load_tile(const storage_view& st, const format_tables* tab, int64_t s, int64_t cnt, float* out) {
  if (st.kind == storage_kind::none) {
    std::fill(out, out + cnt, 0.0f);
    return;
  }
  if (!st.is_blockwise()) {
    for (int64_t j = 0; j < cnt; ++j) out[j] = load_dense(st.kind, st.data, s + j);
    return;
  }
  const quantized_view& q = st.q;
  const int bs = q.layout.block_size;
  const bool four = is_4bit(q.layout.fmt);
  const float* map = signed_dynamic_map().data();
  for (int64_t j0 = 0; j0 < cnt; j0 += bs) {
    const float scale = stored_block_scale(q, (s + j0) / bs, map);
    for (int64_t j = j0; j < std::min(cnt, j0 + bs); ++j)
      out[j] = mul_rn(tab->decode.value[load_code(q.codes, s + j, four)], scale);
  }
}

// Encodes vals into elements [s, s+cnt) of a storage. Blockwise storages get
// fresh block scales, written to `absmax_out` (the storage's own absmax, or a
// float32 scratch when its scales are nested).
inline void store_dense_tile(const storage_view& st, int64_t s, int64_t cnt, const float* vals, bool stochastic,
                             const rng_stream& rng) {
  if (st.kind == storage_kind::none || st.is_blockwise()) return;
  if (stochastic && st.kind != storage_kind::f32) {
    for (int64_t j = 0; j < cnt; j += 4) {
      const philox_result r = rng.quad(uint64_t(s + j) >> 2);  // s is a multiple of 4
      for (int k = 0; k < 4 && j + k < cnt; ++k) store_dense(st.kind, st.data, s + j + k, vals[j + k], true, r.w[k]);
    }
  } else {
    for (int64_t j = 0; j < cnt; ++j) store_dense(st.kind, st.data, s + j, vals[j], false, 0);
  }
}

inline void store_tile(const storage_view& st, const format_tables* tab, int64_t s, int64_t cnt, const float* vals,
                       bool stochastic, const rng_stream& rng, float* absmax_out) {
  if (!st.is_blockwise()) {
    store_dense_tile(st, s, cnt, vals, stochastic, rng);
    return;
  }
  const quantized_view& q = st.q;
  const int bs = q.layout.block_size;
  const bool four = is_4bit(q.layout.fmt);
  const uint8_t zero = zero_code(q.layout.fmt);
  for (int64_t j0 = 0; j0 < cnt; j0 += bs) {
    const int64_t j1 = std::min(cnt, j0 + bs);
    float m = 0.0f;
    for (int64_t j = j0; j < j1; ++j) m = absmax_step(m, vals[j]);
    absmax_out[(s + j0) / bs] = m;
    const float inv = inverse_scale(m);
    for (int64_t j = j0; j < j1; j += 4) {
      philox_result r{};
      if (stochastic) r = rng.quad(uint64_t(s + j) >> 2);
      for (int k = 0; k < 4 && j + k < j1; ++k) {
        const int64_t i = s + j + k;
        const uint8_t c = encode_code(mul_rn(vals[j + k], inv), stochastic, r.w[k], tab->sorted);
        if (!four) {
          q.codes[i] = c;
        } else if ((i & 1) == 0) {
          q.codes[i >> 1] = uint8_t((c << 4) | zero);  // low nibble filled by the next element, if any
        } else {
          q.codes[i >> 1] = uint8_t((q.codes[i >> 1] & 0xF0) | c);
        }
      }
    }
  }
}

}  // namespace detail

// Runs Rule's fused update over every element of a.weight (host memory).
template <class Rule>
void cpu_fused_step(const fused_step_args& a, const typename Rule::consts& c) {
  const int64_t n = a.weight.n;
  if (n == 0) return;
  const int64_t tile = fused_tile_size(a);
  const int64_t tiles = (n + tile - 1) / tile;
  const bool nested_weight = a.weight.is_blockwise() && a.weight.q.layout.nested;
  std::vector<float> weight_scratch(nested_weight ? size_t(a.weight.q.layout.n_blocks()) : 0);
  float* weight_absmax = nested_weight ? weight_scratch.data() : a.weight.q.absmax;
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
      for (int64_t j = 0; j < cnt; ++j) g[size_t(j)] = mul_rn(load_dense(gk, a.grad, s + j), a.grad_scale);
      for (int64_t j = 0; j < cnt; ++j) {
        const float old = p[size_t(j)];
        float next = Rule::apply(old, g[size_t(j)], m[size_t(j)], v[size_t(j)], c);
        if (a.max_update > 0.0f) {
          const float d = add_rn(next, -old);
          next = add_rn(old, d > a.max_update ? a.max_update : (d < -a.max_update ? -a.max_update : d));
        }
        p[size_t(j)] = next;
      }
      detail::store_tile(a.state1, a.state1_tables, s, cnt, m.data(), a.state_stochastic, r1, a.state1.q.absmax);
      detail::store_tile(a.state2, a.state2_tables, s, cnt, v.data(), a.state_stochastic, r2, a.state2.q.absmax);
      detail::store_tile(a.weight, a.weight_tables, s, cnt, p.data(), a.weight_stochastic, rw, weight_absmax);
      detail::store_dense_tile(a.weight_copy, s, cnt, p.data(), false, rw);
    }
  });
  if (nested_weight) cpu::quantize_nested_scales(weight_scratch.data(), a.weight.q);
}

}  // namespace optim
}  // namespace lowbit
