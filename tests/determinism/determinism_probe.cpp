// Prints an FNV-1a hash of everything a few optimizer and quantize runs
// produce (weights, states, codes, scales). CTest runs it under different
// LOWBIT_NUM_THREADS values and requires the same hash: results must not
// depend on how the work is split over threads.
#include <lowbit/lowbit.hpp>

#include <cstdio>
#include <random>
#include <vector>

using namespace lowbit;
using namespace lowbit::optim;

namespace {

uint64_t h = 1469598103934665603ull;
void mix(const void* p, size_t bytes) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
}
template <class T>
void mix(const std::vector<T>& v) {
  mix(v.data(), v.size() * sizeof(T));
}

std::vector<float> normal(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 0.1f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  return x;
}

}  // namespace

int main() {
  const int64_t n = 300001;  // many tiles and nested blocks
  // quantize / dequantize
  std::vector<float> x = normal(size_t(n), 1);
  quantized_tensor q(make_layout(format::nf4, n, 64, true));
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  mix(q.codes);
  mix(q.absmax_codes);
  mix(q.nested_absmax);
  mix(&q.nested_offset, 4);
  // optimizer steps on quantized and dense weights
  optimizer_options o;
  o.seed = 7;
  o.max_grad_norm = 10.0f;
  optimizer<lion, states::int8, weights::quantized<format::nf4>> a(lion::hparams{}, o);
  a.add_param(q.view());
  std::vector<bf16> wb(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) wb[size_t(i)] = to_bf16(x[size_t(i)]);
  optimizer<adamw, states::int4, weights::bf16> b(adamw::hparams{}, o);
  b.add_param(make_flat_view(wb.data(), n));
  for (int t = 0; t < 3; ++t) {
    std::vector<float> g = normal(size_t(n), unsigned(10 + t));
    const step_report ra = a.step({make_flat_view(g.data(), n)});
    const step_report rb = b.step({make_flat_view(g.data(), n)});
    mix(&ra.grad_norm, sizeof(double));
    mix(&rb.grad_norm, sizeof(double));
  }
  mix(q.codes);
  mix(q.absmax_codes);
  mix(q.nested_absmax);
  mix(wb);
  for (const storage_view* s : {&a.param(0).state1, &b.param(0).state1, &b.param(0).state2}) {
    mix(s->q.codes, size_t(s->q.layout.code_bytes()));
    mix(s->q.absmax, size_t(s->q.layout.n_blocks()) * 4);
  }
  std::printf("%016llx\n", static_cast<unsigned long long>(h));
  return 0;
}
