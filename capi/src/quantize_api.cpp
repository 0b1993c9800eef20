// capi/src/quantize_api.cpp
// The C entry points for quantized tensors: sizes of a layout, quantize,
// dequantize, and the dequant-GEMM products (forward and input gradient),
// each a checked call into lowbit's CPU functions (lowbit::cpu::quantize,
// dequantize, dequant_gemm_forward, dequant_gemm_backward_input).
#include "c_api_support.hpp"

using namespace lowbit_capi;

extern "C" {

int lowbit_c_abi_version(void) { return LOWBIT_C_ABI_VERSION; }

const char* lowbit_c_last_error(void) { return last_error().c_str(); }

int lowbit_c_quantized_sizes(const char* format, int64_t numel, int32_t block_size, int32_t nested,
                             lowbit_c_quantized_sizes_t* sizes) {
  return guarded([&] {
    require_pointer(sizes, "lowbit_c_quantized_sizes: sizes");
    const lowbit::blockwise_layout l = layout_of(format, numel, block_size, nested, "lowbit_c_quantized_sizes");
    sizes->code_bytes = l.code_bytes();
    sizes->n_blocks = l.n_blocks();
    sizes->n_nested_blocks = l.n_nested_blocks();
    sizes->total_bytes = l.total_bytes();
  });
}

int lowbit_c_quantize(const DLTensor* input, const lowbit_c_quantized* out) {
  return guarded([&] {
    const lowbit::tensor_view x = host_view(input, "quantize: input");
    const lowbit::quantized_view q = quantized_view_of(out, "quantize: out");
    lowbit::cpu::quantize(x, q);
  });
}

int lowbit_c_dequantize(const lowbit_c_quantized* in, const DLTensor* output) {
  return guarded([&] {
    const lowbit::quantized_view q = quantized_view_of(in, "dequantize: in");
    const lowbit::tensor_view y = host_view(output, "dequantize: output");
    lowbit::cpu::dequantize(q, y);
  });
}

int lowbit_c_dequant_gemm_forward(const DLTensor* x, const lowbit_c_quantized* w, int64_t n, int64_t k,
                                  const DLTensor* bias, const DLTensor* y) {
  return guarded([&] {
    const lowbit::quantized_view wv = quantized_view_of(w, "dequant_gemm_forward: w");
    const lowbit::tensor_view xv = host_view(x, "dequant_gemm_forward: x");
    const lowbit::tensor_view yv = host_view(y, "dequant_gemm_forward: y");
    lowbit::tensor_view bv;
    if (bias) bv = host_view(bias, "dequant_gemm_forward: bias");
    lowbit::cpu::dequant_gemm_forward(xv, wv, n, k, bias ? &bv : nullptr, yv);
  });
}

int lowbit_c_dequant_gemm_backward_input(const DLTensor* dy, const lowbit_c_quantized* w, int64_t n, int64_t k,
                                         const DLTensor* dx) {
  return guarded([&] {
    const lowbit::quantized_view wv = quantized_view_of(w, "dequant_gemm_backward_input: w");
    const lowbit::tensor_view dyv = host_view(dy, "dequant_gemm_backward_input: dy");
    const lowbit::tensor_view dxv = host_view(dx, "dequant_gemm_backward_input: dx");
    lowbit::cpu::dequant_gemm_backward_input(dyv, wv, n, k, dxv);
  });
}

}  // extern "C"
