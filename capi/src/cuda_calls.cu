// capi/src/cuda_calls.cu
// The GPU side of liblowbit_c's functional calls (cuda_calls.hpp): lowbit's
// CUDA quantize, dequantize and dequant-GEMM on the caller's stream. The
// calls are asynchronous like the library's, except quantize, which waits
// for its finiteness check (lowbit::cuda::quantize with check_finite) so
// that non-finite input is reported by the call that received it.
#include <lowbit/lowbit.cuh>

#include "cuda_calls.hpp"

namespace lowbit_capi {
namespace cuda_calls {

namespace {
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

void quantize(const lowbit::tensor_view& input, const lowbit::quantized_view& out, void* stream) {
  lowbit::cuda::quantize(input, out, as_stream(stream));
}

void dequantize(const lowbit::quantized_view& in, const lowbit::tensor_view& output, void* stream) {
  lowbit::cuda::dequantize(in, output, as_stream(stream));
}

void dequant_gemm_forward(const lowbit::tensor_view& x, const lowbit::quantized_view& w, int64_t n, int64_t k,
                          const lowbit::tensor_view* bias, const lowbit::tensor_view& y, void* stream) {
  lowbit::cuda::dequant_gemm_forward(x, w, n, k, bias, y, as_stream(stream));
}

void dequant_gemm_backward_input(const lowbit::tensor_view& dy, const lowbit::quantized_view& w, int64_t n,
                                 int64_t k, const lowbit::tensor_view& dx, void* stream) {
  lowbit::cuda::dequant_gemm_backward_input(dy, w, n, k, dx, as_stream(stream));
}

}  // namespace cuda_calls
}  // namespace lowbit_capi
