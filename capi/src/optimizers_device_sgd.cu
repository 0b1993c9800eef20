// capi/src/optimizers_device_sgd.cu
// The sgd compositions of liblowbit_c that step on the GPU (memory::device:
// states in device memory, lowbit's fused CUDA step), the same set as the
// host's (optimizers_sgd.cpp). CUDA builds only.
#include <lowbit/optim/cuda_memory.cuh>

#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_device_sgd_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::sgd_momentum, lowbit::optim::memory::device>(t, "sgd", "device");
}

}  // namespace lowbit_capi
