// Quantizes and dequantizes a small vector through the installed headers and
// checks the NF4 reconstruction bound (half the widest NF4 gap times absmax).
#include <lowbit/lowbit.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> x(300), y(300);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i));
  lowbit::quantized_tensor q(lowbit::make_layout(lowbit::format::nf4, int64_t(x.size()), 64, true));
  lowbit::cpu::quantize(lowbit::make_flat_view(x.data(), int64_t(x.size())), q.view());
  lowbit::cpu::dequantize(q.view(), lowbit::make_flat_view(y.data(), int64_t(y.size())));
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::fmax(worst, std::fabs(double(x[i]) - y[i]));
  std::printf("consumer: max abs error %.4f\n", worst);
  return worst < 0.17 ? 0 : 1;  // NF4 widest half-gap 0.1519 * absmax (<= 1) plus scale error
}
