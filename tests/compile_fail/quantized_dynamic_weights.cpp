// Must NOT compile: weights cannot use a signed dynamic map, whose table
// stops short of -1 (checked by CTest, which expects the static_assert's
// message in the compiler output).
#include <lowbit/optim/optimizer.hpp>

using namespace lowbit::optim;
optimizer<lion, states::int8, weights::quantized<lowbit::format::dynamic8>> bad;
