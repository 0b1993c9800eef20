// capi/src/optimizers_device_adamw.cu
// The adamw compositions of liblowbit_c that step on the GPU (memory::device:
// states in device memory, lowbit's fused CUDA step), the same set as the
// host's (optimizers_adamw.cpp). CUDA builds only.
#include <lowbit/optim/cuda_memory.cuh>

#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_device_adamw_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::adamw, lowbit::optim::memory::device>(t, "adamw", "device");
  add_quantized_compositions<lowbit::optim::adamw, lowbit::optim::memory::device>(t, "adamw", "device");
}

}  // namespace lowbit_capi
