// capi/src/optimizers_device_adam.cu
// The adam compositions of liblowbit_c that step on the GPU (memory::device:
// states in device memory, lowbit's fused CUDA step), the same set as the
// host's (optimizers_adam.cpp). CUDA builds only.
#include <lowbit/optim/cuda_memory.cuh>

#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_device_adam_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::adam, lowbit::optim::memory::device>(t, "adam", "device");
}

}  // namespace lowbit_capi
