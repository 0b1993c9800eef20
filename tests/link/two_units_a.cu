// One of two translation units of one program that both include every
// public header (lowbit.cuh: the CPU and CUDA parts): the program must link.
// A header-only library must define every function inline and every kernel
// as a template (or inline-like), or the second unit's copy collides with
// the first at link time; tests/CMakeLists.txt builds and runs this program.
#include <lowbit/lowbit.cuh>

// Uses a few kernels, so their instantiations exist in this unit too.
int unit_a_formats() {
  return lowbit::cuda::gemm_detail::decode_smem_bytes(lowbit::cuda::gemm_detail::decode_kind::table4) > 0 ? 1 : 0;
}
