// examples/llama/parameters.hpp
// Where every parameter lives. param_layout lists the model's tensors in a
// fixed order under their Hugging Face names with shapes, marks each as a
// matrix (embedding, projections, head: stored in the training mode's weight
// format) or a vector (RMSNorm gains: always kept in the compute dtype), and
// gives each an offset into one buffer per kind, llm.c style. weight_store
// holds the values: the vectors in one buffer, the matrices in one dense
// buffer (float64, float32 or bfloat16) or as one lowbit quantized_tensor
// each. gradient_plan gives each parameter an offset into one gradient
// buffer: distinct offsets, or, for the fused backward-update, every layer
// tensor (and an untied head and the embedding) at the start of one shared
// region that each tensor's gradient uses in turn: the backward reports
// each tensor as soon as its gradient is complete (model.hpp), the update
// consumes it, and the next tensor's gradient overwrites it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <lowbit/lowbit.hpp>

#include "config.hpp"

namespace llama {

struct param_info {
  std::string name;            // Hugging Face key
  std::vector<int64_t> shape;  // [rows, cols] for matrices, [dim] for vectors
  int64_t numel = 0;
  bool matrix = false;
  int layer = -1;              // -1: not inside a transformer block
  int slot = 0;                // index among the matrices or among the vectors
  int64_t offset = 0;          // into the dense buffer of its kind
};

struct layer_params {
  int attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
};

struct param_layout {
  std::vector<param_info> params;
  std::vector<layer_params> layers;
  int embed = -1, final_norm = -1, head = -1;  // head == embed when tied
  int64_t matrix_elems = 0, vector_elems = 0;
  int n_matrices = 0, n_vectors = 0;

  explicit param_layout(const llama_config& c) {
    const int64_t d = c.dim;
    embed = add("model.embed_tokens.weight", {c.vocab_size, d}, true, -1);
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      layer_params L;
      L.attn_norm = add(p + "input_layernorm.weight", {d}, false, l);
      L.wq = add(p + "self_attn.q_proj.weight", {c.q_dim(), d}, true, l);          // [H*hd, dim]
      L.wk = add(p + "self_attn.k_proj.weight", {c.kv_dim(), d}, true, l);         // [KV*hd, dim]
      L.wv = add(p + "self_attn.v_proj.weight", {c.kv_dim(), d}, true, l);         // [KV*hd, dim]
      L.wo = add(p + "self_attn.o_proj.weight", {d, c.q_dim()}, true, l);          // [dim, H*hd]
      L.mlp_norm = add(p + "post_attention_layernorm.weight", {d}, false, l);
      L.w_gate = add(p + "mlp.gate_proj.weight", {c.hidden_dim, d}, true, l);      // [ffn, dim]
      L.w_up = add(p + "mlp.up_proj.weight", {c.hidden_dim, d}, true, l);          // [ffn, dim]
      L.w_down = add(p + "mlp.down_proj.weight", {d, c.hidden_dim}, true, l);      // [dim, ffn]
      layers.push_back(L);
    }
    final_norm = add("model.norm.weight", {d}, false, -1);
    head = c.tied_embeddings ? embed : add("lm_head.weight", {c.vocab_size, d}, true, -1);
  }

  int64_t total() const { return matrix_elems + vector_elems; }
  int find(const std::string& name) const {
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].name == name) return int(i);
    return -1;
  }

 private:
  int add(const std::string& name, std::vector<int64_t> shape, bool matrix, int layer) {
    param_info p;
    p.name = name;
    p.numel = 1;
    for (int64_t s : shape) p.numel *= s;
    p.shape = std::move(shape);
    p.matrix = matrix;
    p.layer = layer;
    p.slot = matrix ? n_matrices++ : n_vectors++;
    p.offset = matrix ? matrix_elems : vector_elems;
    (matrix ? matrix_elems : vector_elems) += p.numel;
    params.push_back(std::move(p));
    return int(params.size()) - 1;
  }
};

// Offsets of each parameter's gradient in one buffer of `size` elements.
struct gradient_plan {
  std::vector<int64_t> offset;
  int64_t size = 0;
  bool fused = false;  // region tensors share one place (fused backward-update)

  // tied_in_chunks (fused update, tied embeddings; the CUDA trainer when
  // the optimizer can step the tied tensor in ranges): the tied tensor has
  // no place at all (offset -1): its gradient is made and consumed one
  // vocabulary chunk at a time at the end of the backward.
  gradient_plan(const param_layout& L, bool fused_update, bool tied_in_chunks = false) : fused(fused_update) {
    offset.assign(L.params.size(), 0);
    // With the fused update every tensor the backward reports on its own
    // (each layer tensor; an untied head, consumed before the first layer's
    // gradient is written; the embedding, written after the last layer's
    // was consumed) takes the region in turn, so the region is as large as
    // the largest of them. A tied head's gradient is the embedding's,
    // accumulated across the whole backward, so it keeps its own place, as
    // does the final norm (reported together with the head).
    const bool untied = L.head != L.embed;
    auto in_region = [&](size_t i) {
      return fused && (L.params[i].layer >= 0 || (untied && (int(i) == L.head || int(i) == L.embed)));
    };
    int64_t shared = 0, region = 0;
    const bool chunked = fused && tied_in_chunks && L.head == L.embed;
    for (size_t i = 0; i < L.params.size(); ++i) {
      if (chunked && int(i) == L.embed) {
        offset[i] = -1;
      } else if (in_region(i)) {
        region = std::max(region, L.params[i].numel);
      } else {
        offset[i] = shared;
        shared += L.params[i].numel;
      }
    }
    for (size_t i = 0; i < L.params.size(); ++i)
      if (in_region(i) && offset[i] >= 0) offset[i] = shared;
    size = shared + region;
  }

  // Bytes of the buffer with elements of dtype t (float32; bfloat16 with
  // the CUDA trainer's --grad-dtype bf16).
  int64_t bytes(lowbit::dtype t) const { return size * int64_t(lowbit::dtype_size(t)); }
};

// How the matrices are stored.
enum class matrix_storage { f64, f32, bf16, quantized };

struct quantized_spec {
  lowbit::format fmt = lowbit::format::int8;
  int block_size = 256;
  bool nested = false;
};

// A matrix as the linear layers read it: a dense pointer of the storage's
// dtype, or a lowbit quantized_view. rows x cols, row-major.
struct matrix_ref {
  matrix_storage kind = matrix_storage::f32;
  const void* data = nullptr;
  lowbit::quantized_view q;
  int64_t rows = 0, cols = 0;
};

// Rows [first, first + count) of w (row-major) as a matrix of their own, no
// copy. A quantized w's panel must start a scale block (a group of 256
// blocks with nested scales): see lowbit::slice and panel_row_unit.
inline matrix_ref rows_of(const matrix_ref& w, int64_t first, int64_t count) {
  matrix_ref r = w;
  r.rows = count;
  switch (w.kind) {
    case matrix_storage::quantized: r.q = lowbit::slice(w.q, first * w.cols, count * w.cols); break;
    case matrix_storage::f64: r.data = static_cast<const double*>(w.data) + first * w.cols; break;
    case matrix_storage::f32: r.data = static_cast<const float*>(w.data) + first * w.cols; break;
    case matrix_storage::bf16: r.data = static_cast<const lowbit::bf16*>(w.data) + first * w.cols; break;
  }
  return r;
}

// The smallest row count whose multiples are valid panel starts of w.
inline int64_t panel_row_unit(const matrix_ref& w) {
  if (w.kind != matrix_storage::quantized || w.cols == 0) return 1;
  const int64_t unit = int64_t(w.q.layout.block_size) * (w.q.layout.nested ? lowbit::nested_block_size : 1);
  int64_t a = unit, b = w.cols;  // unit / gcd(unit, cols)
  while (b) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return unit / a;
}

// Parameter values. T is the compute dtype (vectors and activations).
template <class T>
struct weight_store {
  const param_layout* layout = nullptr;
  matrix_storage kind = matrix_storage::f32;
  quantized_spec qspec;
  std::vector<T> vectors;                   // RMSNorm gains, carved by offset
  std::vector<double> m64;                  // dense matrices (one of these three)
  std::vector<float> m32;
  std::vector<lowbit::bf16> m16;
  std::vector<lowbit::quantized_tensor> mq; // quantized matrices, by slot

  weight_store(const param_layout& L, matrix_storage k, quantized_spec q = {}) : layout(&L), kind(k), qspec(q) {
    vectors.assign(size_t(L.vector_elems), T(1));
    switch (k) {
      case matrix_storage::f64: m64.assign(size_t(L.matrix_elems), 0.0); break;
      case matrix_storage::f32: m32.assign(size_t(L.matrix_elems), 0.0f); break;
      case matrix_storage::bf16: m16.assign(size_t(L.matrix_elems), lowbit::bf16{}); break;
      case matrix_storage::quantized:
        for (const param_info& p : L.params)
          if (p.matrix)
            mq.emplace_back(lowbit::make_layout(q.fmt, p.numel, q.block_size, q.nested), p.shape);
        break;
    }
  }

  const param_info& info(int p) const { return layout->params[size_t(p)]; }
  T* vector(int p) { return vectors.data() + info(p).offset; }
  const T* vector(int p) const { return vectors.data() + info(p).offset; }

  matrix_ref matrix(int p) const {
    const param_info& i = info(p);
    matrix_ref r;
    r.kind = kind;
    r.rows = i.shape[0];
    r.cols = i.shape[1];
    switch (kind) {
      case matrix_storage::f64: r.data = m64.data() + i.offset; break;
      case matrix_storage::f32: r.data = m32.data() + i.offset; break;
      case matrix_storage::bf16: r.data = m16.data() + i.offset; break;
      case matrix_storage::quantized: r.q = const_cast<lowbit::quantized_tensor&>(mq[size_t(i.slot)]).view(); break;
    }
    return r;
  }

  // The views the optimizer updates in place.
  lowbit::tensor_view vector_view(int p) { return lowbit::make_flat_view(vector(p), info(p).numel); }
  lowbit::tensor_view dense_view(int p) {
    const param_info& i = info(p);
    if (kind == matrix_storage::f32) return lowbit::make_view(m32.data() + i.offset, {i.shape[0], i.shape[1]});
    if (kind == matrix_storage::bf16) return lowbit::make_view(m16.data() + i.offset, {i.shape[0], i.shape[1]});
    throw lowbit::error(lowbit::errc::invalid_argument, "weight_store: matrices are not stored as float32 / bfloat16");
  }
  lowbit::quantized_view quantized_view(int p) { return mq[size_t(info(p).slot)].view(); }

  // Stores float values (numel of them) into matrix p: converted to the
  // storage dtype (round to nearest) or quantized blockwise.
  void set_matrix(int p, const float* v) {
    const param_info& i = info(p);
    switch (kind) {
      case matrix_storage::f64:
        for (int64_t e = 0; e < i.numel; ++e) m64[size_t(i.offset + e)] = double(v[e]);
        break;
      case matrix_storage::f32: std::copy(v, v + i.numel, m32.begin() + i.offset); break;
      case matrix_storage::bf16:
        for (int64_t e = 0; e < i.numel; ++e) m16[size_t(i.offset + e)] = lowbit::from_float<lowbit::bf16>(v[e]);
        break;
      case matrix_storage::quantized:
        lowbit::cpu::quantize(lowbit::make_flat_view(v, i.numel), quantized_view(p));
        break;
    }
  }

  // Matrix p's values as float (the quantized ones dequantized).
  void get_matrix(int p, float* out) const { get_rows(p, 0, info(p).shape[0], out); }

  // Rows [r0, r0 + count) of matrix p as T: the embedding lookup.
  template <class U>
  void get_rows(int p, int64_t r0, int64_t count, U* out) const {
    const param_info& i = info(p);
    const int64_t cols = i.shape[1], first = i.offset + r0 * cols, n = count * cols;
    switch (kind) {
      case matrix_storage::f64:
        for (int64_t e = 0; e < n; ++e) out[e] = U(m64[size_t(first + e)]);
        break;
      case matrix_storage::f32:
        for (int64_t e = 0; e < n; ++e) out[e] = U(m32[size_t(first + e)]);
        break;
      case matrix_storage::bf16:
        for (int64_t e = 0; e < n; ++e) out[e] = U(lowbit::to_float(m16[size_t(first + e)]));
        break;
      case matrix_storage::quantized: {
        std::vector<float> tmp(static_cast<size_t>(n));
        lowbit::cpu::dequantize_range(const_cast<lowbit::quantized_tensor&>(mq[size_t(i.slot)]).view(), r0 * cols, n,
                                      tmp.data());
        for (int64_t e = 0; e < n; ++e) out[e] = U(tmp[size_t(e)]);
        break;
      }
    }
  }

  // Bytes the weights occupy as stored (quantized: codes + scales).
  int64_t bytes() const {
    int64_t b = int64_t(vectors.size() * sizeof(T)) + int64_t(m64.size() * 8 + m32.size() * 4 + m16.size() * 2);
    for (const lowbit::quantized_tensor& q : mq) b += q.layout.total_bytes();
    return b;
  }
};

}  // namespace llama
