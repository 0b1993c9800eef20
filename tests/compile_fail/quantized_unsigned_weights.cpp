// Must NOT compile: weights cannot use an unsigned format (checked by CTest,
// which expects the static_assert's message in the compiler output).
#include <lowbit/optim/optimizer.hpp>

using namespace lowbit::optim;
optimizer<adamw, states::int8, weights::quantized<lowbit::format::udynamic8>> bad;
