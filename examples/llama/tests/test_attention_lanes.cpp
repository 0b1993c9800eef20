// examples/llama/tests/test_attention_lanes.cpp
// ops::attention_forward / attention_backward compute their dot products
// over the head dimension with the keys as vector lanes (dot_keys) and
// their sums over keys or queries two rows at a time with the accumulators
// in registers (weighted_rows2); every value must equal the scalar form bit
// for bit, so that the CPU trainer's results (docs/RESULTS.md) do not move.
// The scalar form is written out below as the reference: each dot product
// summed over d in order, dk and dv updated query by query, the softmax and
// the rest in the order ops.hpp uses. Shapes: seq lengths below, at and
// past the 16 lanes and past 4 groups of them (dot_keys takes 4, 2, then 1
// group at a time), odd and even (rows go in pairs), head dimensions below,
// at, between and past multiples of the 32-column pass, grouped-query
// heads, float and double.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../ops.hpp"
#include "bitwise.hpp"

using namespace llama;
using bitwise::normal;
using bitwise::same_bits;

namespace {

template <class T>
void scalar_forward(const T* q, const T* k, const T* v, T* probs, T* out, const ops::attention_shape& a) {
  const int64_t S = a.seq, hd = a.head_dim, qw = a.q_width(), kw = a.kv_width(), group = a.heads / a.kv_heads;
  const T scale = T(1) / std::sqrt(T(hd));
  for (int64_t t = 0; t < a.batch * a.heads; ++t) {
    const int64_t b = t / a.heads, h = t % a.heads, kvh = h / group;
    T* P = probs + t * S * S;
    for (int64_t i = 0; i < S; ++i) {
      const T* qi = q + (b * S + i) * qw + h * hd;
      T* p = P + i * S;
      T mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        const T* kj = k + (b * S + j) * kw + kvh * hd;
        T s = 0;
        for (int64_t d = 0; d < hd; ++d) s += qi[d] * kj[d];
        p[j] = s * scale;
        mx = p[j] > mx ? p[j] : mx;
      }
      T sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      const T inv = T(1) / sum;
      for (int64_t j = 0; j <= i; ++j) p[j] *= inv;
      for (int64_t j = i + 1; j < S; ++j) p[j] = 0;
      T* o = out + (b * S + i) * qw + h * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const T* vj = v + (b * S + j) * kw + kvh * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] += p[j] * vj[d];
      }
    }
  }
}

template <class T>
void scalar_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs, T* dq, T* dk, T* dv,
                     const ops::attention_shape& a) {
  const int64_t S = a.seq, hd = a.head_dim, qw = a.q_width(), kw = a.kv_width(), group = a.heads / a.kv_heads;
  const T scale = T(1) / std::sqrt(T(hd));
  std::vector<T> dp(static_cast<size_t>(S));
  for (int64_t t = 0; t < a.batch * a.kv_heads; ++t) {
    const int64_t b = t / a.kv_heads, kvh = t % a.kv_heads;
    for (int64_t j = 0; j < S; ++j)
      for (int64_t d = 0; d < hd; ++d) dk[(b * S + j) * kw + kvh * hd + d] = dv[(b * S + j) * kw + kvh * hd + d] = 0;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const T* P = probs + (b * a.heads + h) * S * S;
      for (int64_t i = 0; i < S; ++i) {
        const T* p = P + i * S;
        const T* doi = dout + (b * S + i) * qw + h * hd;
        T dot = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T* vj = v + (b * S + j) * kw + kvh * hd;
          T* dvj = dv + (b * S + j) * kw + kvh * hd;
          T s = 0;
          for (int64_t d = 0; d < hd; ++d) {
            s += doi[d] * vj[d];
            dvj[d] += p[j] * doi[d];
          }
          dp[size_t(j)] = s;
          dot += p[j] * s;
        }
        const T* qi = q + (b * S + i) * qw + h * hd;
        T* dqi = dq + (b * S + i) * qw + h * hd;
        for (int64_t d = 0; d < hd; ++d) dqi[d] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T ds = p[j] * (dp[size_t(j)] - dot) * scale;
          const T* kj = k + (b * S + j) * kw + kvh * hd;
          T* dkj = dk + (b * S + j) * kw + kvh * hd;
          for (int64_t d = 0; d < hd; ++d) {
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
          }
        }
      }
    }
  }
}

template <class T>
void check_shape(const ops::attention_shape& a) {
  const int64_t M = a.batch * a.seq;
  const auto q = normal<T>(size_t(M * a.q_width()), 1), k = normal<T>(size_t(M * a.kv_width()), 2),
             v = normal<T>(size_t(M * a.kv_width()), 3), dout = normal<T>(size_t(M * a.q_width()), 4);
  const size_t np = size_t(a.batch * a.heads * a.seq * a.seq);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> p1(np, nan), p2(np, nan), o1(size_t(M * a.q_width()), nan), o2(o1);
  ops::attention_forward(q.data(), k.data(), v.data(), p1.data(), o1.data(), a);
  scalar_forward(q.data(), k.data(), v.data(), p2.data(), o2.data(), a);
  CHECK(same_bits(p1, p2));
  CHECK(same_bits(o1, o2));
  std::vector<T> dq1(q.size(), nan), dq2(dq1), dk1(k.size(), nan), dk2(dk1), dv1(v.size(), nan), dv2(dv1);
  ops::attention_backward(dout.data(), q.data(), k.data(), v.data(), p1.data(), dq1.data(), dk1.data(), dv1.data(), a);
  scalar_backward(dout.data(), q.data(), k.data(), v.data(), p2.data(), dq2.data(), dk2.data(), dv2.data(), a);
  CHECK(same_bits(dq1, dq2));
  CHECK(same_bits(dk1, dk2));
  CHECK(same_bits(dv1, dv2));
}

}  // namespace

TEST_CASE("attention with keys as vector lanes and paired weighted sums equals the scalar loops, bit for bit") {
  for (const int64_t seq : {1, 2, 5, 15, 16, 17, 40, 70, 100}) {  // 70, 100: 4-, 2- and 1-group passes
    for (const int64_t hd : {1, 8, 32, 40, 64}) {
      CAPTURE(seq);
      CAPTURE(hd);
      check_shape<float>({2, seq, 4, 2, hd});
      check_shape<float>({1, seq, 3, 1, hd});
      check_shape<double>({2, seq, 4, 4, hd});
    }
  }
}
