// examples/llama/ops.hpp
// The model's non-matmul layers, forward and backward, on the CPU: RMSNorm,
// rotary position embeddings (Hugging Face's "rotate half" pairing), causal
// grouped-query attention, the SwiGLU gate, token embedding and the
// cross-entropy loss. Templated on the scalar T: float for training, double
// for the finite-difference gradient check. Every output element is computed
// by one thread in a fixed order, so results never depend on the thread
// count (lowbit::cpu::parallel_for only splits independent rows).
// Shapes: M = batch * seq rows of activations, row m is position m % seq of
// sequence m / seq.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <lowbit/cpu/parallel.hpp>

namespace llama {
namespace ops {

using lowbit::cpu::parallel_for;

// Rows per task: enough work to amortize a thread start.
inline int64_t row_grain(int64_t row_len) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, row_len)); }

// The rows' sums below (sum of squares, the backward's dot product) run
// over j in order, one chain of dependent adds per row: rows_at_once rows
// are summed side by side, each in its own accumulator, so the chains
// overlap (the same adds in the same order per row: the same bits).
constexpr int64_t rows_at_once = 4;

// y = x / rms(x) * w per row; rstd[m] = 1 / sqrt(mean(x^2) + eps).
template <class T>
void rmsnorm_forward(const T* x, const T* w, T* y, T* rstd, int64_t M, int64_t D, float eps) {
  parallel_for(M, row_grain(D), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m += rows_at_once) {
      const int64_t rows = std::min(rows_at_once, m1 - m);
      T ss[rows_at_once] = {};
      if (rows == rows_at_once) {
        for (int64_t j = 0; j < D; ++j)
          for (int64_t q = 0; q < rows_at_once; ++q) ss[q] += x[(m + q) * D + j] * x[(m + q) * D + j];
      } else {
        for (int64_t q = 0; q < rows; ++q)
          for (int64_t j = 0; j < D; ++j) ss[q] += x[(m + q) * D + j] * x[(m + q) * D + j];
      }
      for (int64_t q = 0; q < rows; ++q) {
        const T* xr = x + (m + q) * D;
        const T r = T(1) / std::sqrt(ss[q] / T(D) + T(eps));
        rstd[m + q] = r;
        T* yr = y + (m + q) * D;
        for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] * r) * w[j];
      }
    }
  });
}

// dx += d(rmsnorm)/dx . dy ; dw = sum over rows of dy * x * rstd, written,
// or added to dw's value with accumulate (gradient accumulation).
template <class T>
void rmsnorm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, T* dw, int64_t M, int64_t D,
                      bool accumulate = false) {
  parallel_for(M, row_grain(D), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m += rows_at_once) {
      const int64_t rows = std::min(rows_at_once, m1 - m);
      T dot[rows_at_once] = {};  // sum_j (dy_j w_j) (x_j r), per row
      auto term = [&](int64_t q, int64_t j) {
        return (dy[(m + q) * D + j] * w[j]) * (x[(m + q) * D + j] * rstd[m + q]);
      };
      if (rows == rows_at_once) {
        for (int64_t j = 0; j < D; ++j)
          for (int64_t q = 0; q < rows_at_once; ++q) dot[q] += term(q, j);
      } else {
        for (int64_t q = 0; q < rows; ++q)
          for (int64_t j = 0; j < D; ++j) dot[q] += term(q, j);
      }
      for (int64_t q = 0; q < rows; ++q) {
        const T* xr = x + (m + q) * D;
        const T* dyr = dy + (m + q) * D;
        const T r = rstd[m + q];
        const T c = dot[q] / T(D);
        T* dxr = dx + (m + q) * D;
        for (int64_t j = 0; j < D; ++j) dxr[j] += r * (dyr[j] * w[j] - (xr[j] * r) * c);
      }
    }
  });
  // Columns in parallel, each summed over the rows in order (deterministic),
  // a block of columns at a time in separate accumulators so that a row's
  // run of the block is read once (one column at a time read each row's
  // cache line once per column).
  constexpr int64_t block = 32;
  const int64_t blocks = (D + block - 1) / block;
  parallel_for(blocks, std::max<int64_t>(1, 256 / std::max<int64_t>(1, M)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * block, width = std::min(block, D - j0);
      T s[block] = {};
      for (int64_t m = 0; m < M; ++m) {
        const T* dyr = dy + m * D + j0;
        const T* xr = x + m * D + j0;
        const T r = rstd[m];
        if (width == block) {
          for (int64_t j = 0; j < block; ++j) s[j] += dyr[j] * (xr[j] * r);
        } else {
          for (int64_t j = 0; j < width; ++j) s[j] += dyr[j] * (xr[j] * r);
        }
      }
      for (int64_t j = 0; j < width; ++j) dw[j0 + j] = accumulate ? dw[j0 + j] + s[j] : s[j];
    }
  });
}

// cos / sin of position p times frequency i: table[p * half + i] for
// the head_dim / 2 inverse frequencies given (llama_config::
// rope_frequencies), computed in double and rounded once.
template <class T>
struct rope_table {
  int64_t half = 0;
  std::vector<T> cos, sin;
  rope_table() = default;
  rope_table(int64_t seq, const std::vector<double>& inv_freq) : half(int64_t(inv_freq.size())) {
    cos.resize(static_cast<size_t>(seq * half));
    sin.resize(static_cast<size_t>(seq * half));
    for (int64_t p = 0; p < seq; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(p) * inv_freq[size_t(i)];
        cos[size_t(p * half + i)] = T(std::cos(a));
        sin[size_t(p * half + i)] = T(std::sin(a));
      }
  }
};

// Rotates each head of x [M, heads * head_dim] in place: element i pairs
// with i + head_dim/2. inverse = true applies the transpose (the backward).
template <class T>
void rope_apply(T* x, int64_t M, int64_t seq, int64_t heads, const rope_table<T>& t, bool inverse) {
  const int64_t half = t.half, hd = 2 * half;
  parallel_for(M, row_grain(heads * hd), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const T* c = t.cos.data() + (m % seq) * half;
      const T* s = t.sin.data() + (m % seq) * half;
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + (m * heads + h) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const T a = v[i], b = v[i + half];
          const T sn = inverse ? -s[i] : s[i];
          v[i] = a * c[i] - b * sn;
          v[i + half] = b * c[i] + a * sn;
        }
      }
    }
  });
}

struct attention_shape {
  int64_t batch, seq, heads, kv_heads, head_dim;
  int64_t q_width() const { return heads * head_dim; }
  int64_t kv_width() const { return kv_heads * head_dim; }
};

// Attention's dot products over the head dimension, several keys at a time.
// The scalar form, one key at a time (`s = 0; for d: s += x[d] * y[d]`),
// is a chain of dependent adds the compiler may not reorder; here the keys
// are the vector lanes instead: transpose_head copies one head's hd columns
// of n rows into t[d * ld + j] (ld = padded_keys(n): whole lanes of zeros
// past n), and dot_keys then sums each lane in the same order d = 0, 1,
// ..., so every dot product is the scalar one, bit for bit (tested against
// it), at the vector width.
constexpr int64_t key_lanes = 16;
inline int64_t padded_keys(int64_t n) { return (n + key_lanes - 1) / key_lanes * key_lanes; }

template <class T>
void transpose_head(const T* x, int64_t row_stride, int64_t n, int64_t hd, T* t) {
  const int64_t ld = padded_keys(n);
  for (int64_t d = 0; d < hd; ++d) {
    T* row = t + d * ld;
    for (int64_t j = 0; j < n; ++j) row[j] = x[j * row_stride + d];
    for (int64_t j = n; j < ld; ++j) row[j] = T(0);
  }
}

// out[j] = sum over d = 0 .. hd-1 of x[d] * t[d * ld + j] for the G groups
// of key_lanes keys from j0 (only j < n stored). Each lane's sum is one
// chain of dependent adds; G groups side by side keep G chains in flight
// (one group at a time left the core waiting on each add's latency).
template <int G, class T>
void dot_key_groups(const T* x, const T* t, int64_t ld, int64_t hd, int64_t j0, int64_t n, T* out) {
  T acc[G][key_lanes] = {};
  for (int64_t d = 0; d < hd; ++d) {
    const T xd = x[d];
    const T* row = t + d * ld + j0;
    for (int g = 0; g < G; ++g)
      for (int64_t l = 0; l < key_lanes; ++l) acc[g][l] += xd * row[g * key_lanes + l];
  }
  for (int g = 0; g < G; ++g) {
    const int64_t base = j0 + g * key_lanes;
    // a whole group through a loop of constant length: with the run-time
    // length g++ called memcpy for every 16 keys (1 to 2 % of a step)
    if (n - base >= key_lanes) {
      for (int64_t l = 0; l < key_lanes; ++l) out[base + l] = acc[g][l];
    } else {
      for (int64_t l = 0; l < n - base; ++l) out[base + l] = acc[g][l];
    }
  }
}

// out[j] = sum over d = 0 .. hd-1 of x[d] * t[d * ld + j], for j < n (n <= ld).
template <class T>
void dot_keys(const T* x, const T* t, int64_t ld, int64_t hd, int64_t n, T* out) {
  const int64_t groups = (n + key_lanes - 1) / key_lanes;
  int64_t g = 0;
  for (; g + 4 <= groups; g += 4) dot_key_groups<4>(x, t, ld, hd, g * key_lanes, n, out);
  for (; g + 2 <= groups; g += 2) dot_key_groups<2>(x, t, ld, hd, g * key_lanes, n, out);
  if (g < groups) dot_key_groups<1>(x, t, ld, hd, g * key_lanes, n, out);
}

// Weighted sums of rows, two at a time: for s = 1, 2 and d < hd,
//   acc_s[d] = acc_s[d] + c_s[t * cs] * x_s[t * xs + d]   for t = 0, 1, ..., n-1,
// each product rounded, then each add, in that order: the scalar loop's
// arithmetic exactly. What it buys is speed: the accumulators stay in
// registers over t (the scalar loop stored them back at every t, and the
// compiler had to allow for acc aliasing x), and the two sums are
// independent chains, so the adds' latency overlaps. Attention uses it for
// every sum over keys or queries (out = P V, dq = dS K, dk = dS^T Q,
// dv = P^T dO).
template <class T>
void weighted_rows2(const T* c1, const T* c2, int64_t cs, const T* x1, const T* x2, int64_t xs, int64_t n,
                    int64_t hd, T* acc1, T* acc2) {
  int64_t d0 = 0;
#if defined(__GNUC__)
  if constexpr (std::is_same<T, float>::value) {
    // 32 columns per pass: 4 vectors of 8 per sum (GCC / Clang vector
    // extensions; SSE pairs where AVX is not enabled). Vectors move by
    // memcpy, never as a function's value (returning a 32-byte vector
    // changes the ABI without AVX), and live in named variables (g++ kept
    // arrays of them on the stack, storing all eight at every t).
    typedef float vec8 __attribute__((vector_size(32)));
    auto get = [](vec8& v, const float* p) { __builtin_memcpy(&v, p, sizeof v); };
    auto put = [](float* p, const vec8& v) { __builtin_memcpy(p, &v, sizeof v); };
    for (; d0 + 32 <= hd; d0 += 32) {
      vec8 a0, a1, a2, a3, b0, b1, b2, b3, r0, r1, r2, r3;
      get(a0, acc1 + d0), get(a1, acc1 + d0 + 8), get(a2, acc1 + d0 + 16), get(a3, acc1 + d0 + 24);
      get(b0, acc2 + d0), get(b1, acc2 + d0 + 8), get(b2, acc2 + d0 + 16), get(b3, acc2 + d0 + 24);
      for (int64_t t = 0; t < n; ++t) {
        const float k1 = c1[t * cs], k2 = c2[t * cs];
        const float* p1 = x1 + t * xs + d0;
        const float* p2 = x2 + t * xs + d0;
        get(r0, p1), get(r1, p1 + 8), get(r2, p1 + 16), get(r3, p1 + 24);
        a0 = a0 + k1 * r0, a1 = a1 + k1 * r1, a2 = a2 + k1 * r2, a3 = a3 + k1 * r3;
        get(r0, p2), get(r1, p2 + 8), get(r2, p2 + 16), get(r3, p2 + 24);
        b0 = b0 + k2 * r0, b1 = b1 + k2 * r1, b2 = b2 + k2 * r2, b3 = b3 + k2 * r3;
      }
      put(acc1 + d0, a0), put(acc1 + d0 + 8, a1), put(acc1 + d0 + 16, a2), put(acc1 + d0 + 24, a3);
      put(acc2 + d0, b0), put(acc2 + d0 + 8, b1), put(acc2 + d0 + 16, b2), put(acc2 + d0 + 24, b3);
    }
  }
#endif
  for (; d0 < hd; ++d0) {
    T a = acc1[d0], b = acc2[d0];
    for (int64_t t = 0; t < n; ++t) {
      a += c1[t * cs] * x1[t * xs + d0];
      b += c2[t * cs] * x2[t * xs + d0];
    }
    acc1[d0] = a, acc2[d0] = b;
  }
}

// acc[d] += c * x[d] for d < hd (one term of a weighted sum).
template <class T>
void weighted_row(T c, const T* x, int64_t hd, T* acc) {
  for (int64_t d = 0; d < hd; ++d) acc[d] += c * x[d];
}

// The largest of x[0 .. n-1] (NaNs skipped; -infinity if none), kept in
// several lanes at once: a maximum does not depend on the order it is taken
// in, except for the sign of a zero result, which no caller can see (the
// softmax subtracts it: x - (+0) and x - (-0) are the same number, or zeros
// whose exp is 1 either way). One running maximum was a chain of dependent
// compares, 4 cycles an element.
template <class T>
T row_max(const T* x, int64_t n) {
  constexpr int lanes = 16;
  T m[lanes];
  for (int l = 0; l < lanes; ++l) m[l] = -INFINITY;
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes)
    for (int l = 0; l < lanes; ++l) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
  for (int l = 0; j + l < n; ++l) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
  T mx = -INFINITY;
  for (int l = 0; l < lanes; ++l) mx = m[l] > mx ? m[l] : mx;
  return mx;
}

// Causal attention. q [M, H*hd], k and v [M, KV*hd] (query head h reads kv
// head h / (H / KV)); probs [B, H, S, S] keeps the softmax for the backward
// (upper triangle zero); out [M, H*hd]. Output row i is summed over keys j
// = 0 .. i in order; rows are taken in pairs (i, i+1) that share the keys
// 0 .. i, and row i+1 then adds key i+1.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, T* probs, T* out, const attention_shape& a) {
  const int64_t S = a.seq, hd = a.head_dim, qw = a.q_width(), kw = a.kv_width(), group = a.heads / a.kv_heads;
  const T scale = T(1) / std::sqrt(T(hd));
  parallel_for(a.batch * a.heads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> kt(size_t(hd * padded_keys(S))), spare(static_cast<size_t>(hd));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / a.heads, h = t % a.heads, kvh = h / group;
      T* P = probs + t * S * S;
      transpose_head(k + b * S * kw + kvh * hd, kw, S, hd, kt.data());
      for (int64_t i = 0; i < S; ++i) {
        const T* qi = q + (b * S + i) * qw + h * hd;
        T* p = P + i * S;
        dot_keys(qi, kt.data(), padded_keys(S), hd, i + 1, p);
        for (int64_t j = 0; j <= i; ++j) p[j] = p[j] * scale;
        const T mx = row_max(p, i + 1);
        // the exps first, then their sum in order: with the sum inside the
        // loop of libm calls it lived on the stack across every call
        for (int64_t j = 0; j <= i; ++j) p[j] = std::exp(p[j] - mx);
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += p[j];
        const T inv = T(1) / sum;
        for (int64_t j = 0; j <= i; ++j) p[j] *= inv;
        for (int64_t j = i + 1; j < S; ++j) p[j] = 0;
      }
      const T* vb = v + b * S * kw + kvh * hd;  // row j at vb + j * kw
      for (int64_t i = 0; i < S; i += 2) {
        const bool pair = i + 1 < S;
        T* o1 = out + (b * S + i) * qw + h * hd;
        T* o2 = pair ? o1 + qw : spare.data();
        for (int64_t d = 0; d < hd; ++d) o1[d] = o2[d] = 0;
        weighted_rows2(P + i * S, P + (pair ? i + 1 : i) * S, 1, vb, vb, kw, i + 1, hd, o1, o2);
        if (pair) weighted_row(P[(i + 1) * S + i + 1], vb + (i + 1) * kw, hd, o2);
      }
    }
  });
}

// Gradients of attention_forward: dq written, dk and dv written (summed over
// the query heads sharing a kv head; one task owns each (batch, kv head), so
// the sums have a fixed order). Per query head: dP = dO V^T row by row, then
// dS = P (dP - rowsum(P dP)) * scale kept in an [S, S] buffer (per thread:
// 64 KiB at the tiny default's S = 128, small beside probs); dq_i sums dS_ij
// k_j over j = 0 .. i (rows in pairs, as in the forward); dk_j and dv_j add
// dS_ij q_i and P_ij dO_i over i = j .. S-1 to what the earlier heads left,
// which is the order of the scalar loops that updated them query by query.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* probs, T* dq, T* dk, T* dv,
                        const attention_shape& a) {
  const int64_t S = a.seq, hd = a.head_dim, qw = a.q_width(), kw = a.kv_width(), group = a.heads / a.kv_heads;
  const T scale = T(1) / std::sqrt(T(hd));
  parallel_for(a.batch * a.kv_heads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> ds(size_t(S * S)), vt(size_t(hd * padded_keys(S))), spare(static_cast<size_t>(hd));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / a.kv_heads, kvh = t % a.kv_heads;
      transpose_head(v + b * S * kw + kvh * hd, kw, S, hd, vt.data());
      const T* kb = k + b * S * kw + kvh * hd;  // row j at kb + j * kw
      T* dkb = dk + b * S * kw + kvh * hd;
      T* dvb = dv + b * S * kw + kvh * hd;
      for (int64_t j = 0; j < S; ++j)
        for (int64_t d = 0; d < hd; ++d) dkb[j * kw + d] = dvb[j * kw + d] = 0;
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const T* P = probs + (b * a.heads + h) * S * S;
        const T* dob = dout + b * S * qw + h * hd;  // row i at dob + i * qw
        const T* qb = q + b * S * qw + h * hd;
        T* dqb = dq + b * S * qw + h * hd;
        for (int64_t i = 0; i < S; ++i) {
          const T* p = P + i * S;
          T* dsi = ds.data() + i * S;
          // dP_ij = dout_i . v_j
          dot_keys(dob + i * qw, vt.data(), padded_keys(S), hd, i + 1, dsi);
          T dot = 0;
          for (int64_t j = 0; j <= i; ++j) dot += p[j] * dsi[j];
          // dS_ij = p_ij (dP_ij - sum_l p_il dP_il); scores were scaled q.k
          for (int64_t j = 0; j <= i; ++j) dsi[j] = p[j] * (dsi[j] - dot) * scale;
        }
        for (int64_t i = 0; i < S; i += 2) {
          const bool pair = i + 1 < S;
          T* dq1 = dqb + i * qw;
          T* dq2 = pair ? dq1 + qw : spare.data();
          for (int64_t d = 0; d < hd; ++d) dq1[d] = dq2[d] = 0;
          const T* ds2 = ds.data() + (pair ? i + 1 : i) * S;
          weighted_rows2(ds.data() + i * S, ds2, 1, kb, kb, kw, i + 1, hd, dq1, dq2);
          if (pair) weighted_row(ds2[i + 1], kb + (i + 1) * kw, hd, dq2);
        }
        for (int64_t j = 0; j < S; ++j)
          weighted_rows2(ds.data() + j * S + j, P + j * S + j, S, qb + j * qw, dob + j * qw, qw, S - j, hd,
                         dkb + j * kw, dvb + j * kw);
      }
    }
  });
}

// SwiGLU, elementwise over n: h = silu(gate) * up with silu(g) = g s and
// s = sigmoid(g) = 1 / (1 + exp(-g)); the backward gives dgate and dup.
// Both run over blocks of elements: first every exp(-g) of the block
// through libm, one call at a time, then s and the products in a loop the
// compiler vectorizes (with the division inside the scalar loop, the
// divisions cost about as much as the exps). The same operations in the
// same order as the one-element form: the same bits.
constexpr int64_t swiglu_block = 256;

// The scaffolding both directions share: threads over n, blocks of
// swiglu_block elements, e[i] = exp(-gate[b + i]) for the block, then
// body(b, len, e) does the block's arithmetic.
template <class T, class Body>
void for_swiglu_blocks(const T* gate, int64_t n, Body body) {
  parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
    T e[swiglu_block];
    for (int64_t b = i0; b < i1; b += swiglu_block) {
      const int64_t len = std::min(swiglu_block, i1 - b);
      const T* g = gate + b;
      for (int64_t i = 0; i < len; ++i) e[i] = std::exp(-g[i]);
      body(b, len, static_cast<const T*>(e));
    }
  });
}

template <class T>
void swiglu_forward(const T* gate, const T* up, T* h, int64_t n) {
  for_swiglu_blocks(gate, n, [&](int64_t b, int64_t len, const T* e) {
    const T* g = gate + b;
    const T* u = up + b;
    T* out = h + b;
    for (int64_t i = 0; i < len; ++i) out[i] = g[i] * (T(1) / (T(1) + e[i])) * u[i];
  });
}

template <class T>
void swiglu_backward(const T* dh, const T* gate, const T* up, T* dgate, T* dup, int64_t n) {
  for_swiglu_blocks(gate, n, [&](int64_t b, int64_t len, const T* e) {
    const T* dhb = dh + b;
    const T* g = gate + b;
    const T* u = up + b;
    T* dg = dgate + b;
    T* du = dup + b;
    for (int64_t i = 0; i < len; ++i) {
      const T s = T(1) / (T(1) + e[i]), silu = g[i] * s;
      du[i] = dhb[i] * silu;
      dg[i] = dhb[i] * u[i] * (s * (T(1) + g[i] * (T(1) - s)));
    }
  });
}

// Mean next-token cross-entropy over M rows of logits [M, V]; targets[m] is
// the token row m should predict. Replaces logits by dloss/dlogits when
// `grad` is set. The loss is summed in double in row order.
template <class T>
double cross_entropy(T* logits, const int32_t* targets, int64_t M, int64_t V, bool grad) {
  std::vector<double> row_loss(static_cast<size_t>(M));
  parallel_for(M, row_grain(V), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      T* l = logits + m * V;
      T mx = l[0];
      for (int64_t j = 1; j < V; ++j) mx = l[j] > mx ? l[j] : mx;
      T sum = 0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(l[j] - mx);
      const T lse = mx + std::log(sum);
      row_loss[size_t(m)] = double(lse - l[targets[m]]);
      if (grad) {
        const T inv_m = T(1) / T(M);
        for (int64_t j = 0; j < V; ++j) l[j] = std::exp(l[j] - lse) * inv_m;
        l[targets[m]] -= inv_m;
      }
    }
  });
  double total = 0;
  for (double r : row_loss) total += r;
  return M ? total / double(M) : 0.0;
}

}  // namespace ops
}  // namespace llama
