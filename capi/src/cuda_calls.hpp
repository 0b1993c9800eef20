// capi/src/cuda_calls.hpp
// The GPU side of liblowbit_c's functional calls, declared without CUDA
// types so that the C++ translation units can call them; defined in
// cuda_calls.cu, which only CUDA builds compile (LOWBIT_C_WITH_CUDA). The
// stream is the calling thread's (lowbit_c_set_stream), as a void*.
#pragma once

#include <lowbit/lowbit.hpp>

namespace lowbit_capi {
namespace cuda_calls {

void quantize(const lowbit::tensor_view& input, const lowbit::quantized_view& out, void* stream);
void dequantize(const lowbit::quantized_view& in, const lowbit::tensor_view& output, void* stream);
void dequant_gemm_forward(const lowbit::tensor_view& x, const lowbit::quantized_view& w, int64_t n, int64_t k,
                          const lowbit::tensor_view* bias, const lowbit::tensor_view& y, void* stream);
void dequant_gemm_backward_input(const lowbit::tensor_view& dy, const lowbit::quantized_view& w, int64_t n,
                                 int64_t k, const lowbit::tensor_view& dx, void* stream);

}  // namespace cuda_calls
}  // namespace lowbit_capi
