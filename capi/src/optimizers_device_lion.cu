// capi/src/optimizers_device_lion.cu
// The lion compositions of liblowbit_c that step on the GPU (memory::device:
// states in device memory, lowbit's fused CUDA step), the same set as the
// host's (optimizers_lion.cpp). CUDA builds only.
#include <lowbit/optim/cuda_memory.cuh>

#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_device_lion_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::lion, lowbit::optim::memory::device>(t, "lion", "device");
  add_quantized_compositions<lowbit::optim::lion, lowbit::optim::memory::device>(t, "lion", "device");
}

}  // namespace lowbit_capi
