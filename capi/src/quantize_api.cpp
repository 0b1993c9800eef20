// capi/src/quantize_api.cpp
// The C entry points for quantized tensors: sizes of a layout, quantize,
// dequantize, and the dequant-GEMM products (forward and input gradient).
// Each runs where its first tensor lives: lowbit's CPU functions
// (lowbit::cpu::quantize, dequantize, dequant_gemm_forward,
// dequant_gemm_backward_input) for host memory, their CUDA twins
// (cuda_calls.cu, on the thread's stream) for device memory in CUDA builds.
#include "c_api_support.hpp"
#include "cuda_calls.hpp"

using namespace lowbit_capi;

extern "C" {

int lowbit_c_abi_version(void) { return LOWBIT_C_ABI_VERSION; }

const char* lowbit_c_last_error(void) { return last_error().c_str(); }

int lowbit_c_has_cuda(void) { return built_with_cuda() ? 1 : 0; }

int lowbit_c_set_stream(void* stream) {
  current_stream() = stream;
  return LOWBIT_C_OK;
}

void* lowbit_c_get_stream(void) { return current_stream(); }

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
    const std::string fn = "quantize: ";
    const side s = side_of(any_view(input, fn + "input"), fn + "input");
    const lowbit::tensor_view x = view_on(s, input, fn + "input");
    const lowbit::quantized_view q = quantized_view_of(s, out, fn + "out");
    if (s == side::cuda) {
      cuda_calls::quantize(x, q, current_stream());
    } else {
      lowbit::cpu::quantize(x, q);
    }
  });
}

int lowbit_c_dequantize(const lowbit_c_quantized* in, const DLTensor* output) {
  return guarded([&] {
    const std::string fn = "dequantize: ";
    const side s = side_of(in, fn + "in");
    const lowbit::quantized_view q = quantized_view_of(s, in, fn + "in");
    const lowbit::tensor_view y = view_on(s, output, fn + "output");
    if (s == side::cuda) {
      cuda_calls::dequantize(q, y, current_stream());
    } else {
      lowbit::cpu::dequantize(q, y);
    }
  });
}

int lowbit_c_dequant_gemm_forward(const DLTensor* x, const lowbit_c_quantized* w, int64_t n, int64_t k,
                                  const DLTensor* bias, const DLTensor* y) {
  return guarded([&] {
    const std::string fn = "dequant_gemm_forward: ";
    const side s = side_of(any_view(x, fn + "x"), fn + "x");
    const lowbit::tensor_view xv = view_on(s, x, fn + "x");
    const lowbit::quantized_view wv = quantized_view_of(s, w, fn + "w");
    const lowbit::tensor_view yv = view_on(s, y, fn + "y");
    lowbit::tensor_view bv;
    if (bias) bv = view_on(s, bias, fn + "bias");
    if (s == side::cuda) {
      cuda_calls::dequant_gemm_forward(xv, wv, n, k, bias ? &bv : nullptr, yv, current_stream());
    } else {
      lowbit::cpu::dequant_gemm_forward(xv, wv, n, k, bias ? &bv : nullptr, yv);
    }
  });
}

int lowbit_c_dequant_gemm_backward_input(const DLTensor* dy, const lowbit_c_quantized* w, int64_t n, int64_t k,
                                         const DLTensor* dx) {
  return guarded([&] {
    const std::string fn = "dequant_gemm_backward_input: ";
    const side s = side_of(any_view(dy, fn + "dy"), fn + "dy");
    const lowbit::tensor_view dyv = view_on(s, dy, fn + "dy");
    const lowbit::quantized_view wv = quantized_view_of(s, w, fn + "w");
    const lowbit::tensor_view dxv = view_on(s, dx, fn + "dx");
    if (s == side::cuda) {
      cuda_calls::dequant_gemm_backward_input(dyv, wv, n, k, dxv, current_stream());
    } else {
      lowbit::cpu::dequant_gemm_backward_input(dyv, wv, n, k, dxv);
    }
  });
}

}  // extern "C"
