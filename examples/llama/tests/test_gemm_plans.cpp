// The CUDA trainer's cuBLAS arguments, checked on the CPU: the plans of
// cuda/gemm_plans.hpp (the very argument sets attention.cuh and linear.cuh
// hand to cuBLAS) are run through reference_gemm, a column-major GEMM with
// cuBLAS's semantics, around the head-major permutation the CUDA kernels
// use and a causal softmax written as the kernels compute it; the results
// must equal the CPU trainer's attention (ops.hpp) and linear layers in
// float64 to 1e-12 relative. Grouped-query shapes with G = 1, 2 and 4
// query heads per kv head.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../cuda/gemm_plans.hpp"
#include "../ops.hpp"

using namespace llama;
using namespace llama::gpu;

namespace {

std::vector<double> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> v(n);
  for (double& x : v) x = d(g);
  return v;
}

// [B*S, heads*hd] <-> [B, heads, S, hd] with the kernels' offset functions.
std::vector<double> to_head_major(const std::vector<double>& x, const attention_dims& d, int64_t heads) {
  std::vector<double> y(x.size());
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t p = 0; p < d.S; ++p)
        for (int64_t i = 0; i < d.hd; ++i)
          y[size_t(head_major_offset(b, h, p, i, d.S, heads, d.hd))] =
              x[size_t(row_major_offset(b, h, p, i, d.S, heads, d.hd))];
  return y;
}
std::vector<double> to_row_major(const std::vector<double>& x, const attention_dims& d, int64_t heads) {
  std::vector<double> y(x.size());
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t p = 0; p < d.S; ++p)
        for (int64_t i = 0; i < d.hd; ++i)
          y[size_t(row_major_offset(b, h, p, i, d.S, heads, d.hd))] =
              x[size_t(head_major_offset(b, h, p, i, d.S, heads, d.hd))];
  return y;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0, scale = 0;
  for (double v : b) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst / std::max(scale, 1e-300);
}

void check_attention(int64_t B, int64_t S, int64_t H, int64_t KV, int64_t hd) {
  CAPTURE(B);
  CAPTURE(S);
  CAPTURE(H);
  CAPTURE(KV);
  CAPTURE(hd);
  const attention_dims d{B, S, H, KV, hd};
  const ops::attention_shape shape{B, S, H, KV, hd};
  const int64_t M = B * S, QW = H * hd, KW = KV * hd, rows = B * H * S;
  const std::vector<double> q = random_vec(size_t(M * QW), 1), k = random_vec(size_t(M * KW), 2),
                            v = random_vec(size_t(M * KW), 3), dout = random_vec(size_t(M * QW), 4);
  // the CPU trainer's attention, in double
  std::vector<double> probs_ref(size_t(B * H * S * S)), out_ref(size_t(M * QW));
  ops::attention_forward(q.data(), k.data(), v.data(), probs_ref.data(), out_ref.data(), shape);
  std::vector<double> dq_ref(q.size()), dk_ref(k.size()), dv_ref(v.size());
  ops::attention_backward(dout.data(), q.data(), k.data(), v.data(), probs_ref.data(), dq_ref.data(), dk_ref.data(),
                          dv_ref.data(), shape);

  // the CUDA path's plan
  const double scale = 1.0 / std::sqrt(double(hd));
  const attention_plan p = plan_attention(d, float(scale));
  const std::vector<double> qh = to_head_major(q, d, H), kh = to_head_major(k, d, KV), vh = to_head_major(v, d, KV),
                            doh = to_head_major(dout, d, H);
  std::vector<double> scores(size_t(rows * S), NAN), probs(scores.size(), NAN);
  gemm_args sg = p.scores;
  sg.alpha = 1.0f;  // the float alpha would round the scale; apply it in double below
  reference_gemm(sg, kh.data(), qh.data(), scores.data());
  for (double& x : scores) x *= scale;
  for (int64_t r = 0; r < rows; ++r) {  // causal softmax: row r is position r % S
    const int64_t i = r % S;
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, scores[size_t(r * S + j)]);
    for (int64_t j = 0; j <= i; ++j) sum += std::exp(scores[size_t(r * S + j)] - mx);
    for (int64_t j = 0; j < S; ++j) probs[size_t(r * S + j)] = j <= i ? std::exp(scores[size_t(r * S + j)] - mx) / sum : 0;
  }
  CHECK(max_rel(probs, probs_ref) < 1e-12);  // head-major [B, H, S, S] is the CPU's layout too
  std::vector<double> oh(size_t(M * QW), NAN);
  reference_gemm(p.output, vh.data(), probs.data(), oh.data());
  CHECK(max_rel(to_row_major(oh, d, H), out_ref) < 1e-12);

  std::vector<double> dprobs(scores.size(), NAN), dscores(scores.size(), NAN), dvh(vh.size(), NAN),
      dqh(qh.size(), NAN), dkh(kh.size(), NAN);
  reference_gemm(p.dprobs, vh.data(), doh.data(), dprobs.data());
  reference_gemm(p.dv, doh.data(), probs.data(), dvh.data());
  for (int64_t r = 0; r < rows; ++r) {  // dS = P (dP - rowsum(P dP)) scale, 0 above the diagonal
    const int64_t i = r % S;
    double dot = 0;
    for (int64_t j = 0; j <= i; ++j) dot += probs[size_t(r * S + j)] * dprobs[size_t(r * S + j)];
    for (int64_t j = 0; j < S; ++j)
      dscores[size_t(r * S + j)] = j <= i ? probs[size_t(r * S + j)] * (dprobs[size_t(r * S + j)] - dot) * scale : 0;
  }
  reference_gemm(p.dq, kh.data(), dscores.data(), dqh.data());
  reference_gemm(p.dk, qh.data(), dscores.data(), dkh.data());
  CHECK(max_rel(to_row_major(dqh, d, H), dq_ref) < 1e-12);
  CHECK(max_rel(to_row_major(dkh, d, KV), dk_ref) < 1e-12);
  CHECK(max_rel(to_row_major(dvh, d, KV), dv_ref) < 1e-12);
}

}  // namespace

TEST_CASE("the CUDA attention's cuBLAS plans compute the CPU trainer's attention (forward and backward)") {
  check_attention(2, 5, 4, 2, 6);   // G = 2
  check_attention(3, 7, 4, 1, 4);   // G = 4, one kv head
  check_attention(1, 9, 3, 3, 8);   // G = 1 (multi-head)
  check_attention(2, 1, 2, 1, 2);   // one position
}

TEST_CASE("the CUDA dense linear layer's cuBLAS plans compute y = x W^T and dx = dy W") {
  for (int64_t M : {1, 3, 8})
    for (auto rc : {std::pair<int64_t, int64_t>{5, 7}, {16, 4}, {1, 9}}) {
      const int64_t rows = rc.first, cols = rc.second;
      CAPTURE(M);
      CAPTURE(rows);
      CAPTURE(cols);
      const std::vector<double> w = random_vec(size_t(rows * cols), 5), x = random_vec(size_t(M * cols), 6),
                                dy = random_vec(size_t(M * rows), 7);
      std::vector<double> y(size_t(M * rows), NAN), dx(size_t(M * cols), NAN), y_ref(y.size()), dx_ref(dx.size());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t r = 0; r < rows; ++r) {
          double s = 0;
          for (int64_t c = 0; c < cols; ++c) s += x[size_t(m * cols + c)] * w[size_t(r * cols + c)];
          y_ref[size_t(m * rows + r)] = s;
        }
        for (int64_t c = 0; c < cols; ++c) {
          double s = 0;
          for (int64_t r = 0; r < rows; ++r) s += dy[size_t(m * rows + r)] * w[size_t(r * cols + c)];
          dx_ref[size_t(m * cols + c)] = s;
        }
      }
      reference_gemm(plan_linear_forward(M, rows, cols), w.data(), x.data(), y.data());
      reference_gemm(plan_linear_backward_input(M, rows, cols), w.data(), dy.data(), dx.data());
      CHECK(max_rel(y, y_ref) < 1e-12);
      CHECK(max_rel(dx, dx_ref) < 1e-12);
    }
}

TEST_CASE("reference_gemm has cuBLAS's column-major semantics") {
  // C (2 x 2, ld 3) = A (2 x 3, ld 2) B (3 x 2, ld 3), no transposes, by hand
  const double A[6] = {1, 2, 3, 4, 5, 6};       // columns (1,2) (3,4) (5,6)
  const double Bm[6] = {1, 0, 1, 0, 1, 0};      // columns (1,0,1) (0,1,0)
  double C[6] = {0, 0, -7, 0, 0, -7};
  gemm_args g;
  g.m = 2, g.n = 2, g.k = 3, g.lda = 2, g.ldb = 3, g.ldc = 3;
  reference_gemm(g, A, Bm, C);
  CHECK(C[0] == 6);   // row 0: 1 + 5
  CHECK(C[1] == 8);   // row 1: 2 + 6
  CHECK(C[3] == 3);   // column 1 = A's column 1
  CHECK(C[4] == 4);
  CHECK(C[2] == -7);  // padding rows untouched
  CHECK(C[5] == -7);
}
