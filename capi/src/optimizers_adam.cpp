// capi/src/optimizers_adam.cpp
// The adam compositions of liblowbit_c (erased_optimizer.hpp): every state
// policy over the dense weight policies. One translation unit per rule so
// that they compile in parallel.
#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_adam_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::adam, lowbit::optim::memory::host>(t, "adam", "host");
}

}  // namespace lowbit_capi
