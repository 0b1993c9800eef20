// lowbit/cpu/blocked_gemm.hpp
// The cache-blocked fp32 matrix product under every CPU product of the
// library (cpu/dequant_gemm.hpp, cpu/gemm.hpp): C[M, P] = A[M, R] B[R, P],
// with A and B given either as float matrices read where they lie or as
// callables that pack tiles on demand (how a quantized W is decoded tile by
// tile without ever being dequantized whole), and C handed tile by tile to
// a store callable (rounding into the output's dtype, adding a bias,
// accumulating). Work is cut into (column tile, row tile) tasks spread over
// cpu::parallel_for; the innermost loop is cpu/gemm_micro_kernel.hpp. Each
// output is one fp32 sum over r = 0, 1, ..., R-1 in order, whatever the
// tiles, the operand forms or the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "gemm_micro_kernel.hpp"
#include "parallel.hpp"

namespace lowbit {
namespace cpu {
namespace gemm_detail {

// Output columns per task: a B tile of pc x rc floats (128 KiB) stays in
// L2, and each micro-tile of A, once in L1, meets pc / nr panels. 128
// rather than 64 columns: the trainer's 2048-row products up to 1.25x
// faster on 2 threads (each task reads its rows of A half as often), the
// input gradient at M = 1 1.2 to 1.3x, the rest level; but called from
// PyTorch between torch operations, lowbit's int8 layers trained about 3 %
// slower (cause open; docs/PERFORMANCE.md, 2026-11-29, "wider column
// tiles").
constexpr int64_t pc = 128;
constexpr int64_t rc = 256;  // reduction chunk: one packed panel (rc x nr floats) stays in L1

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The A operand of blocked_gemm, in one of three forms:
// - dense_a: a float matrix in memory, row-major with row stride ld; the
//   micro-kernel reads it where it lies (the forward's X, dY for dX).
// - columns_a: A given transposed, element (i, r) at data[r * ld + i]; the
//   micro-kernel reads it where it lies, MR consecutive floats per step
//   (gemm_weight_grad's A = dY^T is dY itself, read this way: no copy).
// - a packing callable pack_a(m0, rows, out) that writes rows m0 .. m0+rows-1
//   of A as one block, out[r * rows + i] = A[m0 + i][r] for r = 0 .. R-1
//   (blocked_gemm asks for blocks of MR rows and a last, shorter one). The
//   whole of A is packed once, in parallel, before the products, and then
//   read as columns (lda = the block's height).
struct dense_a {
  const float* data;
  int64_t ld;
};
struct columns_a {
  const float* data;
  int64_t ld;
};

// The B operand of blocked_gemm, in one of two forms:
// - a packing callable pack_b(r0, rlen, p0, plen, buf) that writes
//   B[r0:r0+rlen, p0:p0+plen] as ceil(plen/nr) panels of [rlen][nr] floats
//   (panel-major, columns past plen zero); each task packs its own tiles,
//   so B is never materialized (W, decoded tile by tile).
// - dense_b: a float matrix in memory, row-major with row stride ld, whose
//   whole panels of nr columns the micro-kernel reads where they lie; only
//   a last, partial panel is copied (zero-padded). gemm_weight_grad's B = X
//   was packed by every task before: up to 4 copies of X per call, 8 % of
//   a training step of the tiny LLaMA on the Intel Xeon VM.
struct dense_b {
  const float* data;
  int64_t ld;
};

// Operands read in place (columns_a, dense_b) step from row to row of their
// matrix, ld floats apart; up to this stride that is cheaper than copying.
// Beyond it the rows of a panel fall into few cache sets (a stride of 4096
// floats maps them all to the same L1 sets), and the 2048 x 4096 x 4096
// weight gradient took 1.8x as long read in place as packed (Intel Xeon VM,
// docs/PERFORMANCE.md, 2026-11-29).
constexpr int64_t in_place_max_ld = 512;

// C[M, P] = A[M, R] B[R, P] in fp32, A and B as above. store(m0, mlen, p0,
// plen, c, ldc) receives finished outputs, rows m0 .. m0+mlen-1 times
// columns p0 .. p0+plen-1 (c row stride ldc), one micro-tile (or one panel
// of nr columns of it) at a time while they are still in L1. Tasks are (column tile, row tile) pairs; row tiles exist only when
// there are too few column tiles to occupy the threads (small N or N = K
// tiny), at the price of packing a B tile once per row tile. MR (default
// mr, the target's micro-tile height) is a parameter so that tests can run
// every tile height on any machine: results do not depend on it.
template <int MR = mr, class ASource, class BSource, class Store>
void blocked_gemm(int64_t M, int64_t P, int64_t R, const ASource& a_source, const BSource& b_source, Store&& store) {
  if (M <= 0 || P <= 0) return;
  constexpr bool a_rows = std::is_same<ASource, dense_a>::value;
  constexpr bool a_in_place = a_rows || std::is_same<ASource, columns_a>::value;
  constexpr bool b_in_place = std::is_same<BSource, dense_b>::value;
  const float* a_data = nullptr;
  int64_t lda = 0;
  std::unique_ptr<float[]> a_packed;  // uninitialized: pack_a writes all of it
  if constexpr (a_in_place) {
    a_data = a_source.data;
    lda = a_source.ld;
  } else {
    // Block b (rows b*MR ..) starts at float b*MR*R: every block before it
    // is full. Packing is a copy: threads pay off from 2^18 floats each.
    a_packed.reset(new float[size_t(M * R)]);
    float* out = a_packed.get();
    parallel_for(ceil_div(M, MR), std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, MR * R)),
                 [&](int64_t b0, int64_t b1) {
                   for (int64_t b = b0; b < b1; ++b) {
                     const int64_t m0 = b * MR;
                     a_source(m0, std::min<int64_t>(MR, M - m0), out + m0 * R);
                   }
                 });
    a_data = a_packed.get();
  }
  const int64_t p_tiles = ceil_div(P, pc);
  const int64_t threads = thread_count();
  int64_t m_tiles = 1;
  if (p_tiles < 2 * threads) m_tiles = std::max<int64_t>(1, std::min(ceil_div(M, 32), ceil_div(2 * threads, p_tiles)));
  const int64_t m_step = ceil_div(ceil_div(M, m_tiles), MR) * MR;
  m_tiles = ceil_div(M, m_step);
  const int64_t tasks = p_tiles * m_tiles;
  // Handing chunks to the pool's workers costs microseconds (a sleeping
  // worker's wake-up more); tiny products run inline.
  const int64_t grain = (M * P * std::max<int64_t>(R, 1) < (int64_t(1) << 18)) ? tasks : 1;
  parallel_for(tasks, grain, [&](int64_t t0, int64_t t1) {
    // what the kernels read of B when it is not read in place: a whole
    // packed tile, or (dense_b) the last, partial panel
    const std::unique_ptr<float[]> bbuf(new float[size_t(b_in_place ? nr * rc : pc * rc)]);
    // outputs in progress: with one reduction chunk a single micro-tile
    // (L1), else the task's whole tile, carried from chunk to chunk
    const bool one_chunk = R <= rc;
    const std::unique_ptr<float[]> cbuf(new float[size_t(one_chunk ? MR * nr : m_step * pc)]);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = (t / m_tiles) * pc, plen = std::min(pc, P - p0);
      const int64_t m0 = (t % m_tiles) * m_step, mlen = std::min(m_step, M - m0);
      const int64_t panels = ceil_div(plen, nr), ldc = panels * nr;
      // The first reduction chunk writes every element (load = false), so
      // only R == 0 needs zeros (a memset of up to M x pc floats per task).
      if (R == 0) {
        const std::vector<float> zeros(size_t(mlen * ldc), 0.0f);
        store(m0, mlen, p0, plen, zeros.data(), ldc);
        continue;
      }
      for (int64_t r0 = 0; r0 < R; r0 += rc) {
        const int64_t rlen = std::min(rc, R - r0);
        const bool last_chunk = r0 + rlen == R;
        // panel jp of this tile: its first row and its row stride
        const float* b_first = nullptr;
        int64_t b_panel_step = 0, ldb = nr;
        const float* b_tail = nullptr;  // a partial last panel, packed
        if constexpr (b_in_place) {
          b_first = b_source.data + r0 * b_source.ld + p0;
          b_panel_step = nr;
          ldb = b_source.ld;
          const int64_t width = plen - (panels - 1) * nr;
          if (width < nr) {
            float* tail = bbuf.get();
            const float* src = b_first + (panels - 1) * nr;
            for (int64_t r = 0; r < rlen; ++r) {
              for (int64_t j = 0; j < width; ++j) tail[r * nr + j] = src[r * ldb + j];
              for (int64_t j = width; j < nr; ++j) tail[r * nr + j] = 0.0f;
            }
            b_tail = tail;
          }
        } else {
          b_source(r0, rlen, p0, plen, bbuf.get());
          b_first = bbuf.get();
          b_panel_step = rlen * nr;
        }
        // micro-tile (m, jp): rows m.. of the task times panel jp, into c
        auto micro_tile = [&](int64_t m, int64_t jp, float* c, int64_t ldc_c) {
          const int rows = int(std::min<int64_t>(MR, mlen - m));
          const float* a = nullptr;
          int64_t a_step = lda;
          if constexpr (a_rows) {
            a = a_data + (m0 + m) * lda + r0;
          } else if constexpr (a_in_place) {
            a = a_data + r0 * lda + (m0 + m);
          } else {
            a = a_data + (m0 + m) * R + r0 * rows;
            a_step = rows;
          }
          const bool tail = b_tail && jp == panels - 1;
          micro_dispatch<MR, !a_rows>(rows, a, a_step, tail ? b_tail : b_first + jp * b_panel_step, tail ? nr : ldb,
                                      rlen, c, ldc_c, r0 > 0);
          return rows;
        };
        if (one_chunk) {
          // One panel of B (rlen x nr floats, at most 32 KiB) stays in L1
          // while the micro-tiles of A stream past it from L2, and each
          // finished micro-tile is stored at once from a buffer that stays
          // in L1: 1.15 to 1.27x over the order below on the trainer's
          // one-chunk products (Intel Xeon VM, docs/PERFORMANCE.md,
          // 2026-11-29 "one B panel in L1").
          for (int64_t jp = 0; jp < panels; ++jp) {
            const int64_t cols = std::min<int64_t>(nr, plen - jp * nr);
            for (int64_t m = 0; m < mlen; m += MR) {
              const int rows = micro_tile(m, jp, cbuf.get(), nr);
              store(m0 + m, rows, p0 + jp * nr, cols, static_cast<const float*>(cbuf.get()), nr);
            }
          }
        } else {
          // Several chunks: the MR x rlen slice of A stays in L1 while it
          // meets every panel (measured faster here than the order above,
          // which would read each slice of A from L2 once per panel), and
          // the task's outputs are carried in cbuf from chunk to chunk.
          for (int64_t m = 0; m < mlen; m += MR) {
            float* c = cbuf.get() + m * ldc;
            int rows = 0;
            for (int64_t jp = 0; jp < panels; ++jp) rows = micro_tile(m, jp, c + jp * nr, ldc);
            if (last_chunk) store(m0 + m, rows, p0, plen, static_cast<const float*>(c), ldc);
          }
        }
      }
    }
  });
}

// Zeroes the columns plen.. of the last panel so padded lanes add exact 0.
inline void zero_pad(float* buf, int64_t rlen, int64_t plen) {
  const int64_t panels = ceil_div(plen, nr);
  const int64_t used = plen - (panels - 1) * nr;
  if (used == nr) return;
  float* last = buf + (panels - 1) * rlen * nr;
  for (int64_t r = 0; r < rlen; ++r)
    for (int64_t j = used; j < nr; ++j) last[r * nr + j] = 0.0f;
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace lowbit
