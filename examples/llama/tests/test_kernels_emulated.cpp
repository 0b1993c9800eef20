// The CUDA trainer's kernels (cuda/kernels.cuh), run unchanged on the CPU
// under the emulator of tests/emulation/cuda_emulator.hpp (g++, no GPU needed) and checked
// against the CPU trainer's ops (ops.hpp), or a float64 computation where
// ops.hpp has no twin. Inputs are random, shapes are not multiples of the
// block sizes (rows longer than a 256-thread block, partial last blocks),
// every output is poisoned with NaN before the call, and inputs a kernel
// must not read (the softmax's upper triangle) are NaN too.
// Tolerances. float32 results: |got - ref| <= 1e-5 |ref| + 1e-5 max|ref|
// (the kernels sum in block-tree order, the CPU left to right). Where the
// kernel computes the very expression the CPU does, element by element
// (RoPE, SwiGLU), 1e-6 |ref| (the emulation is in fact bit-exact; the
// slack only allows a different libm). Pure data movement (gather,
// permutation without rope, scatter in row order, the residual add) is
// compared bit for bit. bfloat16 outputs: the kernel computes in float and
// rounds once to bf16 (8 significant bits, round to nearest:
// |bf16(v) - v| <= 2^-8 |v|); with v = ref + e, |e| <= the float32 bound,
// |got - ref| <= 2^-8 |ref| + (1 + 2^-8) |e|, so the bf16 check is
// |got - ref| <= (2^-8 + 1.1e-5) |ref| + 1.1e-5 max|ref|, ref computed in
// float from the same (bf16) inputs. bfloat16 parameter gradients
// (--grad-dtype bf16: the RMSNorm gain's dw, the embedding scatter) are
// the float32 kernel's result rounded once, so they are compared bit for
// bit with the float32-output kernel's result rounded to bf16 here.
// The first test case checks the emulator itself (block reductions, a
// shared-memory barrier, shuffles, 3-d grids, divergence and launch errors).
// Not covered (too large to emulate): the grid-stride loops' second lap
// (n > 65536 * 256) and the 65535 caps on gridDim.y.
#include "cuda_emulator.hpp"  // tests/emulation; first: kernels.cuh launches through it
#include "../cuda/kernels.cuh"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../ops.hpp"

using namespace llama;
using namespace llama::gpu;

namespace {

const float nanf_ = std::numeric_limits<float>::quiet_NaN();

std::vector<float> randn(size_t n, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}
std::vector<int32_t> rand_ids(size_t n, int32_t hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int32_t> d(0, hi - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = d(g);
  return v;
}

// Activations of type A from floats (bf16: rounded), and back.
template <class A>
std::vector<A> to_act(const std::vector<float>& v) {
  std::vector<A> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = lowbit::from_float<A>(v[i]);
  return r;
}
template <class A>
std::vector<float> to_f32(const std::vector<A>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = lowbit::to_float(v[i]);
  return r;
}
template <class A>
std::vector<A> poisoned(size_t n) {
  return std::vector<A>(n, lowbit::from_float<A>(nanf_));
}

// Tolerances of the header comment: |got - ref| <= rel |ref| + norm max|ref|.
struct tolerance {
  double rel, norm;
};
constexpr tolerance f32_tol{1e-5, 1e-5};
constexpr tolerance bf16_tol{1.0 / 256 + 1.1e-5, 1.1e-5};
template <class A>
constexpr tolerance act_tol() {
  return std::is_same<A, float>::value ? f32_tol : bf16_tol;
}

template <class R>
void expect_close(const std::vector<float>& got, const std::vector<R>& ref, tolerance t, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  double scale = 0;
  for (R r : ref) scale = std::max(scale, std::abs(double(r)));
  size_t bad = 0, worst_i = 0;
  double worst = 0;  // largest |got - ref| / allowed
  for (size_t i = 0; i < got.size(); ++i) {
    const double allowed = t.rel * std::abs(double(ref[i])) + t.norm * scale;
    const double err = std::abs(double(got[i]) - double(ref[i]));
    const double q = std::isfinite(got[i]) ? (allowed > 0 ? err / allowed : (err > 0 ? HUGE_VAL : 0.0)) : HUGE_VAL;
    if (q > 1) ++bad;
    if (q > worst || (std::isnan(q) && !std::isnan(worst))) worst = q, worst_i = i;
  }
  std::ostringstream msg;
  msg << std::setprecision(9) << what << ": " << bad << " of " << got.size() << " outside tolerance; worst at "
      << worst_i << ": got " << got[worst_i] << ", ref " << double(ref[worst_i]) << " (" << worst << " x allowed)";
  INFO(msg.str());
  CHECK(bad == 0);
}
void expect_bits(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  size_t bad = 0, first = 0;
  for (size_t i = got.size(); i-- > 0;)
    if (std::memcmp(&got[i], &ref[i], 4) != 0) ++bad, first = i;
  std::ostringstream msg;
  msg << std::setprecision(9) << what << ": " << bad << " of " << got.size() << " differ; first at " << first
      << ": got " << got[first] << ", ref " << ref[first];
  INFO(msg.str());
  CHECK(bad == 0);
}

// ---- kernels for the emulator's own test --------------------------------------
// Sum and max over the block of (t + 1 + 1000 b), all exact in float.
__global__ void emu_reduce_kernel(float* sum, float* mx) {
  __shared__ float scratch[32];
  const float v = float(threadIdx.x + 1 + 1000 * blockIdx.x);
  const float s = block_reduce<false>(v, scratch);
  const float m = block_reduce<true>(v, scratch);
  sum[blockIdx.x * blockDim.x + threadIdx.x] = s;
  mx[blockIdx.x * blockDim.x + threadIdx.x] = m;
}
// Block reversal through shared memory (needs the barrier).
__global__ void emu_reverse_kernel(const int* in, int* out) {
  __shared__ int buf[1024];
  const unsigned t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[n - 1 - t];
}
// out[(t * 5 + k)] = value of lane (t ^ 2^k), ints and floats.
__global__ void emu_shuffle_kernel(int* out_i, float* out_f) {
  const int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  for (int k = 0; k < 5; ++k) {
    out_i[t * 5 + k] = __shfl_xor_sync(0xffffffffu, t, 1 << k);
    out_f[t * 5 + k] = __shfl_xor_sync(0xffffffffu, 0.5f * float(t), 1 << k);
  }
}
// Each (block, thread) of a 3-d launch records itself.
__global__ void emu_coords_kernel(int* seen) {
  const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  seen[b * (blockDim.x * blockDim.y * blockDim.z) + t] += 1;
}
__global__ void emu_divergent_kernel(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

}  // namespace

TEST_CASE("cuda emulator: block reduction, shared-memory barrier, shuffles, 3-d grid, errors") {
  for (unsigned n : {32u, 96u, 256u, 1024u}) {
    CAPTURE(n);
    const unsigned blocks = 3;
    std::vector<float> sum(blocks * n, nanf_), mx(blocks * n, nanf_);
    cuda_emulator::launch(emu_reduce_kernel, blocks, n, nullptr)(sum.data(), mx.data());
    for (unsigned b = 0; b < blocks; ++b)
      for (unsigned t = 0; t < n; ++t) {
        CHECK(sum[b * n + t] == float(n * (n + 1) / 2 + 1000 * b * n));
        CHECK(mx[b * n + t] == float(n + 1000 * b));
      }
    std::vector<int> in(blocks * n), out(blocks * n, -1);
    for (size_t i = 0; i < in.size(); ++i) in[i] = int(i) * 7;
    cuda_emulator::launch(emu_reverse_kernel, blocks, n, nullptr)(in.data(), out.data());
    for (unsigned b = 0; b < blocks; ++b)
      for (unsigned t = 0; t < n; ++t) CHECK(out[b * n + t] == in[b * n + n - 1 - t]);
  }
  {
    const unsigned blocks = 2, n = 64;
    std::vector<int> oi(blocks * n * 5, -1);
    std::vector<float> of(blocks * n * 5, nanf_);
    cuda_emulator::launch(emu_shuffle_kernel, blocks, n, nullptr)(oi.data(), of.data());
    for (int t = 0; t < int(blocks * n); ++t)
      for (int k = 0; k < 5; ++k) {
        CHECK(oi[size_t(t * 5 + k)] == (t ^ (1 << k)));
        CHECK(of[size_t(t * 5 + k)] == 0.5f * float(t ^ (1 << k)));
      }
  }
  {
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    std::vector<int> seen(12 * 24, 0);
    cuda_emulator::launch(emu_coords_kernel, grid, block, nullptr)(seen.data());
    for (int s : seen) CHECK(s == 1);
  }
  std::vector<int> out(64, 0);
  CHECK_THROWS_AS(cuda_emulator::launch(emu_divergent_kernel, 1, 64, nullptr)(out.data()), cuda_emulator::error);
  CHECK_THROWS_AS(cuda_emulator::launch(emu_coords_kernel, 1, 2048, nullptr)(out.data()), cuda_emulator::error);
  CHECK_THROWS_AS(cuda_emulator::launch(emu_coords_kernel, dim3(1, 65536), 32, nullptr)(out.data()),
                  cuda_emulator::error);
  // the emulator is usable again after a reported error
  std::vector<float> sum(64, nanf_), mx(64, nanf_);
  cuda_emulator::launch(emu_reduce_kernel, 1, 64, nullptr)(sum.data(), mx.data());
  CHECK(sum[63] == float(64 * 65 / 2));
}

// ---- RMSNorm -----------------------------------------------------------------------
namespace {
template <class A>
void check_rmsnorm(int64_t M, int64_t D, uint64_t seed) {
  CAPTURE(M);
  CAPTURE(D);
  const float eps = 1e-5f;
  const size_t n = size_t(M * D);
  const std::vector<A> x = to_act<A>(randn(n, seed, 1.5f)), dy = to_act<A>(randn(n, seed + 1));
  const std::vector<A> dx0 = to_act<A>(randn(n, seed + 2, 0.5f));
  const std::vector<float> w = randn(size_t(D), seed + 3);
  const std::vector<float> xf = to_f32(x), dyf = to_f32(dy);

  // forward
  std::vector<float> y_ref(n), rstd_ref(static_cast<size_t>(M));
  ops::rmsnorm_forward<float>(xf.data(), w.data(), y_ref.data(), rstd_ref.data(), M, D, eps);
  std::vector<A> y = poisoned<A>(n);
  std::vector<float> rstd(size_t(M), nanf_);
  rmsnorm_forward<A>(x.data(), w.data(), y.data(), rstd.data(), M, D, eps, nullptr);
  expect_close(to_f32(y), y_ref, act_tol<A>(), "rmsnorm y");
  expect_close(rstd, rstd_ref, f32_tol, "rmsnorm rstd");

  // backward (with the CPU's rstd, so both sides see the same statistics)
  std::vector<float> dx_ref = to_f32(dx0), dw_ref(static_cast<size_t>(D));
  ops::rmsnorm_backward<float>(dyf.data(), xf.data(), w.data(), rstd_ref.data(), dx_ref.data(), dw_ref.data(), M, D);
  std::vector<A> dx = dx0;  // accumulated into
  std::vector<float> dw(size_t(D), nanf_), scratch(size_t(rmsnorm_dw_scratch(M, D)), nanf_);
  rmsnorm_backward<A>(dy.data(), x.data(), w.data(), rstd_ref.data(), dx.data(), dw.data(), scratch.data(), M, D,
                      nullptr);
  expect_close(to_f32(dx), dx_ref, act_tol<A>(), "rmsnorm dx");
  expect_close(dw, dw_ref, f32_tol, "rmsnorm dw");

  // bfloat16 dw (--grad-dtype bf16): the same float32 sum, rounded once;
  // dx as with a float32 dw
  std::vector<A> dx16 = dx0;
  std::vector<bf16> dw16 = poisoned<bf16>(size_t(D));
  std::vector<float> scratch16(scratch.size(), nanf_);
  rmsnorm_backward<A>(dy.data(), x.data(), w.data(), rstd_ref.data(), dx16.data(), dw16.data(), scratch16.data(), M, D,
                      nullptr);
  expect_bits(to_f32(dw16), to_f32(to_act<bf16>(dw)), "rmsnorm dw (bf16) = float32 dw rounded once");
  expect_bits(to_f32(dx16), to_f32(dx), "rmsnorm dx with a bf16 dw");
}
}  // namespace

TEST_CASE("emulated kernels: rmsnorm forward and backward, float32 and bf16 activations") {
  // 150 rows: chunks of 64 + 64 + 22 for dw; D = 300: rows longer than a
  // 256-thread block, 3 column blocks of 128 (the last partial)
  check_rmsnorm<float>(150, 300, 11);
  check_rmsnorm<bf16>(70, 300, 12);
}

// ---- rotary embeddings and the head-major permutation --------------------------------
namespace {
// Row-major [B*S, heads*hd] <-> head-major [B, heads, S, hd], written out here
// rather than with gemm_plans.hpp's offset functions.
template <class T>
std::vector<T> rows_to_heads(const std::vector<T>& x, int64_t B, int64_t S, int64_t heads, int64_t hd) {
  std::vector<T> y(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < S; ++p)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd; ++i)
          y[size_t(((b * heads + h) * S + p) * hd + i)] = x[size_t((b * S + p) * heads * hd + h * hd + i)];
  return y;
}
template <class T>
std::vector<T> heads_to_rows(const std::vector<T>& x, int64_t B, int64_t S, int64_t heads, int64_t hd) {
  std::vector<T> y(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < S; ++p)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd; ++i)
          y[size_t((b * S + p) * heads * hd + h * hd + i)] = x[size_t(((b * heads + h) * S + p) * hd + i)];
  return y;
}

template <class A>
void check_permute_heads(int64_t B, int64_t S, int64_t heads, int64_t hd, uint64_t seed) {
  const int64_t M = B * S;
  const size_t n = size_t(M * heads * hd);
  llama_config rope_cfg;  // theta 10000, one head of hd
  rope_cfg.dim = int(hd), rope_cfg.n_heads = 1;
  const ops::rope_table<float> rt(S, rope_cfg.rope_frequencies());
  const tolerance rope_tol = std::is_same<A, float>::value ? tolerance{1e-6, 0} : bf16_tol;
  const std::vector<A> src = to_act<A>(randn(n, seed));
  const std::vector<float> srcf = to_f32(src);

  // forward: rope on the row-major layout, then to head-major
  std::vector<float> ref = srcf;
  ops::rope_apply(ref.data(), M, S, heads, rt, false);
  ref = rows_to_heads(ref, B, S, heads, hd);
  std::vector<A> qh = poisoned<A>(n);
  permute_heads<A>(src.data(), qh.data(), rt.cos.data(), rt.sin.data(), B, S, heads, hd, true, false, true, nullptr);
  expect_close(to_f32(qh), ref, rope_tol, "rope + to head-major");

  // the backward: head-major gradient back to row-major, with the transposed rotation
  std::vector<float> back_ref = heads_to_rows(srcf, B, S, heads, hd);
  ops::rope_apply(back_ref.data(), M, S, heads, rt, true);
  std::vector<A> back = poisoned<A>(n);
  permute_heads<A>(src.data(), back.data(), rt.cos.data(), rt.sin.data(), B, S, heads, hd, true, true, false, nullptr);
  expect_close(to_f32(back), back_ref, rope_tol, "inverse rope + to row-major");

  // without rope: pure permutations, both directions (bit for bit)
  std::vector<A> vh = poisoned<A>(n), rows = poisoned<A>(n);
  permute_heads<A>(src.data(), vh.data(), rt.cos.data(), rt.sin.data(), B, S, heads, hd, false, false, true, nullptr);
  expect_bits(to_f32(vh), rows_to_heads(srcf, B, S, heads, hd), "to head-major");
  permute_heads<A>(src.data(), rows.data(), rt.cos.data(), rt.sin.data(), B, S, heads, hd, false, false, false,
                   nullptr);
  expect_bits(to_f32(rows), heads_to_rows(srcf, B, S, heads, hd), "to row-major");

  // forward then inverse: the identity, up to rounding (float32 only: in
  // bf16 the intermediate rounding dominates and is covered above)
  if (std::is_same<A, float>::value) {
    std::vector<A> round = poisoned<A>(n);
    permute_heads<A>(qh.data(), round.data(), rt.cos.data(), rt.sin.data(), B, S, heads, hd, true, true, false,
                     nullptr);
    // each output is a*(c^2 + s^2) + b*(cs - sc) with float c, s: a few ulps of max(|a|, |b|)
    expect_close(to_f32(round), srcf, tolerance{0, 1e-6}, "rope then inverse rope");
  }
}
}  // namespace

TEST_CASE("emulated kernels: permute_heads with RoPE and its inverse") {
  check_permute_heads<float>(2, 13, 3, 12, 21);  // 468 pairs: two blocks of 256, the last partial
  check_permute_heads<float>(1, 5, 2, 2, 22);    // head_dim 2: one pair per head
  check_permute_heads<bf16>(2, 9, 4, 16, 23);
}

// ---- causal softmax and its backward --------------------------------------------------
namespace {
template <class A>
void check_causal_softmax(int64_t heads, int64_t S, int64_t hd, uint64_t seed) {
  CAPTURE(S);
  const int64_t rows = heads * S;
  const size_t n = size_t(rows * S);
  std::vector<float> scores = randn(n, seed, 2.0f), dprobs = randn(n, seed + 1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = r % S + 1; j < S; ++j) scores[size_t(r * S + j)] = dprobs[size_t(r * S + j)] = nanf_;  // unread

  std::vector<A> probs = poisoned<A>(n);
  causal_softmax<A>(scores.data(), probs.data(), rows, S, nullptr);
  std::vector<double> p_ref(n, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % S;
    double mx = -HUGE_VAL, sum = 0;
    for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, double(scores[size_t(r * S + j)]));
    for (int64_t j = 0; j <= i; ++j) sum += std::exp(double(scores[size_t(r * S + j)]) - mx);
    for (int64_t j = 0; j <= i; ++j) p_ref[size_t(r * S + j)] = std::exp(double(scores[size_t(r * S + j)]) - mx) / sum;
  }
  const std::vector<float> pf = to_f32(probs);
  expect_close(pf, p_ref, act_tol<A>(), "causal softmax");
  size_t nonzero_above = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = r % S + 1; j < S; ++j) nonzero_above += pf[size_t(r * S + j)] != 0.0f;
  CHECK(nonzero_above == 0);

  // backward from the kernel's probabilities (NaN above the diagonal: unread)
  std::vector<A> pin = probs;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = r % S + 1; j < S; ++j) pin[size_t(r * S + j)] = lowbit::from_float<A>(nanf_);
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<A> ds = poisoned<A>(n);
  causal_softmax_backward<A>(pin.data(), dprobs.data(), ds.data(), rows, S, scale, nullptr);
  // dS_j = p_j (dP_j - sum_l p_l dP_l) * scale (ops::attention_backward's placement)
  std::vector<double> ds_ref(n, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r % S;
    double dot = 0;
    for (int64_t j = 0; j <= i; ++j) dot += double(pf[size_t(r * S + j)]) * double(dprobs[size_t(r * S + j)]);
    for (int64_t j = 0; j <= i; ++j)
      ds_ref[size_t(r * S + j)] = double(pf[size_t(r * S + j)]) * (double(dprobs[size_t(r * S + j)]) - dot) *
                                  double(scale);
  }
  const std::vector<float> dsf = to_f32(ds);
  expect_close(dsf, ds_ref, act_tol<A>(), "causal softmax backward");
  nonzero_above = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = r % S + 1; j < S; ++j) nonzero_above += dsf[size_t(r * S + j)] != 0.0f;
  CHECK(nonzero_above == 0);
}
}  // namespace

TEST_CASE("emulated kernels: causal softmax and its backward") {
  check_causal_softmax<float>(2, 37, 10, 31);  // 74 rows of 37
  check_causal_softmax<float>(1, 270, 12, 32);  // rows longer than a 256-thread block
  check_causal_softmax<bf16>(2, 29, 10, 33);
}

// ---- SwiGLU, residual add ---------------------------------------------------------------
TEST_CASE("emulated kernels: swiglu forward and backward, add_into, convert_into") {
  const int64_t n = 1000;  // four blocks of 256, the last partial
  const std::vector<float> gate = randn(size_t(n), 41, 2.0f), up = randn(size_t(n), 42), dh = randn(size_t(n), 43);
  std::vector<float> h_ref(static_cast<size_t>(n)), dg_ref(static_cast<size_t>(n)), du_ref(static_cast<size_t>(n));
  ops::swiglu_forward<float>(gate.data(), up.data(), h_ref.data(), n);
  ops::swiglu_backward<float>(dh.data(), gate.data(), up.data(), dg_ref.data(), du_ref.data(), n);
  const tolerance same_expr{1e-6, 0};
  {
    std::vector<float> h(size_t(n), nanf_), dg(size_t(n), nanf_), du(size_t(n), nanf_);
    swiglu_forward<float>(gate.data(), up.data(), h.data(), n, nullptr);
    swiglu_backward<float>(dh.data(), gate.data(), up.data(), dg.data(), du.data(), n, nullptr);
    expect_close(h, h_ref, same_expr, "swiglu h");
    expect_close(dg, dg_ref, same_expr, "swiglu dgate");
    expect_close(du, du_ref, same_expr, "swiglu dup");
  }
  {
    // bf16 activations: inputs rounded to bf16, reference from the rounded inputs
    const std::vector<bf16> gb = to_act<bf16>(gate), ub = to_act<bf16>(up), db = to_act<bf16>(dh);
    const std::vector<float> gf = to_f32(gb), uf = to_f32(ub), df = to_f32(db);
    std::vector<float> hr(static_cast<size_t>(n)), dgr(static_cast<size_t>(n)), dur(static_cast<size_t>(n));
    ops::swiglu_forward<float>(gf.data(), uf.data(), hr.data(), n);
    ops::swiglu_backward<float>(df.data(), gf.data(), uf.data(), dgr.data(), dur.data(), n);
    std::vector<bf16> h = poisoned<bf16>(size_t(n)), dg = poisoned<bf16>(size_t(n)), du = poisoned<bf16>(size_t(n));
    swiglu_forward<bf16>(gb.data(), ub.data(), h.data(), n, nullptr);
    swiglu_backward<bf16>(db.data(), gb.data(), ub.data(), dg.data(), du.data(), n, nullptr);
    expect_close(to_f32(h), hr, bf16_tol, "swiglu h (bf16)");
    expect_close(to_f32(dg), dgr, bf16_tol, "swiglu dgate (bf16)");
    expect_close(to_f32(du), dur, bf16_tol, "swiglu dup (bf16)");
    // in place, as the model runs it (dgate over gate, dup over up): the
    // same bits as into separate buffers
    std::vector<bf16> g_in = gb, u_in = ub;
    swiglu_backward<bf16>(db.data(), g_in.data(), u_in.data(), g_in.data(), u_in.data(), n, nullptr);
    expect_bits(to_f32(g_in), to_f32(dg), "swiglu dgate in place");
    expect_bits(to_f32(u_in), to_f32(du), "swiglu dup in place");
  }
  {
    std::vector<float> y = gate, y_ref(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) y_ref[size_t(i)] = gate[size_t(i)] + up[size_t(i)];
    add_into<float>(y.data(), up.data(), n, nullptr);
    expect_bits(y, y_ref, "add_into");
    std::vector<bf16> yb = to_act<bf16>(gate);
    const std::vector<bf16> xb = to_act<bf16>(up);
    std::vector<float> yb_ref(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i)
      yb_ref[i] = lowbit::to_float(lowbit::to_bf16(lowbit::to_float(yb[i]) + lowbit::to_float(xb[i])));
    add_into<bf16>(yb.data(), xb.data(), n, nullptr);
    expect_bits(to_f32(yb), yb_ref, "add_into (bf16, one rounding)");
  }
  {  // convert_into: the head's dX summed over chunks in float32, then rounded once
    const std::vector<bf16> xb = to_act<bf16>(up);
    std::vector<float> acc(static_cast<size_t>(n), nanf_), acc_ref(static_cast<size_t>(n));
    convert_into(acc.data(), xb.data(), n, false, nullptr);  // assign: the poison is not read
    convert_into(acc.data(), gate.data(), n, true, nullptr);
    for (size_t i = 0; i < size_t(n); ++i) acc_ref[i] = lowbit::to_float(xb[i]) + gate[i];
    expect_bits(acc, acc_ref, "convert_into (float32 sum)");
    std::vector<bf16> out = poisoned<bf16>(size_t(n));
    convert_into(out.data(), acc.data(), n, false, nullptr);
    expect_bits(to_f32(out), to_f32(to_act<bf16>(acc_ref)), "convert_into (rounded once to bf16)");
  }
}

// ---- token embedding -----------------------------------------------------------------------
namespace {
template <class W, class A>
void check_gather(int64_t V, int64_t M, int64_t D, uint64_t seed) {
  const std::vector<W> table = to_act<W>(randn(size_t(V * D), seed));
  const std::vector<int32_t> tokens = rand_ids(size_t(M), int32_t(V), seed + 1);
  std::vector<A> out = poisoned<A>(size_t(M * D));
  embed_gather<W, A>(table.data(), tokens.data(), out.data(), M, D, nullptr);
  std::vector<float> ref(static_cast<size_t>(M * D));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < D; ++j) {
      const float v = lowbit::to_float(table[size_t(tokens[size_t(m)] * D + j)]);
      ref[size_t(m * D + j)] = lowbit::to_float(lowbit::from_float<A>(v));  // bf16 activations: rounded once
    }
  expect_bits(to_f32(out), ref, "embed_gather");
}

template <class A>
void check_scatter(int64_t V, int64_t M, int64_t D, uint64_t seed) {
  std::vector<int32_t> tokens = rand_ids(size_t(M), int32_t(V), seed);
  tokens[3] = tokens[M - 1] = tokens[0];  // repeats for sure
  const scatter_plan plan = build_scatter_plan(tokens.data(), M);
  // the plan: distinct ids increasing, every row once, each token's rows increasing
  REQUIRE(plan.start.size() == plan.ids.size() + 1);
  CHECK(plan.start.front() == 0);
  CHECK(plan.start.back() == M);
  std::vector<int> row_seen(size_t(M), 0);
  for (int64_t u = 0; u < plan.n_ids(); ++u) {
    if (u > 0) CHECK(plan.ids[size_t(u)] > plan.ids[size_t(u - 1)]);
    CHECK(plan.start[size_t(u)] < plan.start[size_t(u + 1)]);
    for (int32_t k = plan.start[size_t(u)]; k < plan.start[size_t(u + 1)]; ++k) {
      CHECK(tokens[size_t(plan.rows[size_t(k)])] == plan.ids[size_t(u)]);
      if (k > plan.start[size_t(u)]) CHECK(plan.rows[size_t(k)] > plan.rows[size_t(k - 1)]);
      row_seen[size_t(plan.rows[size_t(k)])] += 1;
    }
  }
  for (int s : row_seen) CHECK(s == 1);

  const std::vector<A> dx = to_act<A>(randn(size_t(M * D), seed + 1));
  const std::vector<float> grad0 = randn(size_t(V * D), seed + 2);  // accumulated onto (the tied head's gradient)
  std::vector<float> ref = grad0;
  for (int64_t m = 0; m < M; ++m)  // the CPU trainer's order: rows in increasing m, in float
    for (int64_t j = 0; j < D; ++j) ref[size_t(tokens[size_t(m)] * D + j)] += lowbit::to_float(dx[size_t(m * D + j)]);
  std::vector<float> grad = grad0;
  embed_scatter<A>(dx.data(), plan.ids.data(), plan.start.data(), plan.rows.data(), plan.n_ids(), grad.data(), D,
                   nullptr);
  expect_bits(grad, ref, "embed_scatter");  // unused ids' rows untouched, the others in row order

  // bfloat16 gradients (--grad-dtype bf16), onto zeros (the untied
  // embedding) and onto bf16 values (a tied head's gradient): each row
  // summed in float32 from its start value as the float32 kernel does, and
  // rounded once; unused rows untouched.
  for (bool zero_start : {true, false}) {
    CAPTURE(zero_start);
    const std::vector<bf16> g16_0 = zero_start ? to_act<bf16>(std::vector<float>(grad0.size(), 0.0f)) : to_act<bf16>(grad0);
    std::vector<float> g32 = to_f32(g16_0);  // the float32 kernel from the same start values
    embed_scatter<A>(dx.data(), plan.ids.data(), plan.start.data(), plan.rows.data(), plan.n_ids(), g32.data(), D,
                     nullptr);
    std::vector<bf16> g16 = g16_0;
    embed_scatter<A>(dx.data(), plan.ids.data(), plan.start.data(), plan.rows.data(), plan.n_ids(), g16.data(), D,
                     nullptr);
    expect_bits(to_f32(g16), to_f32(to_act<bf16>(g32)), "embed_scatter (bf16) = float32 scatter rounded once");
  }
}
}  // namespace

TEST_CASE("emulated kernels: embed_gather (float32 and bf16 tables) and embed_scatter") {
  check_gather<float, float>(50, 37, 70, 51);
  check_gather<bf16, float>(50, 37, 70, 52);
  check_gather<float, bf16>(50, 37, 70, 53);
  check_gather<bf16, bf16>(50, 37, 300, 54);  // M * D = 11100: 44 blocks, the last partial
  check_scatter<float>(40, 90, 200, 55);      // D = 200: two column blocks of 128
  check_scatter<bf16>(40, 90, 130, 56);
  check_scatter<float>(1000, 7, 5, 57);       // most ids unused
}

// ---- cross-entropy ----------------------------------------------------------------------------
namespace {
template <class A>
void check_cross_entropy(int64_t M, int64_t V, uint64_t seed) {
  CAPTURE(M);
  CAPTURE(V);
  const std::vector<float> logits = randn(size_t(M * V), seed, 3.0f);
  const std::vector<int32_t> targets = rand_ids(size_t(M), int32_t(V), seed + 1);
  std::vector<float> row_ref(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) {  // the CPU's loss of one row
    std::vector<float> row(logits.begin() + m * V, logits.begin() + (m + 1) * V);
    row_ref[size_t(m)] = float(ops::cross_entropy<float>(row.data(), &targets[size_t(m)], 1, V, false));
  }
  std::vector<float> grad_ref = logits;
  const double mean_ref = ops::cross_entropy<float>(grad_ref.data(), targets.data(), M, V, true);

  std::vector<float> row_loss(size_t(M), nanf_), scratch(size_t(4 * M), nanf_);
  std::vector<A> dlogits = poisoned<A>(size_t(M * V));
  cross_entropy<A>(logits.data(), targets.data(), row_loss.data(), dlogits.data(), M, V, scratch.data(), nullptr);
  // the row loss is lse - l[t]; its error is that of lse, relative to |lse| ~ max|l|
  expect_close(row_loss, row_ref, tolerance{1e-5, 1e-5}, "cross-entropy row losses");
  double mean = 0;
  for (float r : row_loss) mean += double(r);
  mean /= double(M);
  CHECK(std::abs(mean - mean_ref) <= 1e-5 * std::abs(mean_ref));
  expect_close(to_f32(dlogits), grad_ref, act_tol<A>(), "cross-entropy dlogits");

  // without dlogits: the row losses only
  std::vector<float> row_only(size_t(M), nanf_);
  cross_entropy<A>(logits.data(), targets.data(), row_only.data(), static_cast<A*>(nullptr), M, V, scratch.data(),
                   nullptr);
  expect_bits(row_only, row_loss, "cross-entropy without dlogits");

  // Over vocabulary chunks of vc columns (the last one shorter), as the
  // model runs it: the chunk [M, vc] is cut from the logits, folded in,
  // then used again for its gradient columns. The online logsumexp differs
  // from the one-pass one by the rescaling roundings only.
  for (int64_t vc : {int64_t(1), int64_t(7), V / 3 + 1}) {
    CAPTURE(vc);
    std::vector<float> mx(static_cast<size_t>(M)), sm(mx), tg(mx), ls(mx), chunk;
    const ce_rows rows{mx.data(), sm.data(), tg.data(), ls.data()};
    auto cut = [&](int64_t c0, int64_t w) {
      chunk.assign(size_t(M * w), nanf_);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < w; ++j) chunk[size_t(m * w + j)] = logits[size_t(m * V + c0 + j)];
    };
    ce_begin(rows, M, nullptr);
    for (int64_t c0 = 0; c0 < V; c0 += vc) {
      const int64_t w = std::min(vc, V - c0);
      cut(c0, w);
      ce_accumulate(chunk.data(), c0, w, targets.data(), rows, M, nullptr);
    }
    std::vector<float> chunked_loss(size_t(M), nanf_);
    ce_finish(rows, chunked_loss.data(), M, nullptr);
    std::vector<A> chunked_grad = poisoned<A>(size_t(M * V));
    for (int64_t c0 = 0; c0 < V; c0 += vc) {
      const int64_t w = std::min(vc, V - c0);
      cut(c0, w);
      ce_gradient(chunk.data(), c0, w, targets.data(), rows, chunked_grad.data() + c0, V, M, nullptr);
    }
    expect_close(chunked_loss, row_ref, tolerance{1e-5, 1e-5}, "chunked cross-entropy row losses");
    expect_close(to_f32(chunked_grad), grad_ref, act_tol<A>(), "chunked cross-entropy dlogits");
  }
}
}  // namespace

TEST_CASE("emulated kernels: cross_entropy, float32 and bf16 dlogits") {
  check_cross_entropy<float>(37, 300, 61);  // V = 300: rows longer than a 256-thread block
  check_cross_entropy<float>(5, 1000, 62);
  check_cross_entropy<bf16>(23, 300, 63);
}
