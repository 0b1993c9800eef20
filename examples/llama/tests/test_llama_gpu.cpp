// GPU tests of the trainer's CUDA path (examples/llama/cuda), against the
// CPU trainer, which the CPU tests tie to Hugging Face and to float64 finite
// differences:
//  - the loss and every parameter's gradient of one batch equal the CPU
//    trainer's within stated tolerances, for float32 weights, bfloat16
//    weights and int8 / NF4 quantized weights, float32 and bfloat16
//    activations, GQA with an untied head and one kv head with tied
//    embeddings, with and without activation checkpointing;
//  - the validation loss falls in every mode, paged and CPU-offloaded
//    AdamW 8-bit included;
//  - the fused backward-update gives the same weights as the two-pass step
//    (bit for bit), a tied head's gradient made and stepped per vocabulary
//    chunk included;
//  - save, resume and continue equals the uninterrupted run, bit for bit,
//    and a GPU checkpoint resumes on the CPU;
//  - the logits made in vocabulary chunks give the loss and gradients of
//    the whole vocabulary at once, and one row's logits (sampling) match the
//    CPU's;
//  - --export-hf writes the weights trained on the device;
//  - gradient accumulation (--grad-accum) gives the CPU trainer's loss and
//    gradients of the whole batch, and the whole batch's training losses;
//  - bfloat16 gradients (--grad-dtype bf16) are the float32 ones rounded
//    once (a tied head's rows of the batch's tokens twice), the loss falls
//    with them, the fused update equals the two-pass step, and the
//    gradient buffer is half as large.
// The binary exits 77 (CTest SKIP) where no CUDA device is present. Test
// cases named "[large]" (many training steps) are left out under
// compute-sanitizer by scripts/gpu-check.sh.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "../backend.hpp"
#include "../dataset.hpp"
#include "../hf_checkpoint.hpp"
#include "../hf_export.hpp"
#include "../init.hpp"
#include "../session.hpp"
#include "weight_bytes.hpp"

using namespace llama;

namespace {

llama_config small_config(bool tied, int kv_heads) {
  llama_config c;
  c.vocab_size = 256, c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = kv_heads, c.hidden_dim = 176;
  c.max_seq_len = 64;
  c.tied_embeddings = tied;
  return c;
}

const dataset& corpus() {
  static const dataset d = dataset::load(LLAMA_TEST_CORPUS, corpus_format::text, byte_tokenizer(), 256, 0.1);
  return d;
}

session_options options_for(const mode_info& m, int64_t batch, int64_t seq) {
  session_options o;
  o.batch = batch;
  o.seq = seq;
  o.hparams.lr = m.rule == rule_kind::adamw ? 2e-3f : 1e-3f;
  o.hparams.seed = 99;
  return o;
}

// A CPU and a CUDA session of the same mode with the same random weights.
struct pair_of_sessions {
  std::unique_ptr<session_base> cpu, gpu;
  pair_of_sessions(const llama_config& c, const std::string& mode, const session_options& o, const std::string& act) {
    const mode_info& m = find_mode(mode);
    cpu = make_session(c, m, o, "cpu");
    gpu = make_session(c, m, o, "cuda", act);
    init_random(cpu->weights(), c, 7);
    init_random(gpu->weights(), c, 7);
    cpu->weights_changed();
    gpu->weights_changed();
  }
};

double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Loss and gradients of one batch, GPU against CPU. Tolerances: float32
// activations differ from the CPU only by summation order (cuBLAS, block
// reductions): 1e-5 relative on the loss, 2e-3 relative L2 per gradient
// tensor. bfloat16 activations round every activation to 8 bits of
// mantissa (relative 2^-9 per value), and the GEMMs round the quantized
// weights to bfloat16: 2e-2 on the loss, 0.1 per gradient tensor. A wrong
// index, layout or transpose gives errors of order 1.
void check_gradients(const llama_config& c, const std::string& mode, const std::string& act, bool checkpointing) {
  CAPTURE(mode);
  CAPTURE(act);
  CAPTURE(checkpointing);
  const mode_info& m = find_mode(mode);
  session_options o = options_for(m, 4, 32);  // M = 128: the tensor-core regime for bf16 quantized GEMMs
  o.checkpointing = checkpointing;
  pair_of_sessions s(c, mode, o, act);
  std::vector<int32_t> x(size_t(o.batch * o.seq)), y(x.size());
  corpus().train_batch(99, 3, o.batch, o.seq, x.data(), y.data());
  std::vector<float> gc, gg;
  const double lc = s.cpu->gradients(x.data(), y.data(), gc);
  const double lg = s.gpu->gradients(x.data(), y.data(), gg);
  const bool f32 = act == "f32" || (act == "auto" && m.storage == matrix_storage::f32);
  const double loss_tol = f32 ? 1e-5 : 2e-2, grad_tol = f32 ? 2e-3 : 0.1;
  CHECK(std::abs(lg - lc) <= loss_tol * lc);
  REQUIRE(gc.size() == gg.size());
  const param_layout& L = s.cpu->layout();
  int64_t off = 0;
  double worst = 0;
  for (const param_info& p : L.params) {
    if (c.tied_embeddings && p.name == "lm_head.weight") continue;
    const double e = rel_l2(gg.data() + off, gc.data() + off, p.numel);
    CAPTURE(p.name);
    CHECK(e <= grad_tol);
    worst = std::max(worst, e);
    off += p.numel;
  }
  MESSAGE(mode << " " << act << std::string(checkpointing ? " checkpointing" : "") << ": loss cpu " << lc << " gpu " << lg
                << ", worst gradient relative L2 " << worst);
}

// Gradients in bfloat16 (--grad-dtype bf16) against the float32 gradient
// buffer, both on the GPU with the same weights and batch. The forward and
// the backward's data path do not depend on the gradient dtype (the losses
// are equal bit for bit), and every gradient is summed in float32 and
// rounded once to bf16 (round to nearest, 8 significant bits: within 2^-8
// of its value). Per element: |g16 - g32| <= 2^-8 |g32| + 1e-5 max|g32|
// over the tensor (the floor: cuBLAS may sum a bf16-output GEMM in another
// float32 order, a few float32 ulps of the sum of |terms|; a wrong index,
// dtype or missed write gives errors of order |g32|). Tied embeddings: the
// rows of the batch's tokens add the embedding scatter onto the head's
// gradient already rounded to bf16, so they are rounded twice; there the
// tolerance is 2^-7 relative L2 over those rows (two roundings, each about
// 2^-9.5 relative RMS, with room for a head part up to several times the
// sum); the other rows are rounded once and checked per element.
void check_bf16_gradients(const llama_config& c, const std::string& mode, bool checkpointing) {
  CAPTURE(mode);
  CAPTURE(checkpointing);
  const mode_info& m = find_mode(mode);
  session_options o = options_for(m, 4, 32);
  o.checkpointing = checkpointing;
  std::unique_ptr<session_base> s32 = make_session(c, m, o, "cuda");
  o.grad_dtype = lowbit::dtype::bf16;
  std::unique_ptr<session_base> s16 = make_session(c, m, o, "cuda");
  for (session_base* s : {s32.get(), s16.get()}) {
    init_random(s->weights(), c, 7);
    s->weights_changed();
  }
  std::vector<int32_t> x(size_t(o.batch * o.seq)), y(x.size());
  corpus().train_batch(99, 3, o.batch, o.seq, x.data(), y.data());
  std::vector<float> g32, g16;
  const double l32 = s32->gradients(x.data(), y.data(), g32);
  const double l16 = s16->gradients(x.data(), y.data(), g16);
  CHECK(l16 == l32);
  REQUIRE(g16.size() == g32.size());
  const param_layout& L = s32->layout();
  std::vector<char> in_batch(size_t(c.vocab_size), 0);
  for (int32_t t : x) in_batch[size_t(t)] = 1;
  int64_t off = 0;
  double worst = 0;  // largest per-element error / allowed
  for (int pi = 0; pi < int(L.params.size()); ++pi) {
    const param_info& p = L.params[size_t(pi)];
    CAPTURE(p.name);
    const float* a = g16.data() + off;
    const float* b = g32.data() + off;
    const bool twice = c.tied_embeddings && pi == L.embed;  // rows of the batch's tokens: two roundings
    double scale = 0;
    for (int64_t i = 0; i < p.numel; ++i) scale = std::max(scale, std::abs(double(b[i])));
    CHECK(scale > 0);
    int64_t bad = 0;
    double num = 0, den = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      const double err = std::abs(double(a[i]) - double(b[i]));
      if (twice && in_batch[size_t(i / c.dim)]) {
        num += err * err;
        den += double(b[i]) * double(b[i]);
        continue;
      }
      const double allowed = std::ldexp(std::abs(double(b[i])), -8) + 1e-5 * scale;
      if (!(err <= allowed)) ++bad;
      worst = std::max(worst, err / allowed);
    }
    CHECK(bad == 0);
    if (twice) {
      CHECK(den > 0);
      CHECK(std::sqrt(num / den) <= std::ldexp(1.0, -7));
      MESSAGE(p.name << ": relative L2 over the batch's token rows (rounded twice) " << std::sqrt(num / den));
    }
    off += p.numel;
  }
  MESSAGE(mode << std::string(checkpointing ? " checkpointing" : "") << std::string(c.tied_embeddings ? " tied" : "")
                << ": bf16 gradients, worst per-element error " << worst << " x allowed");
}

// Each tensor's gradient in got against want (relative L2 within tol, the
// tied head counted once); returns the worst relative L2.
double check_tensors_close(const llama_config& c, const param_layout& L, const std::vector<float>& got,
                           const std::vector<float>& want, double tol) {
  REQUIRE(got.size() == want.size());
  int64_t off = 0;
  double worst = 0;
  for (const param_info& p : L.params) {
    if (c.tied_embeddings && p.name == "lm_head.weight") continue;
    CAPTURE(p.name);
    const double e = rel_l2(got.data() + off, want.data() + off, p.numel);
    CHECK(e <= tol);
    worst = std::max(worst, e);
    off += p.numel;
  }
  return worst;
}

// The head's logits in vocabulary chunks (session_options::
// logits_chunk_bytes, here 48 vocabulary rows for 128 positions) against
// the whole vocabulary at once, on the GPU with the same weights and batch.
// Only the online logsumexp differs (a rescaling rounding per chunk and
// row, float32), so the loss agrees within 1e-6 relative and each gradient
// tensor within 1e-5 relative L2 with float32 activations; with bfloat16
// activations dlogits is rounded to bfloat16, and a softmax value moved by
// a float32 rounding can round to the neighbouring bfloat16 (2^-8
// relative), so 2^-8 relative L2. A chunk at a wrong offset or a missed
// chunk gives errors of order 1. Also the sampling path (one row's logits,
// last_logits) against the CPU trainer's: 1e-5 / 2e-2 relative L2 (float32
// / bfloat16 activations, as check_gradients' loss).
void check_logit_chunks(const llama_config& c, const std::string& mode) {
  CAPTURE(mode);
  const mode_info& m = find_mode(mode);
  session_options o = options_for(m, 4, 32);
  std::unique_ptr<session_base> whole = make_session(c, m, o, "cuda");
  o.logits_chunk_bytes = 48 * 4 * o.batch * o.seq;
  std::unique_ptr<session_base> chunked = make_session(c, m, o, "cuda");
  std::unique_ptr<session_base> cpu = make_session(c, m, o, "cpu");
  for (session_base* s : {whole.get(), chunked.get(), cpu.get()}) {
    init_random(s->weights(), c, 7);
    s->weights_changed();
  }
  CHECK(whole->device_description().find("chunks") == std::string::npos);
  CHECK(chunked->device_description().find("logits in chunks of 48 vocabulary rows") != std::string::npos);
  std::vector<int32_t> x(size_t(o.batch * o.seq)), y(x.size());
  corpus().train_batch(99, 5, o.batch, o.seq, x.data(), y.data());
  std::vector<float> gw, gc;
  const double lw = whole->gradients(x.data(), y.data(), gw);
  const double lc = chunked->gradients(x.data(), y.data(), gc);
  CHECK(std::abs(lc - lw) <= 1e-6 * lw);
  CHECK(chunked->loss(x.data(), y.data()) == lc);  // the loss alone (no dlogits pass) is the same computation
  const bool f32 = m.storage == matrix_storage::f32;
  const double grad_tol = f32 ? 1e-5 : std::ldexp(1.0, -8);
  const double worst = check_tensors_close(c, whole->layout(), gc, gw, grad_tol);
  std::vector<float> rg(size_t(c.vocab_size)), rc(size_t(c.vocab_size));
  chunked->last_logits(x.data(), o.seq, rg.data());
  cpu->last_logits(x.data(), o.seq, rc.data());
  const double le = rel_l2(rg.data(), rc.data(), c.vocab_size);
  CHECK(le <= (f32 ? 1e-5 : 2e-2));
  MESSAGE(mode << ": chunked logits, loss " << lc << " vs " << lw << ", worst gradient relative L2 " << worst
                << ", last-row logits vs CPU " << le);
}

// Attention in chunks of sequences (session_options::attention_chunk_bytes,
// here 2 of a batch of 3: chunks of 2 and 1) against the whole batch at
// once, with checkpointing (the recomputed forward chunks too). Each chunk
// runs the same products with fewer batch entries and the same per-row
// softmax kernels, so the emulator gives the same bits; on a GPU cuBLAS may
// choose another kernel for another batch count, so the loss may differ by
// 1e-6 relative and each gradient tensor by 1e-5 relative L2 (float32
// activations) or 2^-8 (bfloat16: a value moved by a float32 rounding can
// round to the neighbouring bfloat16). A chunk at a wrong offset, or a
// sequence left out, gives errors of order 1.
void check_attention_chunks(const llama_config& c, const std::string& mode) {
  CAPTURE(mode);
  const mode_info& m = find_mode(mode);
  session_options o = options_for(m, 3, 32);
  o.checkpointing = true;
  std::unique_ptr<session_base> whole = make_session(c, m, o, "cuda");
  o.attention_chunk_bytes = 2 * int64_t(c.n_heads) * o.seq * o.seq * 4;
  std::unique_ptr<session_base> chunked = make_session(c, m, o, "cuda");
  for (session_base* s : {whole.get(), chunked.get()}) {
    init_random(s->weights(), c, 8);
    s->weights_changed();
  }
  CHECK(whole->device_description().find("attention") == std::string::npos);
  CHECK(chunked->device_description().find("attention 2 sequence(s) at a time") != std::string::npos);
  std::vector<int32_t> x(size_t(o.batch * o.seq)), y(x.size());
  corpus().train_batch(99, 6, o.batch, o.seq, x.data(), y.data());
  std::vector<float> gw, gc;
  const double lw = whole->gradients(x.data(), y.data(), gw);
  const double lc = chunked->gradients(x.data(), y.data(), gc);
  CHECK(std::abs(lc - lw) <= 1e-6 * lw);
  const bool f32 = m.storage == matrix_storage::f32;
  const double grad_tol = f32 ? 1e-5 : std::ldexp(1.0, -8);
  const double worst = check_tensors_close(c, whole->layout(), gc, gw, grad_tol);
  MESSAGE(mode << ": attention in chunks of 2 sequences, loss " << lc << " vs " << lw
                << ", worst gradient relative L2 " << worst);
}

// (A step takes batch * grad_accum sequences.) Returns the steps' losses.
std::vector<double> train(session_base& s, int64_t from, int64_t to, float clip) {
  const session_options& o = s.options();
  const int64_t sequences = o.batch * o.grad_accum;
  std::vector<int32_t> x(size_t(sequences * o.seq)), y(x.size());
  std::vector<double> losses;
  for (int64_t step = from; step < to; ++step) {
    corpus().train_batch(99, step, sequences, o.seq, x.data(), y.data());
    const step_result r = s.step(x.data(), y.data(), s.optimizer().step_count() < 5 ? 2e-4f : 1e-3f, clip);
    REQUIRE(!r.skipped);
    losses.push_back(r.loss);
  }
  return losses;
}

// Gradient accumulation on the GPU (--grad-accum 2, micro-batches of 2
// sequences) against the CPU trainer's one batch of the same 4 sequences:
// loss and gradients within check_gradients' tolerances for the
// activation dtype (the CPU trainer's own accumulation equals its whole
// batch within 1e-5, test_training.cpp; a micro-batch's gradient written
// instead of added, or the mean's 1/2 missing, gives errors of order 1).
// With bfloat16 gradients each micro-batch's addition is rounded to bf16
// (relative 2^-9 each), far inside the bf16-activation tolerance. Then
// three steps: the accumulated GPU run against the whole-batch GPU run,
// training losses within 1e-3 relative.
void check_accumulation(const llama_config& c, const std::string& mode, const std::string& act,
                        lowbit::dtype grad_dtype) {
  CAPTURE(mode);
  CAPTURE(act);
  const std::string gradients = lowbit::dtype_name(grad_dtype);
  CAPTURE(gradients);
  const mode_info& m = find_mode(mode);
  session_options whole = options_for(m, 4, 32);
  whole.grad_dtype = grad_dtype;
  session_options micro = whole;
  micro.batch = 2;
  micro.grad_accum = 2;
  session_options on_cpu = whole;
  on_cpu.grad_dtype = lowbit::dtype::f32;
  std::unique_ptr<session_base> cpu = make_session(c, m, on_cpu, "cpu");
  std::unique_ptr<session_base> gpu_micro = make_session(c, m, micro, "cuda", act);
  std::unique_ptr<session_base> gpu_whole = make_session(c, m, whole, "cuda", act);
  for (session_base* s : {cpu.get(), gpu_micro.get(), gpu_whole.get()}) {
    init_random(s->weights(), c, 7);
    s->weights_changed();
  }
  std::vector<int32_t> x(size_t(4 * 32)), y(x.size());
  corpus().train_batch(99, 3, 4, 32, x.data(), y.data());
  std::vector<float> gc, gg;
  const double lc = cpu->gradients(x.data(), y.data(), gc);
  const double lg = gpu_micro->gradients(x.data(), y.data(), gg);
  const bool f32 = act == "f32" || (act == "auto" && m.storage == matrix_storage::f32);
  const double loss_tol = f32 ? 1e-5 : 2e-2, grad_tol = f32 ? 2e-3 : 0.1;
  CHECK(std::abs(lg - lc) <= loss_tol * lc);
  REQUIRE(gc.size() == gg.size());
  int64_t off = 0;
  double worst = 0;
  for (const param_info& p : cpu->layout().params) {
    CAPTURE(p.name);
    const double e = rel_l2(gg.data() + off, gc.data() + off, p.numel);
    CHECK(e <= grad_tol);
    worst = std::max(worst, e);
    off += p.numel;
  }
  const std::vector<double> tm = train(*gpu_micro, 0, 3, 1.0f), tw = train(*gpu_whole, 0, 3, 1.0f);
  for (size_t i = 0; i < tm.size(); ++i) CHECK(std::abs(tm[i] - tw[i]) <= 1e-3 * tw[i]);
  MESSAGE(mode << " " << act << " " << gradients << " gradients, 2 micro-batches: loss cpu " << lc << " gpu " << lg
                << ", worst gradient relative L2 " << worst << "; 3rd step loss " << tm.back()
                << " (whole batch " << tw.back() << ")");
}

// The weights (downloaded through a checkpoint save) as bytes.
std::string weight_bytes(session_base& s, const std::string& tmp) {
  train_state st;
  st.seed = 99;
  s.save(tmp, st);
  const std::string out = store_bytes(s.weights());
  std::remove(tmp.c_str());
  return out;
}

// A two-pass session (a) and a fused backward-update session (b) of the same
// options, trained 4 steps from the same weights; the caller compares them.
struct two_pass_and_fused {
  std::unique_ptr<session_base> a, b;
  two_pass_and_fused(const llama_config& c, const mode_info& m, session_options o) {
    o.fused_update = false;
    a = make_session(c, m, o, "cuda");
    o.fused_update = true;
    b = make_session(c, m, o, "cuda");
    for (session_base* s : {a.get(), b.get()}) {
      init_random(s->weights(), c, 7);
      s->weights_changed();
      train(*s, 0, 4, 0.0f);
    }
  }
};

}  // namespace

TEST_CASE("GPU loss and gradients equal the CPU trainer's (GQA, untied head)") {
  const llama_config c = small_config(false, 2);
  check_gradients(c, "fp32-adamw", "auto", false);
  check_gradients(c, "fp32-adamw", "auto", true);
  check_gradients(c, "qft", "f32", false);
  check_gradients(c, "nf4", "f32", false);
  check_gradients(c, "qft", "bf16", false);
  check_gradients(c, "nf4", "bf16", true);
  check_gradients(c, "bf16-adamw8", "auto", false);
}

TEST_CASE("GPU loss and gradients equal the CPU trainer's (one kv head, tied embeddings)") {
  const llama_config c = small_config(true, 1);
  check_gradients(c, "fp32-adamw", "auto", false);
  check_gradients(c, "qft", "f32", false);
  check_gradients(c, "nf4", "bf16", false);
}

TEST_CASE("the validation loss falls in every mode on the GPU [large]") {
  const llama_config c = small_config(false, 2);
  for (const mode_info& m : training_modes()) {
    CAPTURE(m.name);
    const session_options o = options_for(m, 8, 64);
    std::unique_ptr<session_base> s = make_session(c, m, o, "cuda");
    init_random(s->weights(), c, 7);
    s->weights_changed();
    const double before = s->evaluate(corpus(), 2);
    train(*s, 0, 40, 1.0f);
    const double after = s->evaluate(corpus(), 2);
    MESSAGE(m.name << ": validation loss " << before << " -> " << after);
    // as the CPU test: round-to-nearest quantized weights stall (nf4-rn on the
    // CPU: 5.57 -> 5.06 in 40 steps, too close to a 0.5 margin)
    if (m.stochastic || m.storage != matrix_storage::quantized) CHECK(after < before - 0.5);
    else CHECK(after < before);
  }
}

TEST_CASE("GPU: the fused backward-update equals the two-pass step, bit for bit [large]") {
  const llama_config c = small_config(false, 2);
  for (const char* mode : {"qft", "bf16-adamw8"}) {
    CAPTURE(mode);
    const mode_info& m = find_mode(mode);
    const two_pass_and_fused r(c, m, options_for(m, 8, 64));
    CHECK(weight_bytes(*r.a, "gpu_fused_a.safetensors") == weight_bytes(*r.b, "gpu_fused_b.safetensors"));
    CHECK(r.b->gradient_bytes() < r.a->gradient_bytes());
  }
}

// --sync-gradient-checks: the fused update waits on the host for each
// tensor's finiteness check instead of letting the step kernel read it;
// the weights after 4 steps are the same bits either way (a tied head, so
// the chunked ranges are checked too).
TEST_CASE("GPU: gradient checks waited for on the host give the deferred checks' bits") {
  const llama_config c = small_config(true, 1);
  const mode_info& m = find_mode("qft");
  session_options o = options_for(m, 4, 32);
  o.fused_update = true;
  o.logits_chunk_bytes = 48 * 4 * o.batch * o.seq;  // 6 vocabulary chunks
  std::unique_ptr<session_base> deferred = make_session(c, m, o, "cuda");
  o.hparams.defer_gradient_checks = false;
  std::unique_ptr<session_base> waited = make_session(c, m, o, "cuda");
  CHECK(waited->device_description().find("gradient checks waited for on the host") != std::string::npos);
  CHECK(deferred->device_description().find("gradient checks waited") == std::string::npos);
  for (session_base* s : {deferred.get(), waited.get()}) {
    init_random(s->weights(), c, 7);
    s->weights_changed();
    train(*s, 0, 4, 0.0f);
  }
  CHECK(weight_bytes(*deferred, "gpu_deferred.safetensors") == weight_bytes(*waited, "gpu_waited.safetensors"));
}

// A tied head with the fused update: its gradient is made and stepped one
// vocabulary chunk at a time (optimizer ranges), never whole. The weights
// after 4 steps equal the two-pass step's bit for bit (the same products
// per chunk, the same scatter, and ranges that equal one whole step), and
// the gradient memory is the two-pass buffer less the tied tensor's.
TEST_CASE("GPU: a tied head stepped per vocabulary chunk equals the two-pass step, bit for bit") {
  const llama_config c = small_config(true, 1);
  for (const char* mode : {"qft", "bf16-adamw8"}) {
    for (const int64_t rows : {int64_t(0), int64_t(48)}) {  // one chunk; 6 chunks (the last of 16 rows)
      if (rows == 0 && std::string(mode) != "qft") continue;  // (the emulated run's time)
      CAPTURE(mode);
      CAPTURE(rows);
      const mode_info& m = find_mode(mode);
      session_options o = options_for(m, 4, 32);
      if (rows) o.logits_chunk_bytes = rows * 4 * o.batch * o.seq;
      const two_pass_and_fused r(c, m, o);
      CHECK(r.b->device_description().find("tied head stepped per vocabulary chunk") != std::string::npos);
      CHECK(r.a->device_description().find("tied head stepped") == std::string::npos);
      CHECK(weight_bytes(*r.a, "gpu_tied_a.safetensors") == weight_bytes(*r.b, "gpu_tied_b.safetensors"));
      const int64_t tied = int64_t(c.vocab_size) * c.dim * 4;
      CHECK(r.b->gradient_bytes() < r.a->gradient_bytes() - tied + tied / 2);
    }
  }
}

TEST_CASE("GPU --profile: CUDA-event phases add up to the step, each where the run has it, and change no result") {
  // two-pass with float32 gradients; then checkpointing, fused update,
  // bfloat16 gradients and a tied head stepped per vocabulary chunk
  const mode_info& m = find_mode("qft");
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    const llama_config c = small_config(variant == 1, 2);
    session_options o = options_for(m, 4, 32);
    o.checkpointing = o.fused_update = variant == 1;
    if (variant == 1) o.grad_dtype = lowbit::dtype::bf16;
    std::unique_ptr<session_base> plain = make_session(c, m, o, "cuda", "bf16");
    std::unique_ptr<session_base> profiled = make_session(c, m, o, "cuda", "bf16");
    for (session_base* s : {plain.get(), profiled.get()}) {
      init_random(s->weights(), c, 7);
      s->weights_changed();
    }
    phase_recorder& p = profiled->phase_profile();
    std::vector<int32_t> x(size_t(o.batch * o.seq)), y(x.size());
    double host_ms = 0;
    for (int64_t step = 0; step < 3; ++step) {
      corpus().train_batch(99, step, o.batch, o.seq, x.data(), y.data());
      const float clip = o.fused_update ? 0.0f : 1.0f;
      const double expected = plain->step(x.data(), y.data(), 1e-3f, clip).loss;
      const auto t0 = std::chrono::steady_clock::now();
      p.begin_step();
      const double got = profiled->step(x.data(), y.data(), 1e-3f, clip).loss;
      p.end_step(step > 0);  // the first step uncounted, as --timing-warmup 1
      if (step > 0) host_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      CHECK(got == expected);  // events read clocks only
    }
    CHECK(weight_bytes(*plain, "gpu_profile_a.safetensors") == weight_bytes(*profiled, "gpu_profile_b.safetensors"));
    CHECK(p.counted_steps() == 2);
    // The events span each counted step on the GPU's queue: their sum is at
    // most the host's time for the steps (the last event has completed when
    // end_step returns) and, as the step's own waits (the loss, the end)
    // keep the queue short, most of it.
    const double sum = p.step_total_ms() * 2;
    MESSAGE("variant " << variant << ": phases " << sum << " ms, host " << host_ms << " ms for 2 steps");
    CHECK(sum <= host_ms * 1.01 + 0.05);
    CHECK(sum >= 0.5 * host_ms);
    for (phase ph : {phase::embedding, phase::layers_forward, phase::attention_forward, phase::head_loss,
                     phase::head_backward, phase::layers_backward, phase::attention_backward, phase::optimizer}) {
      CAPTURE(phase_name(ph));
      CHECK(p.total_ms(ph) > 0.0);
    }
    CHECK((p.total_ms(phase::recompute) > 0.0) == o.checkpointing);
    CHECK((p.total_ms(phase::gradient_check) > 0.0) == !o.fused_update);
    CHECK((p.total_ms(phase::tied_head_chunks) > 0.0) == (variant == 1));
    CHECK((p.total_ms(phase::embedding_backward) > 0.0) == (variant == 0));
  }
}

TEST_CASE("GPU: save, resume and continue equals the uninterrupted run; the checkpoint resumes on the CPU [large]") {
  const llama_config c = small_config(false, 2);
  for (const char* mode : {"qft", "nf4", "bf16-adamw8", "offload-adamw8"}) {
    CAPTURE(mode);
    const mode_info& m = find_mode(mode);
    const session_options o = options_for(m, 8, 64);
    std::unique_ptr<session_base> whole = make_session(c, m, o, "cuda");
    init_random(whole->weights(), c, 7);
    whole->weights_changed();
    train(*whole, 0, 6, 1.0f);

    std::unique_ptr<session_base> first = make_session(c, m, o, "cuda");
    init_random(first->weights(), c, 7);
    first->weights_changed();
    train(*first, 0, 3, 1.0f);
    train_state st;
    st.step = 3;
    st.seed = 99;
    const std::string path = std::string("gpu_resume_") + mode + ".safetensors";
    first->save(path, st);

    std::unique_ptr<session_base> second = make_session(c, m, o, "cuda");
    init_random(second->weights(), c, 1234);  // overwritten by the checkpoint
    second->weights_changed();
    CHECK(second->load(path).step == 3);
    train(*second, 3, 6, 1.0f);
    CHECK(weight_bytes(*second, "gpu_resume_b.safetensors") == weight_bytes(*whole, "gpu_resume_a.safetensors"));

    if (!m.gpu_only) {  // the same checkpoint on the CPU: same validation loss within the GPU tolerance
      std::unique_ptr<session_base> cpu = make_session(c, m, o, "cpu");
      cpu->load(path);
      std::unique_ptr<session_base> gpu = make_session(c, m, o, "cuda");
      gpu->load(path);
      const double lc = cpu->evaluate(corpus(), 1), lg = gpu->evaluate(corpus(), 1);
      CHECK(std::abs(lc - lg) <= 2e-2 * lc);
    }
    std::remove(path.c_str());
  }
}

TEST_CASE("GPU: bfloat16 gradients are the float32 ones rounded once") {
  check_bf16_gradients(small_config(false, 2), "qft", false);
  check_bf16_gradients(small_config(false, 2), "qft", true);
  check_bf16_gradients(small_config(false, 2), "bf16-adamw8", false);
  check_bf16_gradients(small_config(true, 1), "qft", false);
}

TEST_CASE("GPU: with bfloat16 gradients the loss falls, fused equals two-pass, the buffer is half [large]") {
  const llama_config c = small_config(false, 2);
  const mode_info& m = find_mode("qft");
  session_options o = options_for(m, 8, 64);
  std::unique_ptr<session_base> s32 = make_session(c, m, o, "cuda");
  o.grad_dtype = lowbit::dtype::bf16;
  std::unique_ptr<session_base> s16 = make_session(c, m, o, "cuda");
  double before = 0, after[2] = {0, 0};
  int k = 0;
  for (session_base* s : {s32.get(), s16.get()}) {
    init_random(s->weights(), c, 7);
    s->weights_changed();
    before = s->evaluate(corpus(), 2);
    train(*s, 0, 40, 1.0f);  // two-pass with clipping: the global norm from the bf16 buffer
    after[k++] = s->evaluate(corpus(), 2);
  }
  MESSAGE("qft validation loss " << before << " -> " << after[0] << " (f32 gradients), " << after[1]
                                 << " (bf16 gradients)");
  CHECK(after[1] < before - 0.5);  // as every mode in "the validation loss falls"
  // the same run up to gradient rounding: Lion steps by the sign of its
  // momentum, which bf16 rounding rarely flips
  CHECK(std::abs(after[1] - after[0]) <= 0.05);
  const gradient_plan two_pass(s16->layout(), false), fused_plan(s16->layout(), true);
  CHECK(s16->gradient_bytes() == two_pass.bytes(lowbit::dtype::bf16));
  CHECK(2 * s16->gradient_bytes() == s32->gradient_bytes());

  // fused backward-update with bf16 gradients == two-pass with bf16 gradients, bit for bit
  const two_pass_and_fused r(c, m, o);
  CHECK(weight_bytes(*r.a, "gpu_bf16g_a.safetensors") == weight_bytes(*r.b, "gpu_bf16g_b.safetensors"));
  CHECK(r.b->gradient_bytes() == fused_plan.bytes(lowbit::dtype::bf16));
  CHECK(r.b->gradient_bytes() < r.a->gradient_bytes());
}

TEST_CASE("GPU: gradient accumulation gives the whole batch's loss, gradients and steps") {
  check_accumulation(small_config(false, 2), "fp32-adamw", "auto", lowbit::dtype::f32);
  check_accumulation(small_config(true, 1), "qft", "f32", lowbit::dtype::f32);
  check_accumulation(small_config(false, 2), "qft", "bf16", lowbit::dtype::bf16);
  check_accumulation(small_config(true, 1), "bf16-adamw8", "auto", lowbit::dtype::bf16);
  // refused with the fused update, as on the CPU
  session_options fused = options_for(find_mode("qft"), 2, 32);
  fused.grad_accum = 2;
  fused.fused_update = true;
  CHECK_THROWS_WITH_AS(make_session(small_config(false, 2), find_mode("qft"), fused, "cuda"),
                       doctest::Contains("needs a whole gradient buffer"), lowbit::error);
}

// --export-hf from a CUDA session writes the weights as trained on the
// device (copied back first), not the host copy set up before training:
// the CPU trainer started from the float32 export computes the GPU
// session's loss within check_gradients' float32 tolerance (1e-5); the
// initial weights' loss differs by far more after two steps at lr 1e-3.
TEST_CASE("GPU: --export-hf writes the weights trained on the device") {
  const llama_config c = small_config(false, 2);
  for (const std::string mode : {"fp32-adamw", "qft"}) {
    CAPTURE(mode);
    const mode_info& m = find_mode(mode);
    const session_options o = options_for(m, 4, 32);
    std::unique_ptr<session_base> gpu = make_session(c, m, o, "cuda", "f32");
    init_random(gpu->weights(), c, 7);
    gpu->weights_changed();
    std::vector<int32_t> x(size_t(4 * 32)), y(x.size());
    corpus().train_batch(99, 50, 4, 32, x.data(), y.data());
    const double initial = gpu->loss(x.data(), y.data());
    train(*gpu, 0, 2, 1.0f);
    const double trained = gpu->loss(x.data(), y.data());
    const std::string dir = "gpu_export_" + mode;
    gpu->weights_to_host();
    export_hf(dir, c, gpu->weights(), lowbit::dtype::f32);
    std::unique_ptr<session_base> cpu = make_session(c, find_mode("fp32-adamw"), o, "cpu");
    CHECK(load_hf_weights(dir, cpu->weights()) == 0);
    cpu->weights_changed();
    const double exported = cpu->loss(x.data(), y.data());
    MESSAGE(mode << ": loss " << initial << " at init, " << trained << " after 2 GPU steps, " << exported
                 << " from the export on the CPU");
    CHECK(std::abs(exported - trained) <= 1e-5 * trained);
    CHECK(std::abs(trained - initial) > 1e-3 * initial);
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("GPU: logits in vocabulary chunks equal the whole vocabulary's (loss, gradients, sampling)") {
  check_logit_chunks(small_config(false, 2), "fp32-adamw");
  check_logit_chunks(small_config(true, 1), "qft");
}

TEST_CASE("GPU: attention in chunks of sequences equals the whole batch's (loss, gradients)") {
  check_attention_chunks(small_config(false, 2), "fp32-adamw");
  check_attention_chunks(small_config(true, 1), "qft");
}

TEST_CASE("GPU: bad requests are refused with clear errors") {
  const llama_config c = small_config(false, 2);
  const session_options o = options_for(find_mode("fp32-adamw"), 8, 64);
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("fp32-adamw"), o, "cuda", "bf16"),
                       doctest::Contains("float32 weights"), lowbit::error);
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("bf16-lion8"), o, "cuda", "f32"),
                       doctest::Contains("bfloat16 weights"), lowbit::error);
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("qft"), o, "cuda", "fp8"), doctest::Contains("--gpu-activations"),
                       lowbit::error);
  session_options o16 = o;
  o16.grad_dtype = lowbit::dtype::bf16;  // bf16 gradients need bf16 activations
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("fp32-adamw"), o16, "cuda"),
                       doctest::Contains("--grad-dtype bf16 needs bfloat16 activations"), lowbit::error);
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("qft"), o16, "cuda", "f32"),
                       doctest::Contains("--grad-dtype bf16 needs bfloat16 activations"), lowbit::error);
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("qft"), o16, "cpu"), doctest::Contains("needs the CUDA backend"),
                       lowbit::error);
  session_options no_chunk = o;
  no_chunk.logits_chunk_bytes = 0;
  CHECK_THROWS_WITH_AS(make_session(c, find_mode("qft"), no_chunk, "cuda"), doctest::Contains("logits chunk"),
                       lowbit::error);
  std::unique_ptr<session_base> s = make_session(c, find_mode("qft"), o, "cuda");
  std::vector<int32_t> x(8 * 64, 300), y(8 * 64, 1);
  CHECK_THROWS_WITH_AS(s->step(x.data(), y.data(), 1e-3f, 1.0f), doctest::Contains("outside the vocabulary"),
                       lowbit::error);
}
