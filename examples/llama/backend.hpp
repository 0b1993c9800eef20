// examples/llama/backend.hpp
// Where a run executes: make_session builds the CPU training_session, or,
// in a build with CUDA (LLAMA_HAVE_CUDA), the CUDA session of
// cuda/session.cuh, which lives in its own translation unit
// (cuda/cuda_backend.cu) so that the command line and the CPU code compile
// with the host compiler alone. device "auto" picks CUDA when the build has
// it and a GPU is present.
#pragma once

#include <memory>
#include <string>

#include <lowbit/core/error.hpp>

#include "config.hpp"
#include "modes.hpp"
#include "session.hpp"

namespace llama {

#ifdef LLAMA_HAVE_CUDA
// Defined in cuda/cuda_backend.cu.
bool cuda_device_present(std::string* why_not);
std::unique_ptr<session_base> make_cuda_session(const llama_config& cfg, const mode_info& mode,
                                                const session_options& o, const std::string& activations);
#endif

inline bool cuda_built() {
#ifdef LLAMA_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

// device: "auto", "cpu" or "cuda"; activations (CUDA): "auto", "bf16" or "f32".
inline std::unique_ptr<session_base> make_session(const llama_config& cfg, const mode_info& mode,
                                                  const session_options& o, const std::string& device,
                                                  const std::string& activations = "auto") {
  lowbit::require(device == "auto" || device == "cpu" || device == "cuda", lowbit::errc::invalid_argument,
                  "--device must be auto, cpu or cuda, got '" + device + "'");
#ifdef LLAMA_HAVE_CUDA
  std::string why;
  const bool gpu = cuda_device_present(&why);
  if (device == "cuda" || (device == "auto" && (gpu || mode.gpu_only))) {
    lowbit::require(gpu, lowbit::errc::unsupported,
                    (device == "cuda" ? std::string("--device cuda") : "mode '" + mode.name + "'") +
                        " needs a CUDA GPU: " + why);
    return make_cuda_session(cfg, mode, o, activations);
  }
#else
  lowbit::require(device != "cuda", lowbit::errc::unsupported,
                  "--device cuda: this llama_train was built without CUDA (nvcc was not found at configure time)");
#endif
  lowbit::require(activations == "auto", lowbit::errc::invalid_argument,
                  "--gpu-activations applies to the CUDA path only");
  return std::make_unique<training_session>(cfg, mode, o);
}

}  // namespace llama
