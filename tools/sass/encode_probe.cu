// tools/sass/encode_probe.cu: the re-encoding of 8 values onto a sorted
// codebook (bucketed floor search, optional snap, nearest or stochastic
// choice, code lookup) alone in a kernel, so that its static SASS can be
// counted (scripts/sass-counts.sh). Two formulations of the same choice:
//   -DELEMENT_ENCODE  the CUDA step's (cuda_detail::encode_codes8, made of
//                    optim/element_encode.hpp's functions);
//   otherwise        the CPU step's functions called per element (the CUDA
//                    step's formulation until 2026-11-28).
//   -DBASELINE        neither: the kernel's loads and stores alone.
// ENCODE_STOCHASTIC and ENCODE_SNAP (true / false) pick the variant. The
// tables are copied from global memory so that nothing is folded away.
#include <lowbit/lowbit.cuh>

namespace cd = lowbit::optim::cuda_detail;
namespace lo = lowbit::optim;

__global__ void probe_kernel(const float* in_u, const uint32_t* in_bits, uint8_t* out, const int* tables) {
  __shared__ cd::shared_tables t;
  for (int i = threadIdx.x; i < int(sizeof(t) / 4); i += blockDim.x) reinterpret_cast<int*>(&t)[i] = tables[i];
  __syncthreads();
  float u[8];
  uint32_t bits[8];
  uint8_t c[8];
  for (int k = 0; k < 8; ++k) u[k] = in_u[threadIdx.x * 8 + k], bits[k] = in_bits[threadIdx.x * 8 + k];
  const int which = 1;
#if defined(BASELINE)
  for (int k = 0; k < 8; ++k) c[k] = uint8_t(bits[k] + uint32_t(u[k]));
#elif defined(ELEMENT_ENCODE)
  cd::encode_codes8<ENCODE_STOCHASTIC, ENCODE_SNAP>(t, which, u, bits, c);
#else
  const float* sorted = t.sorted[which];
  const int size = t.size[which];
  int lo_[8];
  for (int k = 0; k < 8; ++k) lo_[k] = t.bucket[which][lowbit::cpu::floor_bucket(u[k])];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 8; ++k) lo_[k] = lowbit::cpu::floor_refine_step(lo_[k], u[k], sorted, size);
  if (ENCODE_SNAP)
    for (int k = 0; k < 8; ++k) lo_[k] = lo::snap_onto_grid(u[k], lo_[k], sorted, size);
  for (int k = 0; k < 8; ++k)
    c[k] = ENCODE_STOCHASTIC ? lowbit::stochastic_from_floor(u[k], lo_[k], bits[k], sorted, t.code[which], size)
                             : lowbit::nearest_from_floor(u[k], lo_[k], sorted, t.code[which], size);
#endif
  for (int k = 0; k < 8; ++k) out[threadIdx.x * 8 + k] = c[k];
}
