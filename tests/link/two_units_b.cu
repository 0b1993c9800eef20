// The second unit of the two-unit link check (see two_units_a.cu), with the
// program's main: instantiates the same library code as the first unit.
#include <lowbit/lowbit.cuh>

#include <cstdio>

int unit_a_formats();

int main() {
  const int a = unit_a_formats();
  const int b = lowbit::cuda::gemm_detail::decode_smem_bytes(lowbit::cuda::gemm_detail::decode_kind::table8) > 0;
  std::printf("two translation units including lowbit.cuh linked into one program\n");
  return a == 1 && b == 1 ? 0 : 1;
}
