// capi/src/optimizers_lion.cpp
// The lion compositions of liblowbit_c (erased_optimizer.hpp): every state
// policy over the dense weight policies, and 8-bit states over quantized
// weights. One translation unit per rule so that they compile in parallel.
#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_lion_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::lion, lowbit::optim::memory::host>(t, "lion", "host");
  add_quantized_compositions<lowbit::optim::lion, lowbit::optim::memory::host>(t, "lion", "host");
}

}  // namespace lowbit_capi
