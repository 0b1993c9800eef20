// GPU dequant-GEMM (cuda::dequant_gemm_forward, dequant_gemm_backward_input,
// gemm_weight_grad) against float64 references, for every format and scale
// kind, every regime forced explicitly (gemv, mma, dequant_cublas) and the
// automatic dispatch, odd shapes (M in {1, 2, 3, 16, 17, 64, 255, 4096}, odd
// N, K not a multiple of the block size, odd K with 4-bit formats so that
// rows of W start mid-byte), with outputs poisoned (NaN) before each launch.
//
// References: the weights are what cpu::dequantize writes (float32), or
// those rounded to the activation dtype for the regimes that multiply in it
// (mma, dequant_cublas: tensor cores take bf16 / fp16; the rounding equals
// cpu::dequantize into that dtype). Activations are the values of their
// stored dtype. Products and sums in double.
//
// Tolerance per output element (Higham's dot-product bound for any
// summation order, plus one rounding into the output dtype):
//   |got - ref| <= g + eps_out * (|ref| + g) + abs_out,
//   g = gamma_L(u_acc) * sum_l |a_l b_l|,  gamma_L(u) = L u / (1 - L u),
// L = the reduction length (+1 with a bias, +1 for split reductions summed
// in fp32 afterwards, +1 for gemv, which applies each block scale once to a
// sum of code values times activations (forward) or to the dY value of a
// row (backward) instead of rounding every weight), u_acc = 2^-24 (fp32 FMAs: gemv) or 2^-22 for
// tensor-core and cuBLAS accumulation (their fp32 accumulation is not
// documented as IEEE round-to-nearest: studies of tensor cores report
// truncated alignment, so four units of 2^-24 per addition are allowed),
// eps_out = 2^-24 (f32), 2^-8 (bf16), 2^-11 (fp16) and abs_out = 2^-25 for
// fp16 outputs (half its smallest subnormal).
// CPU twin vs GPU: |gpu - cpu| <= bound_gpu + |ref_gpu_weights - ref_fp32|
// + bound_cpu. Forward vs backward: the adjoint identity <dY, X W^T> =
// <dY W, X> holds for the GPU outputs within sum |dY| bound_Y + sum |X|
// bound_dX.
#include <doctest/doctest.h>

#include <lowbit/cpu/dequant_gemm.hpp>
#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cuda/dequant_gemm.cuh>
#include <lowbit/cuda/quantize.cuh>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "device_buffer.cuh"

using namespace lowbit;
namespace gd = lowbit::cuda::gemm_detail;
using cuda::gemm_regime;

namespace {

// ---- tolerances ---------------------------------------------------------------------
double out_eps(dtype t) {
  return t == dtype::bf16 ? std::ldexp(1.0, -8) : t == dtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -24);
}
double out_abs(dtype t) { return t == dtype::f16 ? std::ldexp(1.0, -25) : 0.0; }
double acc_unit(gemm_regime r) { return r == gemm_regime::gemv ? std::ldexp(1.0, -24) : std::ldexp(1.0, -22); }
double gamma_of(int64_t terms, double u) { return double(terms) * u / (1.0 - double(terms) * u); }
double bound(double ref, double abs_sum, int64_t terms, double u_acc, dtype out) {
  const double g = gamma_of(terms, u_acc) * abs_sum;
  return g + out_eps(out) * (std::fabs(ref) + g) + out_abs(out);
}

// ---- dense host matrices of any float dtype ----------------------------------------
struct dense {
  dtype type = dtype::f32;
  int64_t rows = 0, cols = 0;
  std::vector<unsigned char> bytes;
  int64_t numel() const { return rows * cols; }
  double at(int64_t i) const { return double(gd::load_as_float(bytes.data(), type, i)); }
  void set(int64_t i, float v) {
    if (type == dtype::f64) reinterpret_cast<double*>(bytes.data())[i] = double(v);
    else gd::store_from_float(bytes.data(), type, i, v);
  }
  tensor_view host_view() { return make_view(bytes.data(), type, {rows, cols}); }
};

dense make_dense(dtype t, int64_t rows, int64_t cols) {
  dense d;
  d.type = t;
  d.rows = rows;
  d.cols = cols;
  d.bytes.assign(size_t(rows * cols) * dtype_size(t) + 1, 0);
  return d;
}

dense random_dense(dtype t, int64_t rows, int64_t cols, uint64_t seed, float scale = 1.0f) {
  dense d = make_dense(t, rows, cols);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < d.numel(); ++i) d.set(i, u(rng));
  return d;
}

// A device copy of a dense matrix (or an output buffer poisoned with NaN
// bytes: 0xFF.. is NaN in float32, bfloat16 and float16).
struct device_dense {
  dtype type;
  int64_t rows, cols;
  device_buffer<unsigned char> buf;
  device_dense(const dense& h, bool managed = false)
      : type(h.type), rows(h.rows), cols(h.cols), buf(h.bytes.size(), managed) {
    buf.upload(h.bytes);
  }
  device_dense(dtype t, int64_t r, int64_t c, bool managed = false)
      : type(t), rows(r), cols(c), buf(size_t(r * c) * dtype_size(t) + 1, managed) {
    poison();
  }
  void poison() { LOWBIT_CUDA_CHECK(cudaMemset(buf.ptr, 0xFF, size_t(rows * cols) * dtype_size(type))); }
  tensor_view view(bool managed = false) {
    return make_view(buf.ptr, type, {rows, cols}, managed ? device::managed() : device::cuda());
  }
  dense download() const {
    dense d = make_dense(type, rows, cols);
    LOWBIT_CUDA_CHECK(cudaMemcpy(d.bytes.data(), buf.ptr, size_t(rows * cols) * dtype_size(type),
                                 cudaMemcpyDeviceToHost));
    return d;
  }
};

// ---- the quantized weight, on host and device -----------------------------------------
struct test_weight {
  quantized_tensor q;
  std::vector<float> w32;  // cpu::dequantize, row-major N x K
  device_quantized dq;
  int64_t N, K;
  test_weight(format f, int64_t n, int64_t k, int bs, bool nested, uint64_t seed, bool managed = false)
      : q(make_layout(f, n * k, bs, nested)), dq(make_layout(f, n * k, bs, nested), managed), N(n), K(k) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> w(size_t(n * k));
    for (auto& v : w) v = is_unsigned_format(f) ? std::fabs(d(rng)) : d(rng);
    if (n * k > 3 * bs)  // an all-zero block
      for (int64_t i = bs; i < 2 * bs; ++i) w[size_t(i)] = 0.0f;
    cpu::quantize(make_flat_view(w.data(), n * k), q.view());
    w32.resize(size_t(n * k));
    cpu::dequantize(q.view(), make_flat_view(w32.data(), n * k));
    dq.codes.upload(q.codes);
    if (nested) {
      dq.absmax_codes.upload(q.absmax_codes);
      dq.nested_absmax.upload(q.nested_absmax);
      dq.offset.upload(std::vector<float>{q.nested_offset});
    } else {
      dq.absmax.upload(q.absmax);
    }
    this->managed = managed;
  }
  bool managed = false;
  quantized_view view() { return dq.view(managed); }
  // The weights a regime multiplies by: float32, or rounded to `t`.
  std::vector<double> weights(dtype t) const {
    std::vector<double> out(w32.size());
    for (size_t i = 0; i < w32.size(); ++i) {
      float v = w32[i];
      if (t == dtype::bf16) v = to_float(to_bf16(v));
      else if (t == dtype::f16) v = to_float(to_fp16(v));
      out[i] = double(v);
    }
    return out;
  }
};

dtype weight_dtype(gemm_regime r, dtype act) { return r == gemm_regime::gemv ? dtype::f32 : act; }

// ---- float64 references ------------------------------------------------------------------
struct reference {
  std::vector<double> val, abs;
  int64_t terms = 0;
};

// Y = X W^T (+ bias); x: [M][K], w: N x K.
reference ref_forward(const dense& x, const std::vector<double>& w, int64_t N, int64_t K, const dense* bias) {
  const int64_t M = x.rows;
  std::vector<double> xd(size_t(M * K));
  for (int64_t i = 0; i < M * K; ++i) xd[size_t(i)] = x.at(i);
  reference r;
  r.val.assign(size_t(M * N), 0.0);
  r.abs.assign(size_t(M * N), 0.0);
  r.terms = K + (bias ? 1 : 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, a = 0;
      const double* xr = xd.data() + m * K;
      const double* wr = w.data() + n * K;
      for (int64_t k = 0; k < K; ++k) {
        const double p = xr[k] * wr[k];
        s += p;
        a += std::fabs(p);
      }
      if (bias) {
        s += bias->at(n);
        a += std::fabs(bias->at(n));
      }
      r.val[size_t(m * N + n)] = s;
      r.abs[size_t(m * N + n)] = a;
    }
  return r;
}

// dX = dY W; dy: [M][N].
reference ref_backward(const dense& dy, const std::vector<double>& w, int64_t N, int64_t K) {
  const int64_t M = dy.rows;
  reference r;
  r.val.assign(size_t(M * K), 0.0);
  r.abs.assign(size_t(M * K), 0.0);
  r.terms = N;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double g = dy.at(m * N + n);
      const double* wr = w.data() + n * K;
      double* v = r.val.data() + m * K;
      double* a = r.abs.data() + m * K;
      for (int64_t k = 0; k < K; ++k) {
        v[k] += g * wr[k];
        a[k] += std::fabs(g * wr[k]);
      }
    }
  return r;
}

// Elementwise bounds of an output of dtype `out` against `ref`.
std::vector<double> bounds_of(const reference& ref, gemm_regime regime, dtype out) {
  std::vector<double> b(ref.val.size());
  // +1 term: split reductions add their fp32 partials once more; +1 for
  // gemv's scale applied to partial sums (one more rounding per product)
  const int64_t terms = ref.terms + 1 + (regime == gemm_regime::gemv ? 1 : 0);
  for (size_t i = 0; i < b.size(); ++i) b[i] = bound(ref.val[i], ref.abs[i], terms, acc_unit(regime), out);
  return b;
}

// Fails (once, with the element) when |got - ref| > tol anywhere; NaN
// (poison left unwritten) always fails.
bool check_all(const dense& got, const reference& ref, const std::vector<double>& tol, const char* what) {
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.at(i), r = ref.val[size_t(i)];
    if (!(std::fabs(g - r) <= tol[size_t(i)])) {
      CAPTURE(what);
      CAPTURE(i);
      CAPTURE(g);
      CAPTURE(r);
      CAPTURE(tol[size_t(i)]);
      FAIL_CHECK("element out of bound");
      return false;
    }
  }
  return true;
}

cuda::gemm_options opts(gemm_regime r) {
  cuda::gemm_options o;
  o.regime = r;
  return o;
}

dense run_forward(const dense& x, test_weight& w, const dense* bias, dtype out, gemm_regime regime,
                  const cuda::gemm_options* custom = nullptr) {
  device_dense dx(x, w.managed), dy(out, x.rows, w.N, w.managed);
  std::unique_ptr<device_dense> db;
  tensor_view bv;
  if (bias) {
    db.reset(new device_dense(*bias, w.managed));
    bv = make_view(db->buf.ptr, bias->type, {w.N}, w.managed ? device::managed() : device::cuda());
  }
  cuda::dequant_gemm_forward(dx.view(w.managed), w.view(), w.N, w.K, bias ? &bv : nullptr, dy.view(w.managed),
                             nullptr, custom ? *custom : opts(regime));
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  return dy.download();
}

dense run_backward(const dense& dyh, test_weight& w, dtype out, gemm_regime regime,
                   const cuda::gemm_options* custom = nullptr) {
  device_dense ddy(dyh, w.managed), ddx(out, dyh.rows, w.K, w.managed);
  cuda::dequant_gemm_backward_input(ddy.view(w.managed), w.view(), w.N, w.K, ddx.view(w.managed), nullptr,
                                    custom ? *custom : opts(regime));
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  return ddx.download();
}

const gemm_regime all_regimes[] = {gemm_regime::gemv, gemm_regime::mma, gemm_regime::dequant_cublas};

bool regime_allowed(gemm_regime r, dtype act) { return !(r == gemm_regime::mma && act == dtype::f32); }

struct shape {
  int64_t M, N, K;
  int bs;
};

// One (format, scales, shape, dtypes) configuration: every regime forward
// and backward against its reference, the CPU twin, and the adjoint check.
void check_config(format f, bool nested, const shape& s, dtype act, dtype out, bool with_bias, uint64_t seed) {
  CAPTURE(std::string(format_name(f)));
  CAPTURE(nested);
  CAPTURE(s.M);
  CAPTURE(s.N);
  CAPTURE(s.K);
  CAPTURE(s.bs);
  CAPTURE(std::string(dtype_name(act)));
  CAPTURE(std::string(dtype_name(out)));
  CAPTURE(with_bias);
  const int64_t M = s.M, N = s.N, K = s.K;
  test_weight w(f, N, K, s.bs, nested, seed);
  const dense x = random_dense(act, M, K, seed + 1);
  const dense dy = random_dense(act, M, N, seed + 2);
  const dense bias = random_dense(dtype::f32, 1, N, seed + 3, 4.0f);
  const dense* bp = with_bias ? &bias : nullptr;

  // The CPU twin (float32 weights) and the fp32-weight references.
  const std::vector<double> w32 = w.weights(dtype::f32);
  const reference f32ref = ref_forward(x, w32, N, K, bp), b32ref = ref_backward(dy, w32, N, K);
  dense y_cpu = make_dense(out, M, N), dx_cpu = make_dense(out, M, K);
  {
    dense xc = x, dyc = dy, bc = bias;
    tensor_view bv = make_view(bc.bytes.data(), dtype::f32, {N});
    cpu::dequant_gemm_forward(xc.host_view(), w.q.view(), N, K, with_bias ? &bv : nullptr, y_cpu.host_view());
    cpu::dequant_gemm_backward_input(dyc.host_view(), w.q.view(), N, K, dx_cpu.host_view());
  }
  const std::vector<double> fcpu_tol = bounds_of(f32ref, gemm_regime::gemv, out);
  const std::vector<double> bcpu_tol = bounds_of(b32ref, gemm_regime::gemv, out);

  // References with the weights rounded to the activation dtype (mma, dequant_cublas).
  reference fTref, bTref;
  if (act != dtype::f32) {
    const std::vector<double> wT = w.weights(act);
    fTref = ref_forward(x, wT, N, K, bp);
    bTref = ref_backward(dy, wT, N, K);
  }

  for (gemm_regime r : all_regimes) {
    if (!regime_allowed(r, act)) continue;
    CAPTURE(std::string(cuda::gemm_regime_name(r)));
    const dtype wt = weight_dtype(r, act);
    const reference& fref = wt == dtype::f32 ? f32ref : fTref;
    const reference& bref = wt == dtype::f32 ? b32ref : bTref;
    const std::vector<double> ftol = bounds_of(fref, r, out), btol = bounds_of(bref, r, out);

    const dense y = run_forward(x, w, bp, out, r);
    if (!check_all(y, fref, ftol, "forward vs float64 reference")) return;
    if (r == gemm_regime::gemv) {  // the forward gemv's other work division, same bound
      cuda::gemm_options split = opts(r);
      split.policy.gemv_forward = cuda::gemv_forward_layout::split_k;
      const dense ys = run_forward(x, w, bp, out, r, &split);
      if (!check_all(ys, fref, ftol, "forward (gemv split_k) vs float64 reference")) return;
    }
    const dense dx = run_backward(dy, w, out, r);
    if (!check_all(dx, bref, btol, "backward vs float64 reference")) return;

    // CPU twin agrees within both bounds plus the weights' rounding to bf16 / fp16.
    std::vector<double> ftol_cpu(ftol.size()), btol_cpu(btol.size());
    for (size_t i = 0; i < ftol.size(); ++i)
      ftol_cpu[i] = ftol[i] + std::fabs(fref.val[i] - f32ref.val[i]) + fcpu_tol[i];
    for (size_t i = 0; i < btol.size(); ++i)
      btol_cpu[i] = btol[i] + std::fabs(bref.val[i] - b32ref.val[i]) + bcpu_tol[i];
    reference ycpu_as_ref, dxcpu_as_ref;
    ycpu_as_ref.val.resize(size_t(M * N));
    for (int64_t i = 0; i < M * N; ++i) ycpu_as_ref.val[size_t(i)] = y_cpu.at(i);
    dxcpu_as_ref.val.resize(size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) dxcpu_as_ref.val[size_t(i)] = dx_cpu.at(i);
    if (!check_all(y, ycpu_as_ref, ftol_cpu, "forward vs CPU twin")) return;
    if (!check_all(dx, dxcpu_as_ref, btol_cpu, "backward vs CPU twin")) return;

    // Forward and backward agree: <dY, Y - bias> = <dY W, X> = <dX, X>.
    double lhs = 0, rhs = 0, slack = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const double g = dy.at(m * N + n);
        lhs += g * (y.at(m * N + n) - (with_bias ? bias.at(n) : 0.0));
        slack += std::fabs(g) * ftol[size_t(m * N + n)];
      }
    for (int64_t i = 0; i < M * K; ++i) {
      rhs += dx.at(i) * x.at(i);
      slack += std::fabs(x.at(i)) * btol[size_t(i)];
    }
    const double scale = std::fabs(lhs) + std::fabs(rhs) + 1.0;
    if (!(std::fabs(lhs - rhs) <= slack + 1e-12 * scale)) {
      CAPTURE(lhs);
      CAPTURE(rhs);
      CAPTURE(slack);
      FAIL_CHECK("forward and backward disagree (adjoint identity)");
      return;
    }
  }
}

const format every_format[] = {format::nf4,      format::fp4,       format::int4,     format::int8,
                               format::dynamic8, format::udynamic8, format::dynamic4, format::ulinear4};

}  // namespace

TEST_CASE("GEMM decoders equal the format tables bit for bit (host)") {
  // exact q/7 and q/127 through the FMA-corrected reciprocal
  for (int q = -128; q <= 127; ++q) {
    const float a = gd::exact_div_small(float(q), 127.0f, 1.0f / 127.0f);
    CHECK(a == float(q) / 127.0f);
    if (q >= -8 && q <= 7) CHECK(gd::exact_div_small(float(q), 7.0f, 1.0f / 7.0f) == float(q) / 7.0f);
  }
  for (format f : every_format) {
    CAPTURE(std::string(format_name(f)));
    const code_table t = make_code_table(f);
    std::vector<float2> pair(256 * gd::pair_copies);
    std::vector<float> tab(256 * gd::table8_copies);
    for (int i = 0; i < int(pair.size()); ++i) pair[size_t(i)] = gd::pair_entry(t.value, i);
    for (int i = 0; i < int(tab.size()); ++i) tab[size_t(i)] = gd::table8_entry(t.value, i);
    std::mt19937 g(7);
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    int bad = 0;
    gd::dispatch_kind(f, [&](auto tag) {
      constexpr gd::decode_kind D = decltype(tag)::value;
      for (int copy = 0; copy < 32; copy += 5) {
        gd::decoder d;
        d.pair = pair.data();
        d.tab = tab.data();
        d.copy = D == gd::decode_kind::table4 ? copy % gd::pair_copies : copy;
        const int ncodes = gd::kind_is_4bit(D) ? 16 : 256;
        for (int c = 0; c < ncodes; ++c) bad += gd::code_value<D>(d, uint32_t(c)) != t.value[c];
        for (int trial = 0; trial < 4000; ++trial) {
          const uint32_t word = g();
          const float s = trial == 0 ? 0.0f : u(g) * std::ldexp(1.0f, int(g() % 40) - 20);
          float out[8];
          gd::decode_word<D>(d, word, s, out);
          for (int e = 0; e < gd::kind_elems_per_word(D); ++e) {
            uint32_t c;
            if (gd::kind_is_4bit(D)) {
              const uint32_t byte = (word >> (8 * (e / 2))) & 0xFFu;
              c = (e & 1) ? (byte & 15u) : (byte >> 4);
            } else {
              c = (word >> (8 * e)) & 0xFFu;
            }
            const float ref = mul_rn(t.value[c], s);
            bad += std::memcmp(&ref, &out[e], 4) != 0;
          }
        }
      }
    });
    CHECK(bad == 0);
  }
}

TEST_CASE("decoded weights equal cuda::dequantize in every regime (identity activations)") {
  // Y = I W^T has y[m][n] = w[n][m] exactly (one product by 1, the rest 0),
  // dX = I W has dx[n][k] = w[n][k]; so the weights each regime multiplies
  // by are observable and must equal cuda::dequantize's output (float32 for
  // gemv, the activation dtype for mma and dequant_cublas).
  for (format f : every_format)
    for (bool nested : {false, true}) {
      if (nested && !has_zero_code(f)) continue;
      for (int64_t K : {96, 33}) {
        const int64_t N = 40;
        CAPTURE(std::string(format_name(f)));
        CAPTURE(nested);
        CAPTURE(K);
        test_weight w(f, N, K, 32, nested, 11 + uint64_t(K));
        for (dtype act : {dtype::bf16, dtype::f16}) {
          if (act == dtype::f16 && K != 96) continue;  // fp16 once per format and scale kind
          CAPTURE(std::string(dtype_name(act)));
          for (gemm_regime r : all_regimes) {
            CAPTURE(std::string(cuda::gemm_regime_name(r)));
            const dtype wt = weight_dtype(r, act);
            device_dense deq(wt, N, K);
            cuda::dequantize(w.view(), make_view(deq.buf.ptr, wt, {N * K}, device::cuda()));
            const dense ref = deq.download();
            dense eye_k = make_dense(act, K, K), eye_n = make_dense(act, N, N);
            for (int64_t i = 0; i < K; ++i) eye_k.set(i * K + i, 1.0f);
            for (int64_t i = 0; i < N; ++i) eye_n.set(i * N + i, 1.0f);
            const dense y = run_forward(eye_k, w, nullptr, dtype::f32, r);  // [K][N]
            const dense dx = run_backward(eye_n, w, dtype::f32, r);         // [N][K]
            int bad = 0;
            for (int64_t n = 0; n < N; ++n)
              for (int64_t k = 0; k < K; ++k) {
                const double wv = ref.at(n * K + k);
                bad += !(y.at(k * N + n) == wv);
                bad += !(dx.at(n * K + k) == wv);
              }
            CHECK(bad == 0);
          }
        }
      }
    }
}

TEST_CASE("forward and backward match float64 references: every format, scale kind, regime") {
  // Blocks of 32..256 with K = 100, 333 (odd: 4-bit rows start mid-byte),
  // 200 (not a multiple of 16): per-element paths; K = 256, 320, 512, 96:
  // vector paths; N odd or not a multiple of the tile.
  const shape shapes[] = {{1, 33, 100, 64},  {2, 64, 256, 64},   {3, 129, 320, 32}, {16, 127, 96, 64},
                          {17, 33, 333, 128}, {64, 130, 512, 256}, {255, 31, 200, 64}, {4096, 17, 64, 64}};
  const dtype acts[] = {dtype::bf16, dtype::f16, dtype::f32};
  uint64_t seed = 1000;
  int cfg = 0;
  for (format f : every_format)
    for (bool nested : {false, true}) {
      if (nested && !has_zero_code(f)) continue;
      for (const shape& s : shapes) {
        const dtype act = acts[cfg % 3];
        // every fourth configuration writes float32 from 16-bit activations
        const dtype out = (cfg % 4 == 3 && act != dtype::f32) ? dtype::f32 : act;
        check_config(f, nested, s, act, out, cfg % 2 == 0, seed);
        seed += 10;
        ++cfg;
      }
    }
}

TEST_CASE("split reductions: gemv backward and mma split-K") {
  // {2, 2048, 512}: the gemv backward spreads 2048 rows of W over splits;
  // {16, 256, 4096}: two output tiles, so mma splits K; {1, 1024, 2048}.
  const shape shapes[] = {{2, 2048, 512, 64}, {16, 256, 4096, 64}, {1, 1024, 2048, 128}};
  uint64_t seed = 5000;
  for (const shape& s : shapes) {
    check_config(format::nf4, true, s, dtype::bf16, dtype::bf16, true, seed++);
    check_config(format::int8, false, s, dtype::f16, dtype::f16, false, seed++);
    check_config(format::int4, true, s, dtype::bf16, dtype::f32, false, seed++);
    check_config(format::dynamic8, false, s, dtype::bf16, dtype::bf16, true, seed++);
  }
}

// The dequant_cublas regime decodes W whole when it fits
// gemm_options::max_tile_bytes and panel by panel otherwise (forward row
// panels through cuda::dequantize_range, backward column panels through its
// tile kernel); a tiny budget forces 64-row forward / 64-column backward
// panels, the column panels cut through quantization blocks (K = 200 with
// blocks of 64).
TEST_CASE("dequant_cublas in panels (dequantize_range, tile kernel) matches float64 references") {
  struct config {
    format f;
    bool nested;
    dtype act, out;
    bool bias;
  };
  const config configs[] = {{format::nf4, true, dtype::bf16, dtype::bf16, true},
                            {format::int8, false, dtype::f16, dtype::f16, false},
                            {format::int4, true, dtype::f32, dtype::f32, false},
                            {format::dynamic8, false, dtype::bf16, dtype::f32, true},
                            {format::nf4, false, dtype::bf16, dtype::f32, false}};
  const int64_t M = 33, N = 300, K = 200;
  uint64_t seed = 9100;
  for (const config& c : configs) {
    CAPTURE(std::string(format_name(c.f)));
    CAPTURE(std::string(dtype_name(c.act)));
    test_weight w(c.f, N, K, 64, c.nested, seed++);
    const dense x = random_dense(c.act, M, K, seed++);
    const dense dy = random_dense(c.act, M, N, seed++);
    const dense bias = random_dense(dtype::f32, 1, N, seed++, 4.0f);
    const std::vector<double> wT = w.weights(c.act);  // dequant_cublas multiplies by W in the activation dtype
    const reference fref = ref_forward(x, wT, N, K, c.bias ? &bias : nullptr), bref = ref_backward(dy, wT, N, K);
    cuda::gemm_options o = opts(gemm_regime::dequant_cublas);
    o.max_tile_bytes = 1;  // the plan's floor: 64 rows / columns per panel
    const cuda::gemm_plan fp = cuda::plan_dequant_gemm(cuda::gemm_direction::forward, M, N, K, c.f, c.act, c.out,
                                                       c.bias, o);
    CHECK(fp.workspace_bytes < size_t(N) * size_t(K) * dtype_size(c.act));  // really in panels
    if (!c.bias && c.out == dtype::f32 && c.act != dtype::f32) {
      // cuBLAS writes the float32 output itself: no staging panel, the
      // same scratch as a bfloat16 output (and the offsets of the panels
      // into Y / dX are in float32 elements, which the values check).
      for (cuda::gemm_direction d : {cuda::gemm_direction::forward, cuda::gemm_direction::backward_input})
        CHECK(cuda::plan_dequant_gemm(d, M, N, K, c.f, c.act, c.out, false, o).workspace_bytes ==
              cuda::plan_dequant_gemm(d, M, N, K, c.f, c.act, c.act, false, o).workspace_bytes);
    }
    const dense y = run_forward(x, w, c.bias ? &bias : nullptr, c.out, gemm_regime::dequant_cublas, &o);
    CHECK(check_all(y, fref, bounds_of(fref, gemm_regime::dequant_cublas, c.out), "forward in row panels"));
    const dense dx = run_backward(dy, w, c.out, gemm_regime::dequant_cublas, &o);
    CHECK(check_all(dx, bref, bounds_of(bref, gemm_regime::dequant_cublas, c.out), "backward in column panels"));
  }
}

TEST_CASE("bias dtypes, automatic regime, caller workspace, managed memory") {
  const int64_t M = 20, N = 70, K = 128;
  test_weight w(format::nf4, N, K, 64, true, 77);
  const dense x = random_dense(dtype::bf16, M, K, 78);
  const std::vector<double> wb = w.weights(dtype::bf16);
  for (dtype bt : {dtype::bf16, dtype::f16, dtype::f64}) {
    CAPTURE(std::string(dtype_name(bt)));
    const dense bias = random_dense(bt, 1, N, 79, 2.0f);
    const reference ref = ref_forward(x, wb, N, K, &bias);
    const dense y = run_forward(x, w, &bias, dtype::bf16, gemm_regime::automatic);  // M = 20: mma
    check_all(y, ref, bounds_of(ref, gemm_regime::mma, dtype::bf16), "bias dtype");
  }
  // a caller workspace exactly as large as the plan says
  for (gemm_regime r : all_regimes) {
    CAPTURE(std::string(cuda::gemm_regime_name(r)));
    cuda::gemm_options o = opts(r);
    const cuda::gemm_plan plan = cuda::plan_dequant_gemm(cuda::gemm_direction::backward_input, M, N, K,
                                                         format::nf4, dtype::bf16, dtype::bf16, false, o);
    device_buffer<unsigned char> ws(plan.workspace_bytes + 256);
    o.workspace = ws.ptr;
    o.workspace_bytes = plan.workspace_bytes;
    const dense dy = random_dense(dtype::bf16, M, N, 80);
    const dtype wt = weight_dtype(r, dtype::bf16);
    const reference ref = ref_backward(dy, wt == dtype::f32 ? w.weights(dtype::f32) : wb, N, K);
    const dense dx = run_backward(dy, w, dtype::bf16, r, &o);
    check_all(dx, ref, bounds_of(ref, r, dtype::bf16), "caller workspace");
  }
  // managed memory views behave like device memory
  test_weight wm(format::int8, N, K, 64, false, 81, /*managed=*/true);
  for (gemm_regime r : all_regimes) {
    CAPTURE(std::string(cuda::gemm_regime_name(r)));
    const std::vector<double> wr = wm.weights(weight_dtype(r, dtype::bf16));
    const reference ref = ref_forward(x, wr, N, K, nullptr);
    const dense y = run_forward(x, wm, nullptr, dtype::bf16, r);
    check_all(y, ref, bounds_of(ref, r, dtype::bf16), "managed memory");
  }
}

TEST_CASE("the scratch pool keeps a call's workspace until release_gemm_scratch") {
  // The dequant_cublas regime with no caller workspace takes its tile from
  // lowbit's scratch pool; after the call completes the pool still holds at
  // least the tile (the next call need not map it again), the result is
  // unchanged on a second call served from the kept memory, and
  // release_gemm_scratch returns everything.
  const int64_t M = 9, N = 96, K = 256;
  test_weight w(format::nf4, N, K, 64, true, 91);
  const dense x = random_dense(dtype::bf16, M, K, 92);
  cuda::release_gemm_scratch();
  const size_t before = cuda::gemm_scratch_bytes();
  const dense y1 = run_forward(x, w, nullptr, dtype::bf16, gemm_regime::dequant_cublas);
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t tile = size_t(N * K) * 2;
  CHECK(cuda::gemm_scratch_bytes() >= before + tile);
  const dense y2 = run_forward(x, w, nullptr, dtype::bf16, gemm_regime::dequant_cublas);
  REQUIRE(y1.bytes.size() == y2.bytes.size());
  CHECK(y1.bytes == y2.bytes);
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  cuda::release_gemm_scratch();
  CHECK(cuda::gemm_scratch_bytes() == 0);
}

TEST_CASE("empty dimensions: M = 0 writes nothing, K = 0 gives the bias, N = 0 gives zero dX") {
  test_weight w0(format::nf4, 16, 0, 64, false, 3);  // K = 0
  const dense bias = random_dense(dtype::f32, 1, 16, 4, 2.0f);
  for (gemm_regime r : all_regimes) {
    const dense x = make_dense(dtype::bf16, 5, 0);
    const dense y = run_forward(x, w0, &bias, dtype::f32, r);
    for (int64_t i = 0; i < 5 * 16; ++i) CHECK(y.at(i) == bias.at(i % 16));
  }
  test_weight wn(format::int8, 0, 24, 64, false, 5);  // N = 0
  for (gemm_regime r : all_regimes) {
    const dense dy = make_dense(dtype::bf16, 3, 0);
    const dense dx = run_backward(dy, wn, dtype::bf16, r);
    for (int64_t i = 0; i < 3 * 24; ++i) CHECK(dx.at(i) == 0.0);
  }
  test_weight w(format::nf4, 8, 64, 64, false, 6);
  device_dense y(dtype::bf16, 0, 8);
  device_dense x(dtype::bf16, 0, 64);
  cuda::dequant_gemm_forward(x.view(), w.view(), 8, 64, nullptr, y.view());  // no launch, no error
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_CASE("gemm_weight_grad matches a float64 reference") {
  const int64_t M = 37, N = 33, K = 65;
  struct combo {
    dtype in, out;
  };
  const combo combos[] = {{dtype::bf16, dtype::f32}, {dtype::bf16, dtype::bf16}, {dtype::f16, dtype::f32},
                          {dtype::f32, dtype::f32}};
  uint64_t seed = 900;
  for (const combo& c : combos)
    for (bool acc : {false, true}) {
      CAPTURE(std::string(dtype_name(c.in)));
      CAPTURE(std::string(dtype_name(c.out)));
      CAPTURE(acc);
      const dense dy = random_dense(c.in, M, N, seed++), x = random_dense(c.in, M, K, seed++);
      const dense old = random_dense(c.out, N, K, seed++);
      device_dense ddy(dy), dx(x), ddw(old);
      cuda::gemm_weight_grad(ddy.view(), dx.view(), ddw.view(), acc);
      LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
      const dense dw = ddw.download();
      int bad = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          double s = 0, a = 0;
          for (int64_t m = 0; m < M; ++m) {
            const double p = dy.at(m * N + n) * x.at(m * K + k);
            s += p;
            a += std::fabs(p);
          }
          if (acc) {
            s += old.at(n * K + k);
            a += std::fabs(old.at(n * K + k));
          }
          const double tol = bound(s, a, M + 1, std::ldexp(1.0, -22), c.out);
          bad += !(std::fabs(dw.at(n * K + k) - s) <= tol);
        }
      CHECK(bad == 0);
    }
}

TEST_CASE("bad arguments raise typed errors naming the problem") {
  const int64_t M = 4, N = 8, K = 64;
  test_weight w(format::nf4, N, K, 64, false, 9);
  device_dense x(dtype::bf16, M, K), y(dtype::bf16, M, N), dy(dtype::bf16, M, N), dxb(dtype::bf16, M, K);
  auto expect = [](errc code, const char* needle, auto&& fn) {
    try {
      fn();
      FAIL_CHECK("expected lowbit::error");
    } catch (const error& e) {
      CAPTURE(e.what());
      CHECK(e.code() == code);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  std::vector<uint16_t> host_x(size_t(M * K));
  expect(errc::invalid_argument, "x is in host memory", [&] {
    cuda::dequant_gemm_forward(make_view(host_x.data(), dtype::bf16, {M, K}), w.view(), N, K, nullptr, y.view());
  });
  expect(errc::invalid_argument, "y has shape", [&] {
    cuda::dequant_gemm_forward(x.view(), w.view(), N, K, nullptr,
                               make_view(y.buf.ptr, dtype::bf16, {M, N - 1}, device::cuda()));
  });
  expect(errc::invalid_argument, "expected n * k", [&] {
    cuda::dequant_gemm_forward(x.view(), w.view(), N, K + 1, nullptr, y.view());
  });
  expect(errc::invalid_argument, "must be float32, bfloat16 or float16", [&] {
    cuda::dequant_gemm_forward(make_view(x.buf.ptr, dtype::i8, {M, K}, device::cuda()), w.view(), N, K, nullptr,
                               y.view());
  });
  expect(errc::invalid_argument, "bias has shape", [&] {
    tensor_view b = make_view(y.buf.ptr, dtype::f32, {N + 1}, device::cuda());
    cuda::dequant_gemm_forward(x.view(), w.view(), N, K, &b, y.view());
  });
  expect(errc::invalid_argument, "w is in host memory", [&] {
    cuda::dequant_gemm_backward_input(dy.view(), w.q.view(), N, K, dxb.view());
  });
  device_dense xf(dtype::f32, M, K);
  expect(errc::unsupported, "mma regime needs bfloat16 or float16", [&] {
    cuda::dequant_gemm_forward(xf.view(), w.view(), N, K, nullptr, y.view(), nullptr, opts(gemm_regime::mma));
  });
  expect(errc::invalid_argument, "workspace of 16 bytes is too small", [&] {
    device_buffer<unsigned char> ws(16);
    cuda::gemm_options o = opts(gemm_regime::dequant_cublas);
    o.workspace = ws.ptr;
    o.workspace_bytes = 16;
    cuda::dequant_gemm_forward(x.view(), w.view(), N, K, nullptr, y.view(), nullptr, o);
  });
  device_dense dwb(dtype::bf16, N, K), dwh(dtype::f16, N, K), dyh(dtype::f16, M, N), xh(dtype::f16, M, K);
  expect(errc::unsupported, "must have the same dtype", [&] {
    cuda::gemm_weight_grad(dyh.view(), x.view(), dwb.view(), false);
  });
  expect(errc::unsupported, "a bfloat16 dw needs bfloat16", [&] {
    cuda::gemm_weight_grad(dyh.view(), xh.view(), dwb.view(), false);
  });
  expect(errc::invalid_argument, "dw must be float32 or bfloat16", [&] {
    cuda::gemm_weight_grad(dy.view(), x.view(), dwh.view(), false);
  });
}

TEST_CASE("[large] LLaMA-sized weights: regimes agree with sampled float64 references") {
  // N = K = 4096 for M = 1 and 64 (every regime), M = 4096 with N = 256 and
  // K = 512: 256 sampled output elements each against float64.
  struct big {
    int64_t M, N, K;
  };
  const big cases[] = {{1, 4096, 4096}, {64, 4096, 4096}, {4096, 256, 512}};
  uint64_t seed = 31;
  for (const big& c : cases)
    for (format f : {format::nf4, format::int4, format::int8}) {
      const bool nested = f == format::nf4;
      CAPTURE(std::string(format_name(f)));
      CAPTURE(c.M);
      CAPTURE(c.N);
      CAPTURE(c.K);
      test_weight w(f, c.N, c.K, 64, nested, seed++);
      const dense x = random_dense(dtype::bf16, c.M, c.K, seed++), dy = random_dense(dtype::bf16, c.M, c.N, seed++);
      for (gemm_regime r : all_regimes) {
        CAPTURE(std::string(cuda::gemm_regime_name(r)));
        const std::vector<double> wr = w.weights(weight_dtype(r, dtype::bf16));
        const dense y = run_forward(x, w, nullptr, dtype::bf16, r);
        const dense dx = run_backward(dy, w, dtype::bf16, r);
        std::mt19937_64 pick(seed);
        int bad = 0;
        for (int t = 0; t < 256; ++t) {
          const int64_t m = int64_t(pick() % uint64_t(c.M));
          const int64_t n = int64_t(pick() % uint64_t(c.N)), k = int64_t(pick() % uint64_t(c.K));
          double s = 0, a = 0;
          for (int64_t j = 0; j < c.K; ++j) {
            const double p = x.at(m * c.K + j) * wr[size_t(n * c.K + j)];
            s += p;
            a += std::fabs(p);
          }
          bad += !(std::fabs(y.at(m * c.N + n) - s) <= bound(s, a, c.K + 1, acc_unit(r), dtype::bf16));
          s = 0, a = 0;
          for (int64_t j = 0; j < c.N; ++j) {
            const double p = dy.at(m * c.N + j) * wr[size_t(j * c.K + k)];
            s += p;
            a += std::fabs(p);
          }
          bad += !(std::fabs(dx.at(m * c.K + k) - s) <= bound(s, a, c.N + 1, acc_unit(r), dtype::bf16));
        }
        // and no element left unwritten anywhere
        for (int64_t i = 0; i < y.numel(); ++i) bad += std::isnan(y.at(i));
        for (int64_t i = 0; i < dx.numel(); ++i) bad += std::isnan(dx.at(i));
        CHECK(bad == 0);
      }
    }
}
