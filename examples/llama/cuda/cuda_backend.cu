// examples/llama/cuda/cuda_backend.cu
// The CUDA trainer's one translation unit: the factory behind backend.hpp's
// make_cuda_session, which picks the activation type (float32 for float32
// weights, bfloat16 for bfloat16 weights, either for quantized ones) and
// instantiates cuda_session for it.
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "../backend.hpp"
#include "session.cuh"

namespace llama {

bool cuda_device_present(std::string* why_not) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why_not)
      *why_not = e != cudaSuccess ? std::string("no usable CUDA device (") + cudaGetErrorString(e) + ")"
                                  : std::string("no CUDA device found");
    cudaGetLastError();  // clear the sticky error of a failed query
    return false;
  }
  return true;
}

std::unique_ptr<session_base> make_cuda_session(const llama_config& cfg, const mode_info& mode,
                                                const session_options& o, const std::string& activations) {
  lowbit::require(activations == "auto" || activations == "bf16" || activations == "f32",
                  lowbit::errc::invalid_argument, "--gpu-activations must be auto, bf16 or f32, got '" + activations + "'");
  bool f32 = false;
  switch (mode.storage) {
    case matrix_storage::f32:
      lowbit::require(activations != "bf16", lowbit::errc::unsupported,
                      "mode '" + mode.name + "' keeps float32 weights: its GEMMs take float32 activations");
      f32 = true;
      break;
    case matrix_storage::bf16:
      lowbit::require(activations != "f32", lowbit::errc::unsupported,
                      "mode '" + mode.name + "' keeps bfloat16 weights: its GEMMs take bfloat16 activations");
      break;
    case matrix_storage::quantized: f32 = activations == "f32"; break;
    case matrix_storage::f64:
      throw lowbit::error(lowbit::errc::unsupported, "float64 weights have no CUDA path");
  }
  if (f32) return std::make_unique<gpu::cuda_session<float>>(cfg, mode, o);
  return std::make_unique<gpu::cuda_session<lowbit::bf16>>(cfg, mode, o);
}

}  // namespace llama
