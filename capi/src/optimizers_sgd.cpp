// capi/src/optimizers_sgd.cpp
// The sgd compositions of liblowbit_c (erased_optimizer.hpp): every state
// policy over the dense weight policies. One translation unit per rule so
// that they compile in parallel.
#include "erased_optimizer.hpp"

namespace lowbit_capi {

void add_sgd_compositions(composition_table& t) {
  add_dense_compositions<lowbit::optim::sgd_momentum, lowbit::optim::memory::host>(t, "sgd", "host");
}

}  // namespace lowbit_capi
