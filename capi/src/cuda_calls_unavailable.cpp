// capi/src/cuda_calls_unavailable.cpp
// cuda_calls.hpp for builds without nvcc: every GPU call fails with
// errc::unsupported. The entry points never reach them (side_of() refuses
// CUDA tensors first in such builds); they exist so that one code path
// compiles either way.
#include "cuda_calls.hpp"

namespace lowbit_capi {
namespace cuda_calls {

namespace {
[[noreturn]] void unavailable() {
  throw lowbit::error(lowbit::errc::unsupported, "this build of liblowbit_c has no CUDA support");
}
}  // namespace

void quantize(const lowbit::tensor_view&, const lowbit::quantized_view&, void*) { unavailable(); }
void dequantize(const lowbit::quantized_view&, const lowbit::tensor_view&, void*) { unavailable(); }
void dequant_gemm_forward(const lowbit::tensor_view&, const lowbit::quantized_view&, int64_t, int64_t,
                          const lowbit::tensor_view*, const lowbit::tensor_view&, void*) {
  unavailable();
}
void dequant_gemm_backward_input(const lowbit::tensor_view&, const lowbit::quantized_view&, int64_t, int64_t,
                                 const lowbit::tensor_view&, void*) {
  unavailable();
}

}  // namespace cuda_calls
}  // namespace lowbit_capi
