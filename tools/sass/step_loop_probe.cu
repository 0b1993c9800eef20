// tools/sass/step_loop_probe.cu: the fused optimizer step's Full-span loop
// (cuda_detail::step8 over a grid-stride loop) for one storage shape, with
// the run-time flags of a training step assumed (__builtin_assume), so that
// the loop body's static SASS can be counted (scripts/sass-counts.sh). Rule
// RULE (default Lion); weights WSHAPE (default int8 blocks of 256, the QFT
// step) with stochastic rounding WSTOCH and stable scales KEEP; int8 first
// state, second state S2SHAPE (default none), with stochastic rounding
// SSTOCH. The count is static: nvcc does not fold every assumption,
// so the body still holds paths a step does not take (the binary-search
// fallback, nearest rounding); it is a size to compare builds by, not a
// time. The preamble fills the shared tables as the kernel does, but
// without their padding (irrelevant to the count).
#include <lowbit/lowbit.cuh>
namespace lo = lowbit::optim;
namespace cd = lowbit::optim::cuda_detail;
#ifndef WSHAPE
#define WSHAPE cd::storage_shape::b8_256
#endif
#ifndef WSTOCH
#define WSTOCH true
#endif
#ifndef SSTOCH
#define SSTOCH true
#endif
#ifndef KEEP
#define KEEP true
#endif
#ifndef RULE
#define RULE lo::lion
#endif
#ifndef S2SHAPE
#define S2SHAPE cd::storage_shape::none
#endif
__global__ void __launch_bounds__(512, 2) probe_kernel(const __grid_constant__ lo::fused_step_args a,
    const __grid_constant__ RULE::consts c, const __grid_constant__ cd::step_tables tp, float* weight_absmax, int* renest_flag) {
  __shared__ cd::shared_tables t;
  __shared__ float warp_max[32];
  __builtin_assume(a.weight_stochastic == WSTOCH);
  __builtin_assume(a.state_stochastic == SSTOCH);
  __builtin_assume(a.grad_type == lowbit::dtype::bf16);
  __builtin_assume(a.weight_copy.kind == lo::storage_kind::none);
  __builtin_assume(!(a.max_update > 0.0f));
  for (int s = 0; s < 3; ++s) {
    const lowbit::optim::format_tables& src = s == 0 ? tp.weight : (s == 1 ? tp.state1 : tp.state2);
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      t.decode[s][i] = src.decode.value[i]; t.sorted[s][i] = src.sorted.value[i]; t.code[s][i] = src.sorted.code[i];
    }
    for (int i = threadIdx.x; i < cd::n_buckets; i += blockDim.x) t.bucket[s][i] = tp.bucket[s][i];
    if (threadIdx.x == 0) t.size[s] = src.sorted.size;
  }
  for (int i = threadIdx.x; i < 256; i += blockDim.x) t.nested_map[i] = tp.nested_map.value[i];
  __syncthreads();
  const int64_t n = a.weight.n;
  const lowbit::rng_stream rw = a.stream(lowbit::rng_purpose::weight), r1 = a.stream(lowbit::rng_purpose::state1),
                   r2 = a.stream(lowbit::rng_purpose::state2);
  const cd::storage_traits tw = cd::traits_of<WSHAPE>(a.weight), t1 = cd::traits_of<cd::storage_shape::b8_256>(a.state1),
     t2 = cd::traits_of<S2SHAPE>(a.state2);
  const cd::storage_traits tg{lo::storage_kind::bf16, false, false, 1};
  const bool keep = KEEP;
  const int64_t span = int64_t(blockDim.x) * 8;
  const cd::step_context<RULE> ctx{a, c, t, warp_max, tw, t1, t2, tg, rw, r1, r2, keep, weight_absmax, renest_flag};
  for (int64_t base = int64_t(blockIdx.x) * span; base < n; base += int64_t(gridDim.x) * span) {
    const int64_t idx = base + int64_t(threadIdx.x) * 8;
    cd::step8<true>(ctx, idx, n, true);
  }
}
