// Must NOT compile: a type that is not a state policy.
#include <lowbit/optim/optimizer.hpp>

using namespace lowbit::optim;
optimizer<adamw, int> bad;
