// capi/src/optimizers_adamw.cpp
// The adamw compositions of liblowbit_c (erased_optimizer.hpp): every state
// policy over the dense weight policies, and 8-bit states over quantized
// weights. One translation unit per rule so that they compile in parallel.
#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_adamw_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::adamw, lowbit::optim::memory::host>(t, "adamw", "host");
  add_quantized_compositions<lowbit::optim::adamw, lowbit::optim::memory::host>(t, "adamw", "host");
}

}  // namespace lowbit_capi
