// examples/llama/cuda/model.cuh
// The LLaMA forward and backward passes on CUDA, the twin of model.hpp:
// the same layer order, the same activation checkpointing (the residual
// stream entering each layer is always kept; with checkpointing one layer's
// intermediates are recomputed during the backward), the same gradient plan
// and on_ready callbacks for the fused backward-update. Activations are of
// type A (float32, or bfloat16 for speed: the GEMMs then run on tensor
// cores), RMSNorm statistics, attention scores and logits float32, the
// parameter gradients of type G (float32, or bfloat16 with --grad-dtype
// bf16, which needs bfloat16 activations: summed in float32, rounded once
// when written). All work is queued on one stream; the host waits only
// where it needs a number (the loss) or the token ids of the next batch.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <lowbit/lowbit.cuh>

#include "../config.hpp"
#include "../layer_recompute.hpp"
#include "../ops.hpp"
#include "../parameters.hpp"
#include "../phase_profile.hpp"
#include "attention.cuh"
#include "device_buffer.cuh"
#include "device_weights.cuh"
#include "kernels.cuh"
#include "linear.cuh"

namespace llama {
namespace gpu {

template <class A>
class cuda_model {
 public:
  static constexpr lowbit::dtype act_dtype = lowbit::dtype_of<A>::value;

  cuda_model(const llama_config& c, const param_layout& L, device_weights& w, int64_t max_batch, int64_t max_seq,
             bool checkpointing, int64_t logits_chunk_bytes = int64_t(64) << 20, int64_t chunk_row_multiple = 1,
             int64_t attention_chunk_bytes = int64_t(32) << 20, cudaStream_t stream = nullptr)
      : cfg_(c), L_(L), w_(w), max_batch_(max_batch), max_seq_(max_seq), checkpointing_(checkpointing),
        recompute_(checkpointing, c.n_layers), s_(stream) {
    lowbit::require(logits_chunk_bytes > 0, lowbit::errc::invalid_argument, "the logits chunk must be > 0 bytes");
    lowbit::require(attention_chunk_bytes > 0, lowbit::errc::invalid_argument,
                    "the attention chunk must be > 0 bytes");
    lowbit::require(max_seq <= c.max_seq_len, lowbit::errc::invalid_argument,
                    "sequence length " + std::to_string(max_seq) + " exceeds the model's max_seq_len " +
                        std::to_string(c.max_seq_len));
    const int64_t M = max_batch * max_seq, D = c.dim, QW = c.q_dim(), KW = c.kv_dim();
    const int64_t V = c.vocab_size;
    // Attention's float32 scores / dP and its dscores hold the sequences of
    // one attention chunk (at most attention_chunk_bytes of scores, at least
    // one sequence), not the whole batch: attention.cuh.
    const int64_t per_sequence = int64_t(c.n_heads) * max_seq * max_seq;
    const int64_t SS =
        std::min<int64_t>(max_batch, std::max<int64_t>(1, attention_chunk_bytes / (per_sequence * 4))) * per_sequence;
    // rotary tables: the CPU trainer's (computed in double, rounded once)
    const ops::rope_table<float> rope(max_seq, c.rope_frequencies());
    cos_.resize(int64_t(rope.cos.size()));
    sin_.resize(int64_t(rope.sin.size()));
    cos_.upload(rope.cos.data(), cos_.size());
    sin_.upload(rope.sin.data(), sin_.size());
    tokens_.resize(M);
    targets_.resize(M);
    scatter_ids_.resize(M);
    scatter_start_.resize(M + 1);
    scatter_rows_.resize(M);
    xs_.resize(size_t(c.n_layers + 1));
    for (auto& x : xs_) x.resize(M * D);
    acts_.resize(checkpointing ? 1 : size_t(c.n_layers));
    // With checkpointing the one layer's attention probabilities hold one
    // attention chunk, recomputed in the backward (attention.cuh); without,
    // every layer keeps its whole batch's.
    for (layer_acts& a : acts_) a.allocate(c, max_batch, max_seq, checkpointing ? SS : max_batch * per_sequence);
    xn_f_.resize(M * D);
    rstd_f_.resize(M);
    // The head's float32 logits and their gradient exist one vocabulary
    // chunk at a time (kernels.cuh, "cross-entropy"; head_loss and
    // head_backward): vocab_chunk_ rows of the head, as many as fit in
    // logits_chunk_bytes for M rows, in whole panel units; the logits
    // buffer also holds one full row for copy_logits_row. With several
    // chunks the head's dX is summed over them in float32 (dxn32_).
    // (chunk_row_multiple: the caller's own constraint, e.g. chunks of the
    // tied head stepped as optimizer ranges)
    const int64_t unit = std::lcm(panel_row_unit(w.matrix(L.head)), std::max<int64_t>(chunk_row_multiple, 1));
    vocab_chunk_ = std::max<int64_t>(logits_chunk_bytes / (std::max<int64_t>(M, 1) * 4) / unit, 1) * unit;
    if (vocab_chunk_ > V) vocab_chunk_ = V;
    logits_.resize(std::max(M * vocab_chunk_, V));
    ce_rows_.resize(4 * M);
    dlogits_.resize(M * vocab_chunk_);
    if (vocab_chunk_ < V) {
      dxn32_.resize(M * D);
      part32_.resize(M * D);
    }
    row_loss_.resize(M);
    q_raw_.resize(M * QW);
    k_raw_.resize(M * KW);
    v_raw_.resize(M * KW);
    scores_.resize(SS);
    oh_.resize(M * QW);
    dx_.resize(M * D);
    dmid_.resize(M * D);
    dxn_.resize(M * D);
    tmp_dim_.resize(M * D);
    dattn_.resize(M * QW);
    doh_.resize(M * QW);
    dqh_.resize(M * QW);
    dkh_.resize(M * KW);
    dvh_.resize(M * KW);
    dq_raw_.resize(M * QW);
    dk_raw_.resize(M * KW);
    dv_raw_.resize(M * KW);
    dscores_.resize(SS);
    norm_scratch_.resize(rmsnorm_dw_scratch(M, D));
    activation_bytes_ = device_bytes_held_by_this();
    // last: an allocation above that throws must not leak the handle (no destructor runs)
    cublas_ok(cublasCreate(&cublas_), "cublasCreate");
  }
  ~cuda_model() { cublasDestroy(cublas_); }
  cuda_model(const cuda_model&) = delete;
  cuda_model& operator=(const cuda_model&) = delete;

  // Runs the model on tokens [batch, seq] (host memory, row-major). With
  // targets, returns the mean cross-entropy and keeps what backward()
  // needs (the rows' logsumexp; the logits themselves are recomputed
  // there); without, returns 0 (copy_logits_row then computes the logits of
  // one row).
  double forward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq) {
    lowbit::require(batch >= 1 && batch <= max_batch_ && seq >= 1 && seq <= max_seq_, lowbit::errc::invalid_argument,
                    "forward: batch x seq " + std::to_string(batch) + " x " + std::to_string(seq) +
                        " exceeds the allocated " + std::to_string(max_batch_) + " x " + std::to_string(max_seq_));
    B_ = batch, S_ = seq;
    const int64_t M = B_ * S_, D = cfg_.dim, V = cfg_.vocab_size;
    for (int64_t m = 0; m < M; ++m)
      if (tokens[m] < 0 || tokens[m] >= V)  // (checked first: the message is built only on failure)
        throw lowbit::error(lowbit::errc::invalid_argument,
            "token id " + std::to_string(tokens[m]) + " outside the vocabulary [0, " + std::to_string(V) + ")");
    if (targets)
      for (int64_t m = 0; m < M; ++m)
        if (targets[m] < 0 || targets[m] >= V)
          throw lowbit::error(lowbit::errc::invalid_argument,
              "target id " + std::to_string(targets[m]) + " outside the vocabulary");
    host_tokens_.assign(tokens, tokens + M);
    have_loss_ = false;
    last_chunk_ready_ = false;
    phase_scope ph(rec_, phase::embedding);
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(tokens_.data(), tokens, size_t(M) * 4, cudaMemcpyHostToDevice, s_));
    if (targets) LOWBIT_CUDA_CHECK(cudaMemcpyAsync(targets_.data(), targets, size_t(M) * 4, cudaMemcpyHostToDevice, s_));
    embed_forward(xs_[0].data(), M);
    ph.to(phase::layers_forward);
    for (int l = 0; l < cfg_.n_layers; ++l) layer_forward(l, acts_for(l), xs_[size_t(l) + 1].data());
    recompute_.forward_done();
    ph.to(phase::head_loss);
    rmsnorm_forward<A>(xs_.back().data(), w_.vector(L_.final_norm), xn_f_.data(), rstd_f_.data(), M, D, cfg_.norm_eps,
                       s_);
    if (!targets) {
      LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s_));
      return 0.0;
    }
    head_loss(M);
    have_loss_ = true;
    std::vector<float> rl(static_cast<size_t>(M));
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(rl.data(), row_loss_.data(), size_t(M) * 4, cudaMemcpyDeviceToHost, s_));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s_));
    double total = 0;  // in row order, in double, as the CPU trainer sums
    for (float r : rl) total += double(r);
    return total / double(M);
  }

  // Row r of the last forward's logits (vocab floats) into host memory.
  void copy_logits_row(int64_t r, float* out) {
    lowbit::require(r >= 0 && r < B_ * S_, lowbit::errc::invalid_argument,
                    "copy_logits_row: row " + std::to_string(r) + " outside the last forward's rows");
    linear_forward(cublas_, xn_f_.data() + r * cfg_.dim, act_dtype, 1, w_.matrix(L_.head), logits_.data(),
                   lowbit::dtype::f32, s_);
    last_chunk_ready_ = false;
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(out, logits_.data(), size_t(cfg_.vocab_size) * 4, cudaMemcpyDeviceToHost, s_));
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s_));
  }

  // Rows of the head per logits chunk (the vocabulary when it fits).
  int64_t vocab_chunk() const { return vocab_chunk_; }
  // Sequences per attention chunk at the longest sequence (the batch's
  // size when the whole batch fits attention_chunk_bytes).
  int64_t attention_chunk_sequences() const {
    return scores_.size() / (int64_t(cfg_.n_heads) * max_seq_ * max_seq_);
  }

  // Allocates the buffer of one vocabulary chunk of the tied head's
  // gradient (gradient_plan's tied_in_chunks) for gradients of
  // element_bytes bytes; returns its size in bytes.
  int64_t reserve_chunk_gradient(int64_t element_bytes) {
    const int64_t bytes = vocab_chunk_ * cfg_.dim * element_bytes;
    if (chunk_grad_.bytes() < bytes) chunk_grad_.resize((bytes + 3) / 4);
    return chunk_grad_.bytes();
  }

  // Gradients of the last forward's loss into grads (device, plan.size
  // elements of G: float or lowbit::bf16), calling on_ready(indices) as
  // gradients complete, in model.hpp's
  // order (each layer tensor on its own, once its weight has been used for
  // the last time; the stream
  // is synchronized before each call only if the callback needs it; the
  // optimizer's CUDA step is queued on the same stream).
  // The plan may give the tied head / embedding no place (offset -1,
  // gradient_plan's tied_in_chunks): its gradient is then made one
  // vocabulary chunk at a time, in the head's backward for chunks that hold
  // none of the batch's tokens, at the end for the others (the chunk's head
  // rows recomputed, the embedding's rows of the chunk scattered in), and
  // each chunk handed to on_range(param, first element, gradient, element
  // count) before the next is made: no whole gradient of the tied tensor
  // exists.
  template <class G, class Ready>
  void backward(G* grads, const gradient_plan& plan, Ready&& on_ready) {
    backward(grads, plan, on_ready, [](int, int64_t, const G*, int64_t) {
      throw lowbit::error(lowbit::errc::invalid_argument, "backward: the gradient plan needs an on_range callback");
    });
  }
  template <class G, class Ready, class RangeReady>
  void backward(G* grads, const gradient_plan& plan, Ready&& on_ready, RangeReady&& on_range) {
    static_assert(std::is_same<G, float>::value || std::is_same<G, lowbit::bf16>::value,
                  "gradients are float32 or bfloat16");
    const lowbit::dtype gt = lowbit::dtype_of<G>::value;
    lowbit::require(gt == lowbit::dtype::f32 || act_dtype == lowbit::dtype::bf16, lowbit::errc::unsupported,
                    "bfloat16 gradients need bfloat16 activations (cuBLAS has no float32 x float32 -> bfloat16 GEMM)");
    const int64_t M = B_ * S_, D = cfg_.dim, V = cfg_.vocab_size;
    auto g = [&](int p) { return grads + plan.offset[size_t(p)]; };
    lowbit::require(have_loss_, lowbit::errc::invalid_argument,
                    "backward: the last forward computed no loss (it had no targets)");
    const bool tied_in_chunks = plan.offset[size_t(L_.embed)] < 0;
    lowbit::require(!tied_in_chunks || cfg_.tied_embeddings, lowbit::errc::invalid_argument,
                    "backward: only a tied head's gradient can be made in chunks");
    lowbit::require(!(accumulate_ && plan.fused), lowbit::errc::invalid_argument,
                    "backward: gradient accumulation needs every tensor's own place (the two-pass gradient plan)");
    phase_scope ph(rec_, phase::head_backward);
    if (tied_in_chunks) {
      mark_chunks_with_tokens(M);
      head_backward_tied<G>(M, on_range);
    } else {
      head_backward(g(L_.head), M);
    }
    dx_.zero(s_);
    rmsnorm_backward<A>(dxn_.data(), xs_.back().data(), w_.vector(L_.final_norm), rstd_f_.data(), dx_.data(),
                        g(L_.final_norm), norm_scratch_.data(), M, D, s_, accumulate_);
    if (cfg_.tied_embeddings) on_ready(std::vector<int>{L_.final_norm});
    else on_ready(std::vector<int>{L_.head, L_.final_norm});
    for (int l = cfg_.n_layers - 1; l >= 0; --l) {
      layer_acts& a = acts_for(l);
      // Recompute this layer's intermediates. Its output is xs_[l + 1],
      // already stored, so the recompute stops before w_down's product (a
      // quarter to a third of a LLaMA layer's matrix work). The last
      // layer's are still in the buffer from the forward (the head's
      // backward and the optimizer steps before this point use other
      // buffers), unless a backward has run since.
      if (recompute_.before_backward(l)) {
        ph.to(phase::recompute);
        layer_forward(l, a, nullptr);
      }
      ph.to(phase::layers_backward);
      layer_backward(l, a, grads, plan, on_ready);
    }
    // Token embedding: each row's gradient added to its token's row (onto
    // the head's gradient when tied), rows of one token in increasing order,
    // summed in float32 and written once. With bfloat16 gradients and a
    // tied head, the rows of the batch's tokens start from the head's
    // gradient as already rounded to bfloat16 above, so they are rounded
    // twice (each rounding within 2^-8 of its own value; the other rows
    // once). Holding the tied head's gradient in float32 scratch until
    // here would cost vocab x dim x 4 bytes, twice what bfloat16 saves on
    // that tensor.
    if (tied_in_chunks) {
      ph.to(phase::tied_head_chunks);
      tied_gradient_in_chunks<G>(M, on_range);
      return;
    }
    ph.to(phase::embedding_backward);
    G* ge = g(L_.embed);
    if (!cfg_.tied_embeddings && !accumulate_) LOWBIT_CUDA_CHECK(cudaMemsetAsync(ge, 0, size_t(V) * size_t(D) * sizeof(G), s_));
    const int64_t n_ids = upload_scatter_plan(M);
    embed_scatter<A>(dx_.data(), scatter_ids_.data(), scatter_start_.data(), scatter_rows_.data(), n_ids, ge, D, s_);
    on_ready(std::vector<int>{L_.embed});
  }

  // Whether backward() adds each parameter's gradient to the buffer's
  // current value (the second and later micro-batches of a step with
  // gradient accumulation) or overwrites it (the default). With bfloat16
  // gradients every addition is rounded to bfloat16.
  void set_accumulate_gradients(bool on) { accumulate_ = on; }

  // Layers whose intermediates backward() recomputed (checkpointing), since
  // construction: n_layers - 1 per backward after a forward.
  int64_t layer_recomputes() const { return recompute_.count(); }

  // Bytes of the activation and backward scratch buffers on the device.
  int64_t activation_bytes() const { return activation_bytes_; }
  cudaStream_t stream() const { return s_; }
  // Marks the phases of forward() and backward() on r (null: none).
  void set_phase_recorder(phase_recorder* r) { rec_ = r; }

 private:
  struct layer_acts {
    device_array<A> xn1, qh, kh, vh, probs, attn, x_mid, xn2, gate, up, h;
    device_array<float> rstd1, rstd2;
    void allocate(const llama_config& c, int64_t B, int64_t S, int64_t probs_elements) {
      const int64_t M = B * S;
      xn1.resize(M * c.dim);
      rstd1.resize(M);
      qh.resize(M * c.q_dim());
      kh.resize(M * c.kv_dim());
      vh.resize(M * c.kv_dim());
      probs.resize(probs_elements);
      attn.resize(M * c.q_dim());
      x_mid.resize(M * c.dim);
      xn2.resize(M * c.dim);
      rstd2.resize(M);
      gate.resize(M * c.hidden_dim);
      up.resize(M * c.hidden_dim);
      h.resize(M * c.hidden_dim);
    }
  };

  int64_t device_bytes_held_by_this() const {
    int64_t n = 0;
    for (const auto& x : xs_) n += x.bytes();
    for (const layer_acts& a : acts_) {
      for (const device_array<A>* v : {&a.xn1, &a.qh, &a.kh, &a.vh, &a.probs, &a.attn, &a.x_mid, &a.xn2, &a.gate,
                                       &a.up, &a.h})
        n += v->bytes();
      n += a.rstd1.bytes() + a.rstd2.bytes();
    }
    for (const device_array<A>* v : {&xn_f_, &dlogits_, &q_raw_, &k_raw_, &v_raw_, &oh_, &dx_, &dmid_, &dxn_,
                                     &tmp_dim_, &dattn_, &doh_, &dqh_, &dkh_, &dvh_, &dq_raw_,
                                     &dk_raw_, &dv_raw_, &dscores_})
      n += v->bytes();
    for (const device_array<float>* v : {&rstd_f_, &logits_, &ce_rows_, &dxn32_, &part32_, &row_loss_, &scores_, &norm_scratch_})
      n += v->bytes();
    return n;
  }

  layer_acts& acts_for(int l) { return acts_[checkpointing_ ? 0 : size_t(l)]; }

  ce_rows rows_of_ce(int64_t M) {
    return ce_rows{ce_rows_.data(), ce_rows_.data() + M, ce_rows_.data() + 2 * M, ce_rows_.data() + 3 * M};
  }
  // logits_ = xn_f W[c0 : c0 + vc]^T (float32, [M, vc]).
  void chunk_logits(int64_t M, int64_t c0, int64_t vc) {
    linear_forward(cublas_, xn_f_.data(), act_dtype, M, rows_of(w_.matrix(L_.head), c0, vc), logits_.data(),
                   lowbit::dtype::f32, s_);
  }
  int64_t last_chunk_start() const { return (cfg_.vocab_size - 1) / vocab_chunk_ * vocab_chunk_; }

  // The loss, chunk by chunk: each chunk's logits folded into the rows'
  // logsumexp. The last chunk's logits stay in the buffer for the backward.
  void head_loss(int64_t M) {
    const int64_t V = cfg_.vocab_size;
    const ce_rows r = rows_of_ce(M);
    ce_begin(r, M, s_);
    for (int64_t c0 = 0; c0 < V; c0 += vocab_chunk_) {
      const int64_t vc = std::min(vocab_chunk_, V - c0);
      chunk_logits(M, c0, vc);
      ce_accumulate(logits_.data(), c0, vc, targets_.data(), r, M, s_);
    }
    ce_finish(r, row_loss_.data(), M, s_);
    last_chunk_ready_ = true;
  }

  // The head's backward, chunk by chunk from the last (whose logits the
  // forward left in the buffer; the others are recomputed): the chunk's
  // dlogits [M, vc], then its rows of the head's gradient (dW[c0 : c0 + vc]
  // = dlogits^T xn_f, written once) and its part of dX = dlogits W[c0 :
  // c0 + vc] (in float32), summed over the chunks in float32 and rounded
  // once into dxn_. gw == nullptr: no head rows are written here; after
  // each chunk's dX product (the last read of its rows in this backward),
  // chunk_done(c0, vc) is called with the chunk's dlogits still in
  // dlogits_ (head_backward_tied).
  // With one chunk this is the unchunked computation, bit for bit.
  template <class G>
  void head_backward(G* gw, int64_t M) {
    head_backward(gw, M, [](int64_t, int64_t) {});
  }
  template <class G, class ChunkDone>
  void head_backward(G* gw, int64_t M, ChunkDone&& chunk_done) {
    const int64_t V = cfg_.vocab_size, D = cfg_.dim;
    const matrix_ref head = w_.matrix(L_.head);
    const lowbit::dtype gt = lowbit::dtype_of<G>::value;
    const ce_rows r = rows_of_ce(M);
    const int64_t last = last_chunk_start();
    const bool one = vocab_chunk_ >= V;
    for (int64_t c0 = last; c0 >= 0; c0 -= vocab_chunk_) {
      const int64_t vc = std::min(vocab_chunk_, V - c0);
      if (c0 != last || !last_chunk_ready_) chunk_logits(M, c0, vc);
      ce_gradient(logits_.data(), c0, vc, targets_.data(), r, dlogits_.data(), vc, M, s_);
      if (gw)
        linear_weight_grad(cublas_, dlogits_.data(), xn_f_.data(), act_dtype, M, vc, D, gw + c0 * D, gt, accumulate_,
                           s_);
      if (one) {
        linear_backward_input(cublas_, dlogits_.data(), act_dtype, M, head, dxn_.data(), s_);
      } else {
        linear_backward_input(cublas_, dlogits_.data(), act_dtype, M, rows_of(head, c0, vc), part32_.data(),
                              lowbit::dtype::f32, s_);
        convert_into(dxn32_.data(), part32_.data(), M * D, c0 != last, s_);
      }
      chunk_done(c0, vc);
    }
    if (!one) convert_into(dxn_.data(), dxn32_.data(), M * D, false, s_);
    last_chunk_ready_ = false;
  }

  attention_dims attn_dims() const {
    return {B_, S_, int64_t(cfg_.n_heads), int64_t(cfg_.n_kv_heads), int64_t(cfg_.head_dim())};
  }
  // Sequences per attention chunk at the current sequence length: as many
  // as the scores buffer holds (sized for the longest sequence).
  int64_t attn_batch_chunk() const {
    return std::max<int64_t>(1, scores_.size() / (int64_t(cfg_.n_heads) * S_ * S_));
  }
  // Whether a layer's probabilities buffer holds the whole batch's (kept
  // from the forward for the backward) or one chunk's (recomputed).
  bool probs_kept(const layer_acts& a) const { return a.probs.size() >= B_ * int64_t(cfg_.n_heads) * S_ * S_; }

  void embed_forward(A* out, int64_t M) {
    const matrix_ref e = w_.matrix(L_.embed);
    switch (e.kind) {
      case matrix_storage::quantized:
        lowbit::cuda::dequantize_rows(e.q, e.rows, e.cols, tokens_.data(), M,
                                      dview(out, act_dtype, M, e.cols), s_, false);
        return;
      case matrix_storage::f32: embed_gather<float, A>(static_cast<const float*>(e.data), tokens_.data(), out, M, e.cols, s_); return;
      case matrix_storage::bf16:
        embed_gather<lowbit::bf16, A>(static_cast<const lowbit::bf16*>(e.data), tokens_.data(), out, M, e.cols, s_);
        return;
      case matrix_storage::f64: break;
    }
    throw lowbit::error(lowbit::errc::unsupported, "embedding: float64 weights on the GPU");
  }

  // Which vocabulary chunks hold a token of the last forward (host side;
  // chunk_has_tokens_[c0 / vocab_chunk_]).
  void mark_chunks_with_tokens(int64_t M) {
    const int64_t V = cfg_.vocab_size;
    chunk_has_tokens_.assign(size_t((V + vocab_chunk_ - 1) / vocab_chunk_), 0);
    for (int64_t m = 0; m < M; ++m) chunk_has_tokens_[size_t(host_tokens_[size_t(m)] / vocab_chunk_)] = 1;
  }

  // The head's backward when the tied head's gradient is made per chunk
  // (tied_in_chunks): head_backward's dX, and for a chunk that holds no
  // token of the batch, also its rows' gradient, which is then complete
  // (the embedding adds nothing to those rows): handed to on_range at once,
  // after the chunk's dX product has read the rows. The chunks that hold
  // tokens are made at the end (tied_gradient_in_chunks), where the
  // embedding's rows are added; only those recompute their logits there.
  // With a byte-level corpus on a large vocabulary (the 1B goal's run:
  // 128256 rows in 16 chunks, tokens in the first) that is one chunk's
  // recompute instead of all sixteen. The bits are those of the end pass:
  // the same products on the same logits (the last chunk's kept from the
  // forward equal their recompute, as head_backward already relies on).
  template <class G, class RangeReady>
  void head_backward_tied(int64_t M, RangeReady& on_range) {
    const int64_t D = cfg_.dim;
    const lowbit::dtype gt = lowbit::dtype_of<G>::value;
    reserve_chunk_gradient(int64_t(sizeof(G)));
    G* cg = reinterpret_cast<G*>(chunk_grad_.data());
    head_backward(static_cast<G*>(nullptr), M, [&](int64_t c0, int64_t vc) {
      if (chunk_has_tokens_[size_t(c0 / vocab_chunk_)]) return;  // made at the end, with the embedding's rows
      linear_weight_grad(cublas_, dlogits_.data(), xn_f_.data(), act_dtype, M, vc, D, cg, gt, false, s_);
      on_range(L_.embed, c0 * D, static_cast<const G*>(cg), vc * D);
    });
  }

  // The tied head / embedding's gradient of the chunks that hold tokens of
  // the batch (the others were stepped in head_backward_tied), chunk by
  // chunk at the end of the backward (dx_ holds dloss/d(embedding
  // output)): the chunk's logits recomputed (the head is not updated
  // before its own chunk is), its dlogits, its head rows dW[c0 : c0 + vc]
  // = dlogits^T xn_f, then the embedding rows of the batch's tokens in the
  // chunk added in (the unchunked path's arithmetic: the same products, the
  // same scatter order), handed to on_range. The optimizer steps each chunk
  // on the stream before the next chunk overwrites the buffer.
  template <class G, class RangeReady>
  void tied_gradient_in_chunks(int64_t M, RangeReady& on_range) {
    const int64_t V = cfg_.vocab_size, D = cfg_.dim;
    const lowbit::dtype gt = lowbit::dtype_of<G>::value;
    const ce_rows r = rows_of_ce(M);
    upload_scatter_plan(M);
    const std::vector<int32_t>& ids = host_scatter_ids_;
    reserve_chunk_gradient(int64_t(sizeof(G)));
    G* cg = reinterpret_cast<G*>(chunk_grad_.data());
    for (int64_t c0 = 0; c0 < V; c0 += vocab_chunk_) {
      if (!chunk_has_tokens_[size_t(c0 / vocab_chunk_)]) continue;  // stepped in head_backward_tied
      const int64_t vc = std::min(vocab_chunk_, V - c0);
      chunk_logits(M, c0, vc);
      ce_gradient(logits_.data(), c0, vc, targets_.data(), r, dlogits_.data(), vc, M, s_);
      linear_weight_grad(cublas_, dlogits_.data(), xn_f_.data(), act_dtype, M, vc, D, cg, gt, false, s_);
      const int64_t u0 = std::lower_bound(ids.begin(), ids.end(), int32_t(c0)) - ids.begin();
      const int64_t u1 = std::lower_bound(ids.begin(), ids.end(), int32_t(c0 + vc)) - ids.begin();
      embed_scatter<A>(dx_.data(), scatter_ids_.data() + u0, scatter_start_.data() + u0, scatter_rows_.data(), u1 - u0,
                       cg, D, s_, int32_t(c0));
      on_range(L_.embed, c0 * D, static_cast<const G*>(cg), vc * D);
    }
  }

  // Token ids of the last forward grouped by id (host sort, then upload):
  // the deterministic scatter order of the embedding backward.
  int64_t upload_scatter_plan(int64_t M) {
    const scatter_plan p = build_scatter_plan(host_tokens_.data(), M);
    host_scatter_ids_ = p.ids;
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(scatter_ids_.data(), p.ids.data(), p.ids.size() * 4, cudaMemcpyHostToDevice, s_));
    LOWBIT_CUDA_CHECK(
        cudaMemcpyAsync(scatter_start_.data(), p.start.data(), p.start.size() * 4, cudaMemcpyHostToDevice, s_));
    LOWBIT_CUDA_CHECK(
        cudaMemcpyAsync(scatter_rows_.data(), p.rows.data(), p.rows.size() * 4, cudaMemcpyHostToDevice, s_));
    // the host vectors die at return: wait for the copies (pageable memory
    // copies are staged synchronously, but say so explicitly)
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(s_));
    return p.n_ids();
  }

  void layer_forward(int l, layer_acts& a, A* x_out) {
    const layer_params& P = L_.layers[size_t(l)];
    const int64_t M = B_ * S_, D = cfg_.dim, F = cfg_.hidden_dim, hd = cfg_.head_dim();
    const A* x = xs_[size_t(l)].data();
    rmsnorm_forward<A>(x, w_.vector(P.attn_norm), a.xn1.data(), a.rstd1.data(), M, D, cfg_.norm_eps, s_);
    linear_forward(cublas_, a.xn1.data(), act_dtype, M, w_.matrix(P.wq), q_raw_.data(), act_dtype, s_);
    linear_forward(cublas_, a.xn1.data(), act_dtype, M, w_.matrix(P.wk), k_raw_.data(), act_dtype, s_);
    linear_forward(cublas_, a.xn1.data(), act_dtype, M, w_.matrix(P.wv), v_raw_.data(), act_dtype, s_);
    phase_scope attention(rec_, phase::attention_forward);  // with its rotary and head-major permutes
    permute_heads<A>(q_raw_.data(), a.qh.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_heads, hd, true, false, true, s_);
    permute_heads<A>(k_raw_.data(), a.kh.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_kv_heads, hd, true, false, true,
                     s_);
    permute_heads<A>(v_raw_.data(), a.vh.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_kv_heads, hd, false, false,
                     true, s_);
    attention_forward<A>(cublas_, attn_dims(), attn_batch_chunk(), a.qh.data(), a.kh.data(), a.vh.data(),
                         scores_.data(), a.probs.data(), probs_kept(a), oh_.data(), s_);
    permute_heads<A>(oh_.data(), a.attn.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_heads, hd, false, false, false,
                     s_);
    attention.close();
    linear_forward(cublas_, a.attn.data(), act_dtype, M, w_.matrix(P.wo), a.x_mid.data(), act_dtype, s_);
    add_into<A>(a.x_mid.data(), x, M * D, s_);
    rmsnorm_forward<A>(a.x_mid.data(), w_.vector(P.mlp_norm), a.xn2.data(), a.rstd2.data(), M, D, cfg_.norm_eps, s_);
    linear_forward(cublas_, a.xn2.data(), act_dtype, M, w_.matrix(P.w_gate), a.gate.data(), act_dtype, s_);
    linear_forward(cublas_, a.xn2.data(), act_dtype, M, w_.matrix(P.w_up), a.up.data(), act_dtype, s_);
    swiglu_forward<A>(a.gate.data(), a.up.data(), a.h.data(), M * F, s_);
    if (!x_out) return;  // a checkpointing recompute: the output is stored already
    linear_forward(cublas_, a.h.data(), act_dtype, M, w_.matrix(P.w_down), x_out, act_dtype, s_);
    add_into<A>(x_out, a.x_mid.data(), M * D, s_);
  }

  // On entry dx_ holds dloss/d(layer output); on exit dloss/d(layer input).
  // Each tensor goes to on_ready as soon as its gradient is complete and its
  // weight used for the last time (model.hpp's order).
  template <class G, class Ready>
  void layer_backward(int l, layer_acts& a, G* grads, const gradient_plan& plan, Ready&& on_ready) {
    const layer_params& P = L_.layers[size_t(l)];
    const int64_t M = B_ * S_, D = cfg_.dim, F = cfg_.hidden_dim, QW = cfg_.q_dim(), KW = cfg_.kv_dim(),
                  hd = cfg_.head_dim();
    const lowbit::dtype t = act_dtype, gt = lowbit::dtype_of<G>::value;
    auto g = [&](int p) { return grads + plan.offset[size_t(p)]; };
    const A* x = xs_[size_t(l)].data();
    // MLP: out = x_mid + down(silu(gate(xn2)) * up(xn2))
    linear_weight_grad(cublas_, dx_.data(), a.h.data(), t, M, D, F, g(P.w_down), gt, accumulate_, s_);
    // The layer's [M, F] activations are dead once read here, so their
    // gradients overwrite them (three [M, F] buffers less: 96 MiB for the 1B
    // shape at 2048 tokens): dh over h (after w_down's gradient read h),
    // then dgate over gate and dup over up (swiglu_backward runs in place).
    A* const dh = a.h.data();
    A* const dgate = a.gate.data();
    A* const dup = a.up.data();
    linear_backward_input(cublas_, dx_.data(), t, M, w_.matrix(P.w_down), dh, s_);
    on_ready(std::vector<int>{P.w_down});
    swiglu_backward<A>(dh, a.gate.data(), a.up.data(), dgate, dup, M * F, s_);
    linear_weight_grad(cublas_, dgate, a.xn2.data(), t, M, F, D, g(P.w_gate), gt, accumulate_, s_);
    linear_backward_input(cublas_, dgate, t, M, w_.matrix(P.w_gate), dxn_.data(), s_);
    on_ready(std::vector<int>{P.w_gate});
    linear_weight_grad(cublas_, dup, a.xn2.data(), t, M, F, D, g(P.w_up), gt, accumulate_, s_);
    linear_backward_input(cublas_, dup, t, M, w_.matrix(P.w_up), tmp_dim_.data(), s_);
    on_ready(std::vector<int>{P.w_up});
    add_into<A>(dxn_.data(), tmp_dim_.data(), M * D, s_);
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(dmid_.data(), dx_.data(), size_t(M * D) * sizeof(A), cudaMemcpyDeviceToDevice, s_));
    rmsnorm_backward<A>(dxn_.data(), a.x_mid.data(), w_.vector(P.mlp_norm), a.rstd2.data(), dmid_.data(),
                        g(P.mlp_norm), norm_scratch_.data(), M, D, s_, accumulate_);
    on_ready(std::vector<int>{P.mlp_norm});
    // Attention: x_mid = x + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
    linear_weight_grad(cublas_, dmid_.data(), a.attn.data(), t, M, D, QW, g(P.wo), gt, accumulate_, s_);
    linear_backward_input(cublas_, dmid_.data(), t, M, w_.matrix(P.wo), dattn_.data(), s_);
    on_ready(std::vector<int>{P.wo});
    phase_scope attention(rec_, phase::attention_backward);  // with its permutes and inverse rotary
    permute_heads<A>(dattn_.data(), doh_.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_heads, hd, false, false, true,
                     s_);
    attention_backward<A>(cublas_, attn_dims(), attn_batch_chunk(), doh_.data(), a.qh.data(), a.kh.data(),
                          a.vh.data(), a.probs.data(), probs_kept(a), scores_.data(), dscores_.data(), dqh_.data(),
                          dkh_.data(), dvh_.data(), s_);
    permute_heads<A>(dqh_.data(), dq_raw_.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_heads, hd, true, true, false,
                     s_);
    permute_heads<A>(dkh_.data(), dk_raw_.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_kv_heads, hd, true, true,
                     false, s_);
    permute_heads<A>(dvh_.data(), dv_raw_.data(), cos_.data(), sin_.data(), B_, S_, cfg_.n_kv_heads, hd, false, false,
                     false, s_);
    attention.close();
    linear_weight_grad(cublas_, dq_raw_.data(), a.xn1.data(), t, M, QW, D, g(P.wq), gt, accumulate_, s_);
    linear_backward_input(cublas_, dq_raw_.data(), t, M, w_.matrix(P.wq), dxn_.data(), s_);
    on_ready(std::vector<int>{P.wq});
    linear_weight_grad(cublas_, dk_raw_.data(), a.xn1.data(), t, M, KW, D, g(P.wk), gt, accumulate_, s_);
    linear_backward_input(cublas_, dk_raw_.data(), t, M, w_.matrix(P.wk), tmp_dim_.data(), s_);
    on_ready(std::vector<int>{P.wk});
    add_into<A>(dxn_.data(), tmp_dim_.data(), M * D, s_);
    linear_weight_grad(cublas_, dv_raw_.data(), a.xn1.data(), t, M, KW, D, g(P.wv), gt, accumulate_, s_);
    linear_backward_input(cublas_, dv_raw_.data(), t, M, w_.matrix(P.wv), tmp_dim_.data(), s_);
    on_ready(std::vector<int>{P.wv});
    add_into<A>(dxn_.data(), tmp_dim_.data(), M * D, s_);
    LOWBIT_CUDA_CHECK(cudaMemcpyAsync(dx_.data(), dmid_.data(), size_t(M * D) * sizeof(A), cudaMemcpyDeviceToDevice, s_));
    rmsnorm_backward<A>(dxn_.data(), x, w_.vector(P.attn_norm), a.rstd1.data(), dx_.data(), g(P.attn_norm),
                        norm_scratch_.data(), M, D, s_, accumulate_);
    on_ready(std::vector<int>{P.attn_norm});
  }

  llama_config cfg_;
  const param_layout& L_;
  device_weights& w_;
  int64_t max_batch_, max_seq_;
  bool checkpointing_;
  bool accumulate_ = false;    // backward() adds to the gradient buffer (set_accumulate_gradients)
  layer_recompute recompute_;  // which layers the backward recomputes
  cudaStream_t s_;
  cublasHandle_t cublas_ = nullptr;
  phase_recorder* rec_ = nullptr;  // --profile: where each step's time goes
  int64_t B_ = 0, S_ = 0;
  int64_t activation_bytes_ = 0;
  int64_t vocab_chunk_ = 0;
  std::vector<int32_t> host_tokens_;
  std::vector<int32_t> host_scatter_ids_;  // the last scatter plan's distinct ids, increasing
  std::vector<uint8_t> chunk_has_tokens_;  // per vocabulary chunk: a token of the last backward's batch falls in it
  device_array<float> cos_, sin_;
  device_array<int32_t> tokens_, targets_, scatter_ids_, scatter_start_, scatter_rows_;
  std::vector<device_array<A>> xs_;  // residual stream into layer l (xs_[L] = final)
  std::vector<layer_acts> acts_;
  device_array<A> xn_f_;
  device_array<A> dlogits_;  // one vocabulary chunk of dloss/dlogits [M, vocab_chunk_]
  device_array<float> rstd_f_, row_loss_;
  device_array<float> logits_;   // one vocabulary chunk of logits [M, vocab_chunk_] (or one row [vocab])
  device_array<float> ce_rows_;  // ce_rows: running max, sum, target logit, logsumexp [4][M]
  device_array<float> dxn32_;    // the head's dX summed over vocabulary chunks [M, D] (several chunks only)
  device_array<float> part32_;   // one chunk's part of it [M, D]
  device_array<float> chunk_grad_;  // one vocabulary chunk of the tied head's gradient (G elements; on first use)
  bool have_loss_ = false;         // the last forward had targets (backward may follow)
  bool last_chunk_ready_ = false;  // logits_ holds the last vocabulary chunk of the last forward
  device_array<A> q_raw_, k_raw_, v_raw_, oh_;
  device_array<float> scores_;  // attention scores, then dP in the backward (float32)
  device_array<A> dx_, dmid_, dxn_, tmp_dim_, dattn_, doh_, dqh_, dkh_, dvh_, dq_raw_, dk_raw_,
      dv_raw_, dscores_;
  device_array<float> norm_scratch_;
};

}  // namespace gpu
}  // namespace llama
