// examples/llama/model.hpp
// The LLaMA forward and backward passes on the CPU. Activations live in
// buffers allocated once for a maximum batch x sequence; forward() keeps
// what backward() needs. The residual stream entering every layer (xs) is
// always kept; the per-layer intermediates (norms, q/k/v, attention
// probabilities, MLP) are kept for every layer, or, with activation
// checkpointing, for one layer at a time and recomputed from xs during the
// backward. backward() writes each parameter's gradient at the offset a
// gradient_plan gives it and calls on_ready(indices) as soon as gradients
// are complete and their weights used for the last time (the head, then
// each layer's tensors one by one from the last layer, then the embedding),
// which is where a fused backward-update steps the optimizer. With
// set_accumulate_gradients(true), backward() adds every gradient to what
// the buffer holds instead (gradient accumulation over micro-batches).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "config.hpp"
#include "layer_recompute.hpp"
#include "linear.hpp"
#include "ops.hpp"
#include "parameters.hpp"
#include "phase_profile.hpp"

namespace llama {

template <class T>
class llama_model {
 public:
  llama_model(const llama_config& c, const param_layout& L, weight_store<T>& w, int64_t max_batch, int64_t max_seq,
              bool checkpointing)
      : cfg_(c), L_(L), w_(w), max_batch_(max_batch), max_seq_(max_seq), checkpointing_(checkpointing),
        recompute_(checkpointing, c.n_layers),
        rope_(max_seq, c.rope_frequencies()) {
    lowbit::require(max_seq <= c.max_seq_len, lowbit::errc::invalid_argument,
                    "sequence length " + std::to_string(max_seq) + " exceeds the model's max_seq_len " +
                        std::to_string(c.max_seq_len));
    const int64_t M = max_batch * max_seq;
    xs_.resize(size_t(c.n_layers + 1));
    for (auto& x : xs_) x.resize(static_cast<size_t>(M * c.dim));
    acts_.resize(checkpointing ? 1 : size_t(c.n_layers));
    for (layer_acts& a : acts_) a.allocate(c, max_batch, max_seq);
    xn_f_.resize(static_cast<size_t>(M * c.dim));
    rstd_f_.resize(static_cast<size_t>(M));
    logits_.resize(static_cast<size_t>(M * c.vocab_size));
    dx_.resize(static_cast<size_t>(M * c.dim));
    dmid_.resize(static_cast<size_t>(M * c.dim));
    dxn_.resize(static_cast<size_t>(M * c.dim));
    tmp_dim_.resize(static_cast<size_t>(M * c.dim));
    dgate_.resize(static_cast<size_t>(M * c.hidden_dim));
    dup_.resize(static_cast<size_t>(M * c.hidden_dim));
    dh_.resize(static_cast<size_t>(M * c.hidden_dim));
    dq_.resize(size_t(M * c.q_dim()));
    dattn_.resize(size_t(M * c.q_dim()));
    dk_.resize(size_t(M * c.kv_dim()));
    dv_.resize(size_t(M * c.kv_dim()));
  }

  // Runs the model on tokens [batch, seq] (row-major). With targets (the
  // token each position should predict), returns the mean cross-entropy
  // and leaves dloss/dlogits for backward(); without, returns 0 and leaves
  // the logits [batch * seq, vocab] in logits().
  double forward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq) {
    lowbit::require(batch >= 1 && batch <= max_batch_ && seq >= 1 && seq <= max_seq_, lowbit::errc::invalid_argument,
                    "forward: batch x seq " + std::to_string(batch) + " x " + std::to_string(seq) +
                        " exceeds the allocated " + std::to_string(max_batch_) + " x " + std::to_string(max_seq_));
    B_ = batch, S_ = seq;
    const int64_t M = B_ * S_, D = cfg_.dim, V = cfg_.vocab_size;
    phase_scope ph(rec_, phase::embedding);
    for (int64_t m = 0; m < M; ++m) {
      if (tokens[m] < 0 || tokens[m] >= V)  // (checked first: the message is built only on failure)
        throw lowbit::error(lowbit::errc::invalid_argument,
            "token id " + std::to_string(tokens[m]) + " outside the vocabulary [0, " + std::to_string(V) + ")");
      w_.get_rows(L_.embed, tokens[m], 1, xs_[0].data() + m * D);
    }
    ph.to(phase::layers_forward);
    for (int l = 0; l < cfg_.n_layers; ++l) layer_forward(l, acts_for(l), xs_[size_t(l) + 1].data());
    recompute_.forward_done();
    ph.to(phase::head_loss);
    ops::rmsnorm_forward(xs_.back().data(), w_.vector(L_.final_norm), xn_f_.data(), rstd_f_.data(), M, D,
                         cfg_.norm_eps);
    linear_forward(xn_f_.data(), M, w_.matrix(L_.head), logits_.data());
    tokens_.assign(tokens, tokens + M);
    if (!targets) return 0.0;
    for (int64_t m = 0; m < M; ++m)
      if (targets[m] < 0 || targets[m] >= V)
        throw lowbit::error(lowbit::errc::invalid_argument,
            "target id " + std::to_string(targets[m]) + " outside the vocabulary");
    return ops::cross_entropy(logits_.data(), targets, M, V, true);
  }

  const T* logits() const { return logits_.data(); }

  // Whether backward() adds each parameter's gradient to the buffer's
  // current value (true: the second and later micro-batches of a step with
  // gradient accumulation) or overwrites it (false, the default).
  void set_accumulate_gradients(bool on) { accumulate_ = on; }

  // Gradients of the last forward's loss. grads: plan.size elements.
  template <class Ready>
  void backward(T* grads, const gradient_plan& plan, Ready&& on_ready) {
    const int64_t M = B_ * S_, D = cfg_.dim, V = cfg_.vocab_size;
    lowbit::require(!(accumulate_ && plan.fused), lowbit::errc::invalid_argument,
                    "backward: gradient accumulation needs every tensor's own place (the two-pass gradient plan)");
    auto g = [&](int p) { return grads + plan.offset[size_t(p)]; };
    // Output head and final norm. logits_ holds dloss/dlogits.
    phase_scope ph(rec_, phase::head_backward);
    const matrix_ref head = w_.matrix(L_.head);
    linear_weight_grad(logits_.data(), xn_f_.data(), M, V, D, g(L_.head), accumulate_);
    linear_backward_input(logits_.data(), M, head, dxn_.data());
    std::fill(dx_.begin(), dx_.begin() + M * D, T(0));
    ops::rmsnorm_backward(dxn_.data(), xs_.back().data(), w_.vector(L_.final_norm), rstd_f_.data(), dx_.data(),
                          g(L_.final_norm), M, D, accumulate_);
    if (cfg_.tied_embeddings) on_ready(std::vector<int>{L_.final_norm});
    else on_ready(std::vector<int>{L_.head, L_.final_norm});
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      layer_acts& a = acts_for(l);
      // Recompute this layer's intermediates. Its output is xs_[l + 1],
      // already stored, so the recompute stops before w_down's product (a
      // quarter to a third of a LLaMA layer's matrix work). The last
      // layer's are still in the buffer from the forward, unless a backward
      // has run since (its recomputes overwrote them).
      if (recompute_.before_backward(l)) {
        ph.to(phase::recompute);
        layer_forward(l, a, nullptr);
      }
      ph.to(phase::layers_backward);
      layer_backward(l, a, grads, plan, on_ready);
    }
    ph.to(phase::embedding_backward);
    // Token embedding: scatter-add each row's gradient (onto the head's
    // gradient when tied, or onto the earlier micro-batches' when
    // accumulating). Columns in parallel, rows in order.
    T* ge = g(L_.embed);
    if (!cfg_.tied_embeddings && !accumulate_) std::fill(ge, ge + int64_t(V) * D, T(0));
    lowbit::cpu::parallel_for(D, std::max<int64_t>(1, D / 2), [&](int64_t j0, int64_t j1) {
      for (int64_t m = 0; m < M; ++m) {
        T* row = ge + int64_t(tokens_[m]) * D;
        const T* d = dx_.data() + m * D;
        for (int64_t j = j0; j < j1; ++j) row[j] += d[j];
      }
    });
    on_ready(std::vector<int>{L_.embed});
  }

  // Layers whose intermediates backward() recomputed (checkpointing), since
  // construction: n_layers - 1 per backward after a forward.
  int64_t layer_recomputes() const { return recompute_.count(); }

  // Marks the phases of forward() and backward() on r (null: none).
  void set_phase_recorder(phase_recorder* r) { rec_ = r; }

  // Bytes of every activation and backward scratch buffer.
  int64_t activation_bytes() const {
    int64_t n = 0;
    for (const auto& x : xs_) n += int64_t(x.size());
    for (const layer_acts& a : acts_) n += a.elements();
    for (const auto* v : {&xn_f_, &rstd_f_, &logits_, &dx_, &dmid_, &dxn_, &tmp_dim_, &dgate_, &dup_, &dh_, &dq_,
                          &dattn_, &dk_, &dv_})
      n += int64_t(v->size());
    return n * int64_t(sizeof(T));
  }

 private:
  // One layer's intermediates for [M = batch * seq] rows.
  struct layer_acts {
    std::vector<T> xn1, rstd1, q, k, v, probs, attn, x_mid, xn2, rstd2, gate, up, h;
    void allocate(const llama_config& c, int64_t B, int64_t S) {
      const int64_t M = B * S;
      xn1.resize(static_cast<size_t>(M * c.dim));
      rstd1.resize(static_cast<size_t>(M));
      q.resize(size_t(M * c.q_dim()));
      k.resize(size_t(M * c.kv_dim()));
      v.resize(size_t(M * c.kv_dim()));
      probs.resize(size_t(B * c.n_heads * S * S));
      attn.resize(size_t(M * c.q_dim()));
      x_mid.resize(static_cast<size_t>(M * c.dim));
      xn2.resize(static_cast<size_t>(M * c.dim));
      rstd2.resize(static_cast<size_t>(M));
      gate.resize(static_cast<size_t>(M * c.hidden_dim));
      up.resize(static_cast<size_t>(M * c.hidden_dim));
      h.resize(static_cast<size_t>(M * c.hidden_dim));
    }
    int64_t elements() const {
      int64_t n = 0;
      for (const auto* v : {&xn1, &rstd1, &q, &k, &v, &probs, &attn, &x_mid, &xn2, &rstd2, &gate, &up, &h})
        n += int64_t(v->size());
      return n;
    }
  };

  layer_acts& acts_for(int l) { return acts_[checkpointing_ ? 0 : size_t(l)]; }

  ops::attention_shape attn_shape() const {
    return {B_, S_, cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim()};
  }

  void layer_forward(int l, layer_acts& a, T* x_out) {
    const layer_params& P = L_.layers[size_t(l)];
    const int64_t M = B_ * S_, D = cfg_.dim, F = cfg_.hidden_dim;
    const T* x = xs_[size_t(l)].data();
    ops::rmsnorm_forward(x, w_.vector(P.attn_norm), a.xn1.data(), a.rstd1.data(), M, D, cfg_.norm_eps);
    linear_forward(a.xn1.data(), M, w_.matrix(P.wq), a.q.data());
    linear_forward(a.xn1.data(), M, w_.matrix(P.wk), a.k.data());
    linear_forward(a.xn1.data(), M, w_.matrix(P.wv), a.v.data());
    phase_scope attention(rec_, phase::attention_forward);  // with its rotary embedding
    ops::rope_apply(a.q.data(), M, S_, cfg_.n_heads, rope_, false);
    ops::rope_apply(a.k.data(), M, S_, cfg_.n_kv_heads, rope_, false);
    ops::attention_forward(a.q.data(), a.k.data(), a.v.data(), a.probs.data(), a.attn.data(), attn_shape());
    attention.close();
    linear_forward(a.attn.data(), M, w_.matrix(P.wo), a.x_mid.data());
    add_into(a.x_mid.data(), x, M * D);
    ops::rmsnorm_forward(a.x_mid.data(), w_.vector(P.mlp_norm), a.xn2.data(), a.rstd2.data(), M, D, cfg_.norm_eps);
    linear_forward(a.xn2.data(), M, w_.matrix(P.w_gate), a.gate.data());
    linear_forward(a.xn2.data(), M, w_.matrix(P.w_up), a.up.data());
    ops::swiglu_forward(a.gate.data(), a.up.data(), a.h.data(), M * F);
    if (!x_out) return;  // a checkpointing recompute: the output is stored already
    linear_forward(a.h.data(), M, w_.matrix(P.w_down), x_out);
    add_into(x_out, a.x_mid.data(), M * D);
  }

  // On entry dx_ holds dloss/d(layer output); on exit dloss/d(layer input).
  // Each tensor is reported to on_ready as soon as its gradient is complete
  // and its weight has been used for the last time (its input gradient
  // computed), so a fused update may change it at once and the next
  // tensor's gradient may reuse its place (gradient_plan).
  template <class Ready>
  void layer_backward(int l, layer_acts& a, T* grads, const gradient_plan& plan, Ready&& on_ready) {
    const layer_params& P = L_.layers[size_t(l)];
    const int64_t M = B_ * S_, D = cfg_.dim, F = cfg_.hidden_dim, QW = cfg_.q_dim(), KW = cfg_.kv_dim();
    auto g = [&](int p) { return grads + plan.offset[size_t(p)]; };
    const T* x = xs_[size_t(l)].data();
    // MLP: out = x_mid + down(silu(gate(xn2)) * up(xn2))
    linear_weight_grad(dx_.data(), a.h.data(), M, D, F, g(P.w_down), accumulate_);
    linear_backward_input(dx_.data(), M, w_.matrix(P.w_down), dh_.data());
    on_ready(std::vector<int>{P.w_down});
    ops::swiglu_backward(dh_.data(), a.gate.data(), a.up.data(), dgate_.data(), dup_.data(), M * F);
    linear_weight_grad(dgate_.data(), a.xn2.data(), M, F, D, g(P.w_gate), accumulate_);
    linear_backward_input(dgate_.data(), M, w_.matrix(P.w_gate), dxn_.data());
    on_ready(std::vector<int>{P.w_gate});
    linear_weight_grad(dup_.data(), a.xn2.data(), M, F, D, g(P.w_up), accumulate_);
    linear_backward_input(dup_.data(), M, w_.matrix(P.w_up), tmp_dim_.data());
    on_ready(std::vector<int>{P.w_up});
    add_into(dxn_.data(), tmp_dim_.data(), M * D);
    std::copy(dx_.begin(), dx_.begin() + M * D, dmid_.begin());
    ops::rmsnorm_backward(dxn_.data(), a.x_mid.data(), w_.vector(P.mlp_norm), a.rstd2.data(), dmid_.data(),
                          g(P.mlp_norm), M, D, accumulate_);
    on_ready(std::vector<int>{P.mlp_norm});
    // Attention: x_mid = x + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
    linear_weight_grad(dmid_.data(), a.attn.data(), M, D, QW, g(P.wo), accumulate_);
    linear_backward_input(dmid_.data(), M, w_.matrix(P.wo), dattn_.data());
    on_ready(std::vector<int>{P.wo});
    phase_scope attention(rec_, phase::attention_backward);  // with its inverse rotary embedding
    ops::attention_backward(dattn_.data(), a.q.data(), a.k.data(), a.v.data(), a.probs.data(), dq_.data(),
                            dk_.data(), dv_.data(), attn_shape());
    ops::rope_apply(dq_.data(), M, S_, cfg_.n_heads, rope_, true);
    ops::rope_apply(dk_.data(), M, S_, cfg_.n_kv_heads, rope_, true);
    attention.close();
    linear_weight_grad(dq_.data(), a.xn1.data(), M, QW, D, g(P.wq), accumulate_);
    linear_backward_input(dq_.data(), M, w_.matrix(P.wq), dxn_.data());
    on_ready(std::vector<int>{P.wq});
    linear_weight_grad(dk_.data(), a.xn1.data(), M, KW, D, g(P.wk), accumulate_);
    linear_backward_input(dk_.data(), M, w_.matrix(P.wk), tmp_dim_.data());
    on_ready(std::vector<int>{P.wk});
    add_into(dxn_.data(), tmp_dim_.data(), M * D);
    linear_weight_grad(dv_.data(), a.xn1.data(), M, KW, D, g(P.wv), accumulate_);
    linear_backward_input(dv_.data(), M, w_.matrix(P.wv), tmp_dim_.data());
    on_ready(std::vector<int>{P.wv});
    add_into(dxn_.data(), tmp_dim_.data(), M * D);
    std::copy(dmid_.begin(), dmid_.begin() + M * D, dx_.begin());
    ops::rmsnorm_backward(dxn_.data(), x, w_.vector(P.attn_norm), a.rstd1.data(), dx_.data(), g(P.attn_norm), M, D,
                          accumulate_);
    on_ready(std::vector<int>{P.attn_norm});
  }

  static void add_into(T* y, const T* x, int64_t n) {
    lowbit::cpu::parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) y[i] += x[i];
    });
  }

  llama_config cfg_;
  const param_layout& L_;
  weight_store<T>& w_;
  int64_t max_batch_, max_seq_;
  bool checkpointing_;
  bool accumulate_ = false;    // backward() adds to the gradient buffer (set_accumulate_gradients)
  layer_recompute recompute_;  // which layers the backward recomputes
  phase_recorder* rec_ = nullptr;  // --profile: where each step's time goes
  ops::rope_table<T> rope_;
  int64_t B_ = 0, S_ = 0;
  std::vector<int32_t> tokens_;  // of the last forward (the embedding backward)
  std::vector<std::vector<T>> xs_;  // residual stream into layer l (xs_[L] = final)
  std::vector<layer_acts> acts_;
  std::vector<T> xn_f_, rstd_f_, logits_;
  std::vector<T> dx_, dmid_, dxn_, tmp_dim_, dgate_, dup_, dh_, dq_, dattn_, dk_, dv_;
};

}  // namespace llama
