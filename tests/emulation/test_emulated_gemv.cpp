// The dequant-GEMM's gemv regime (cuda/gemm/gemv.cuh: gemv_forward and
// gemv_backward, the functions dequant_gemm_forward / _backward_input call
// for small M) compiled by g++ and run on the CPU under
// tests/emulation/cuda_emulator.hpp, against float64 references computed
// from the weights cpu::dequantize writes. So the kernels' indexing, their
// 16-byte (forward) and 8-byte (backward) vector paths and per-element
// tails, the partial warps and CTAs at the edges of W, the activation-row
// groups (MT = 1, 2, 4 and a partial group), the split reduction of the
// backward and its finalize kernel are checked on every machine, not only
// in GPU sessions. Also the dequant_cublas regime's tile kernel (the
// decoder of W's column panels), bit for bit against cpu::dequantize. What
// this cannot check: nvcc's code generation and the
// __CUDA_ARCH__ branches (tests/gpu/test_dequant_gemm_gpu.cu does, with the
// same tolerance).
//
// Tolerance per output element (Higham's bound for fp32 dot products in any
// order, plus one rounding into the output dtype, as in the GPU test):
//   |got - ref| <= g + eps_out * (|ref| + g) + abs_out,
//   g = gamma_L(2^-24) * sum_l |a_l b_l|,  gamma_L(u) = L u / (1 - L u),
// L = reduction length + 2 (a bias, or the split partials summed once
// more), eps_out = 2^-24 / 2^-8 / 2^-11 for f32 / bf16 / fp16 outputs,
// abs_out = 2^-25 for fp16. Outputs are poisoned (NaN) before each call.
#include "cuda_emulator.hpp"  // first: the kernels launch through it

#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cuda/gemm/dequant_cublas.cuh>
#include <lowbit/cuda/gemm/gemv.cuh>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fake_cuda_runtime.hpp"

using namespace lowbit;
namespace gd = lowbit::cuda::gemm_detail;

namespace {

double out_eps(dtype t) {
  return t == dtype::bf16 ? std::ldexp(1.0, -8) : t == dtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -24);
}
double out_abs(dtype t) { return t == dtype::f16 ? std::ldexp(1.0, -25) : 0.0; }
double tolerance(double ref, double abs_sum, int64_t terms, dtype out) {
  const double u = std::ldexp(1.0, -24), L = double(terms + 2);
  const double g = L * u / (1.0 - L * u) * abs_sum;
  return g + out_eps(out) * (std::fabs(ref) + g) + out_abs(out);
}

// A dense matrix stored in `type` with `offset` elements of slack in front
// (offset 1 misaligns it: the kernels' scalar paths).
struct dense {
  dtype type;
  int64_t rows, cols, offset;
  std::vector<uint64_t> buf;  // 8-byte aligned storage
  dense(dtype t, int64_t r, int64_t c, int64_t off = 0) : type(t), rows(r), cols(c), offset(off) {
    buf.assign(size_t(((r * c + off) * int64_t(dtype_size(t)) + 7) / 8 + 1), 0);
  }
  void* data() { return reinterpret_cast<unsigned char*>(buf.data()) + offset * int64_t(dtype_size(type)); }
  double at(int64_t i) {
    const void* p = data();
    switch (type) {
      case dtype::bf16: return double(to_float(static_cast<const bf16*>(p)[i]));
      case dtype::f16: return double(to_float(static_cast<const fp16*>(p)[i]));
      default: return double(static_cast<const float*>(p)[i]);
    }
  }
  void set(int64_t i, float v) {
    void* p = data();
    switch (type) {
      case dtype::bf16: static_cast<bf16*>(p)[i] = from_float<bf16>(v); break;
      case dtype::f16: static_cast<fp16*>(p)[i] = from_float<fp16>(v); break;
      default: static_cast<float*>(p)[i] = v;
    }
  }
  void poison() {
    for (int64_t i = 0; i < rows * cols; ++i) set(i, std::numeric_limits<float>::quiet_NaN());
  }
};

dense random_dense(dtype t, int64_t r, int64_t c, unsigned seed, int64_t off = 0) {
  dense d(t, r, c, off);
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < r * c; ++i) d.set(i, nd(g));
  return d;
}

// W (n x k) quantized on the CPU, and the float32 weights it stands for.
struct test_weight {
  quantized_tensor q;
  std::vector<float> w;
  test_weight(format f, int64_t n, int64_t k, int block, bool nested, unsigned seed)
      : q(make_layout(f, n * k, block, nested)), w(size_t(n * k)) {
    std::mt19937 g(seed);
    std::normal_distribution<float> nd(0.0f, 0.5f);
    std::vector<float> src(size_t(n * k));
    for (float& v : src) v = is_unsigned_format(f) ? std::fabs(nd(g)) : nd(g);
    cpu::quantize(make_flat_view(src.data(), n * k), q.view());
    cpu::dequantize(q.view(), make_flat_view(w.data(), n * k));
  }
};

struct case_result {
  int64_t checked = 0, bad = 0;
  std::string first_bad;
};

void compare(dense& got, const std::vector<double>& ref, const std::vector<double>& abs_sum, int64_t terms,
             case_result& r) {
  for (int64_t i = 0; i < got.rows * got.cols; ++i) {
    const double g = got.at(i), e = ref[size_t(i)];
    ++r.checked;
    if (!(std::fabs(g - e) <= tolerance(e, abs_sum[size_t(i)], terms, got.type))) {
      if (r.bad++ == 0)
        r.first_bad = "element " + std::to_string(i) + ": got " + std::to_string(g) + ", want " + std::to_string(e);
    }
  }
}

// One forward and one backward call of the gemv regime for W in format f.
void gemv_case(format f, bool nested, int block, int64_t M, int64_t n, int64_t k, dtype act, dtype out,
               int64_t act_offset, bool with_bias) {
  CAPTURE(format_name(f));
  CAPTURE(nested);
  CAPTURE(M);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(dtype_name(act));
  CAPTURE(dtype_name(out));
  CAPTURE(act_offset);
  test_weight w(f, n, k, block, nested, unsigned(n * 7 + k * 3 + M));
  quantized_view qv = w.q.view();
  qv.dev = device::cuda();
  const gd::weight_args wa = gd::make_weight_args(qv, n, k);
  const code_table table = make_code_table(f);
  const code_table map = gd::nested_map_table(nested);

  // forward: y = x W^T (+ bias), in both of its work divisions
  dense x = random_dense(act, M, k, unsigned(M * 31 + k), act_offset);
  dense bias = random_dense(dtype::f32, 1, n, unsigned(n + 5));
  std::vector<double> ref(size_t(M * n)), abs_sum(size_t(M * n));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n; ++j) {
      double s = with_bias ? bias.at(j) : 0.0, a = std::fabs(s);
      for (int64_t l = 0; l < k; ++l) {
        const double p = x.at(m * k + l) * double(w.w[size_t(j * k + l)]);
        s += p;
        a += std::fabs(p);
      }
      ref[size_t(m * n + j)] = s;
      abs_sum[size_t(m * n + j)] = a;
    }
  for (cuda::gemv_forward_layout layout : {cuda::gemv_forward_layout::rows_per_warp, cuda::gemv_forward_layout::split_k}) {
    CAPTURE(std::string(cuda::gemv_forward_layout_name(layout)));
    dense y(out, M, n);
    y.poison();
    gd::dispatch_kind(f, [&](auto tag) {
      constexpr gd::decode_kind D = decltype(tag)::value;
      gd::gemv_forward<D>(x.data(), act, wa, with_bias ? bias.data() : nullptr, dtype::f32, y.data(), out, M, n, k,
                          table, map, nullptr, layout);
    });
    case_result fr;
    compare(y, ref, abs_sum, k, fr);
    INFO("forward: " << fr.first_bad);
    CHECK(fr.bad == 0);
  }

  // backward: dx = dy W, split as the entry point splits it
  dense dy = random_dense(act, M, n, unsigned(M * 17 + n), act_offset);
  dense dx(out, M, k);
  dx.poison();
  int64_t rows_per_split = 0;
  const int splits = gd::gemv_backward_splits(is_4bit(f), M, n, k, gd::gemv_mt_for(M), &rows_per_split);
  std::vector<float> partial(splits > 1 ? size_t(splits) * size_t(M * k) : 0, std::numeric_limits<float>::quiet_NaN());
  gd::dispatch_kind(f, [&](auto tag) {
    constexpr gd::decode_kind D = decltype(tag)::value;
    gd::gemv_backward<D>(dy.data(), act, wa, dx.data(), out, M, n, k, splits, rows_per_split,
                         partial.empty() ? nullptr : partial.data(), table, map, nullptr);
  });
  ref.assign(size_t(M * k), 0.0);
  abs_sum.assign(size_t(M * k), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n; ++j) {
      const double g = dy.at(m * n + j);
      for (int64_t l = 0; l < k; ++l) {
        const double p = g * double(w.w[size_t(j * k + l)]);
        ref[size_t(m * k + l)] += p;
        abs_sum[size_t(m * k + l)] += std::fabs(p);
      }
    }
  case_result br;
  compare(dx, ref, abs_sum, n, br);
  INFO("backward (" << splits << " splits): " << br.first_bad);
  CHECK(br.bad == 0);
}

struct format_case {
  format f;
  bool nested;
  int block;
};
const format_case formats[] = {{format::nf4, true, 64},     {format::nf4, false, 64},     {format::fp4, false, 128},
                               {format::int4, false, 64},    {format::int8, false, 256},   {format::dynamic8, false, 256},
                               {format::udynamic8, false, 64}, {format::dynamic4, true, 64}, {format::ulinear4, false, 128}};

}  // namespace

TEST_CASE("emulated gemv regime: every decoder, vector paths, edges of W, activation-row groups") {
  // k = 256: 16-byte rows for every format (vector paths); n = 37: a partial
  // warp pair and a partial CTA in the forward, splits in the backward
  for (const format_case& c : formats)
    for (int64_t M : {1, 2, 3, 5})
      gemv_case(c.f, c.nested, c.block, M, 37, 256, dtype::bf16, dtype::bf16, 0, M == 1);
  CHECK(fake_cuda::live_allocations() == 0);
}

TEST_CASE("emulated gemv regime: odd k (rows start mid-byte), misaligned activations, every dtype") {
  for (const format_case& c : formats) {
    gemv_case(c.f, c.nested, c.block, 2, 19, 77, dtype::f32, dtype::f32, 0, true);  // odd k: scalar paths
    gemv_case(c.f, c.nested, c.block, 1, 21, 96, dtype::f16, dtype::f16, 1, false);  // misaligned x / dy
  }
  // every activation / output dtype pair on one format, vector path
  for (dtype act : {dtype::f32, dtype::bf16, dtype::f16})
    for (dtype out : {dtype::f32, dtype::bf16, dtype::f16})
      gemv_case(format::nf4, true, 64, 4, 33, 128, act, out, 0, true);
}

TEST_CASE("emulated gemv regime: a W large enough for several CTAs and backward splits") {
  // 300 rows: 19 forward CTAs; the backward spreads them over splits
  // (fake device of 4 SMs) and sums fp32 partials in the finalize kernel
  int64_t rows_per_split = 0;
  CHECK(gd::gemv_backward_splits(true, 1, 300, 512, 1, &rows_per_split) > 1);
  gemv_case(format::nf4, true, 64, 1, 300, 512, dtype::bf16, dtype::bf16, 0, true);
  gemv_case(format::int8, false, 256, 9, 300, 512, dtype::bf16, dtype::f32, 0, false);
}

TEST_CASE("emulated gemv regime: rows longer than one warp step (the forward's load pipeline)") {
  // k = 2080: 65 16-byte vectors of 4-bit codes per row (130 of 8-bit), so
  // forward lanes take 2 to 5 steps and the next step's loads are in flight
  for (const format_case& c : formats)
    for (int64_t M : {1, 4})
      gemv_case(c.f, c.nested, c.block, M, 20, 2080, dtype::bf16, dtype::bf16, 0, M == 1);
}

TEST_CASE("emulated gemv regime: split_k forward with 1, 2, 4 and 8 warps per row pair") {
  // Warps per row pair: the largest power of two up to 8 giving each
  // thread at least one 16-byte vector (or element) of a row.
  CHECK(gd::gemv_forward_warps_per_row_group(1) == 1);
  CHECK(gd::gemv_forward_warps_per_row_group(63) == 1);
  CHECK(gd::gemv_forward_warps_per_row_group(64) == 2);
  CHECK(gd::gemv_forward_warps_per_row_group(128) == 4);
  CHECK(gd::gemv_forward_warps_per_row_group(255) == 4);
  CHECK(gd::gemv_forward_warps_per_row_group(344) == 8);  // NF4, K = 11008
  // n = 7: a CTA's last row pair half outside W (and, with 2 or 4 pairs a
  // CTA, whole pairs outside it); k: 257 16-byte vectors a row (8 warps,
  // one thread with two), 129 (4 warps), the per-element path (odd k)
  struct kcase {
    format f;
    bool nested;
    int block;
    int64_t k;
  };
  const kcase cases[] = {{format::nf4, true, 64, 8224},  {format::int4, false, 64, 4128}, {format::int8, false, 256, 4112},
                         {format::nf4, true, 64, 259},   {format::int8, false, 256, 129}};
  for (const kcase& c : cases)
    for (int64_t M : {1, 4}) gemv_case(c.f, c.nested, c.block, M, 7, c.k, dtype::bf16, dtype::bf16, 0, M == 1);
  CHECK(fake_cuda::live_allocations() == 0);
}

TEST_CASE("emulated dequant_cublas tile kernel: sub-rectangles of W bit for bit against cpu::dequantize") {
  struct rect {
    int64_t r0, rows, c0, cols;
  };
  for (const format_case& c : formats)
    for (int64_t K : {int64_t(256), int64_t(77)}) {  // 77: rows start mid-block and (4-bit) mid-byte
      CAPTURE(format_name(c.f));
      CAPTURE(c.nested);
      CAPTURE(K);
      const int64_t N = 40;
      test_weight w(c.f, N, K, c.block, c.nested, unsigned(K + 3));
      quantized_view qv = w.q.view();
      qv.dev = device::cuda();
      const gd::weight_args wa = gd::make_weight_args(qv, N, K);
      const code_table table = make_code_table(c.f);
      const code_table map = gd::nested_map_table(c.nested);
      // whole W; column panels on group boundaries (the wide path when K
      // allows); odd offsets and widths (the per-element path)
      const rect rects[] = {{0, N, 0, K}, {0, N, 64, 128}, {5, 30, 8, 40}, {3, 10, 5, 61}, {39, 1, 0, 7}};
      for (const rect& r : rects) {
        if (r.c0 + r.cols > K) continue;
        CAPTURE(r.r0);
        CAPTURE(r.c0);
        CAPTURE(r.cols);
        std::vector<float> got(size_t(r.rows * r.cols) + 4, std::numeric_limits<float>::quiet_NaN());
        std::vector<bf16> got16(size_t(r.rows * r.cols));
        gd::dispatch_kind(c.f, [&](auto tag) {
          constexpr gd::decode_kind D = decltype(tag)::value;
          gd::launch_dequant_tile<D, float>(wa, r.r0, r.rows, r.c0, r.cols, got.data(), table, map, nullptr);
          gd::launch_dequant_tile<D, bf16>(wa, r.r0, r.rows, r.c0, r.cols, got16.data(), table, map, nullptr);
        });
        int64_t bad = 0;
        for (int64_t i = 0; i < r.rows; ++i)
          for (int64_t j = 0; j < r.cols; ++j) {
            const float want = w.w[size_t((r.r0 + i) * K + r.c0 + j)];
            uint32_t a, b;
            std::memcpy(&a, &got[size_t(i * r.cols + j)], 4);
            std::memcpy(&b, &want, 4);
            bad += a != b;
            bad += got16[size_t(i * r.cols + j)].bits != from_float<bf16>(want).bits;
          }
        CHECK(bad == 0);
        CHECK(std::isnan(got[size_t(r.rows * r.cols)]));  // nothing written past the tile
      }
    }
}
