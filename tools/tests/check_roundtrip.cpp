// tools/tests/check_roundtrip.cpp
// Test helper for the tool's end-to-end CTest: `lowbit_tool_check ORIG QUANT
// DEQ` verifies that DEQ (from `lowbit dequantize QUANT DEQ`) has exactly the
// tensors of ORIG (the input of `lowbit quantize ORIG QUANT`), that every
// tensor QUANT did not quantize came back bit for bit, and that every
// quantized one is within the format's error bound element by element:
//   |w - d| <= halfgap(format) * M_b + |M_b - s_b| + |d| * 2^-8 + 1e-6 * M_b
// where M_b is block b's true absmax, s_b the scale stored in QUANT (decoded
// through the nested map when double-quantized), halfgap the largest half
// distance between neighbouring codebook values, and 2^-8 the bf16/fp16
// rounding of the output. It also checks the stored scales themselves: s_b ==
// M_b exactly without nesting, |s_b - M_b| <= 0.0071 * nested_absmax with it
// (half the widest gap of the signed dynamic map). Exit 0 on success, 1 with
// the first violations on stderr otherwise.
#include <lowbit/io/io.hpp>
#include <lowbit/lowbit.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::vector<float> floats(const lowbit::safetensors_tensor& t) {
  std::vector<float> out(std::size_t(t.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.type == lowbit::dtype::f32) {
      std::memcpy(&out[i], t.data + 4 * i, 4);
    } else {
      uint16_t b;
      std::memcpy(&b, t.data + 2 * i, 2);
      out[i] = t.type == lowbit::dtype::bf16 ? lowbit::to_float(lowbit::bf16{b}) : lowbit::to_float(lowbit::fp16{b});
    }
  }
  return out;
}

// Largest half gap between neighbouring normalized code values.
double half_gap(lowbit::format f) {
  std::vector<float> v = lowbit::stored_quant_map(f);
  std::sort(v.begin(), v.end());
  double g = 0.0;
  for (std::size_t i = 1; i < v.size(); ++i) g = std::max(g, double(v[i]) - double(v[i - 1]));
  return g / 2.0;
}

int failures = 0;
void fail(const std::string& msg) {
  if (++failures <= 20) std::fprintf(stderr, "check: %s\n", msg.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: lowbit_tool_check ORIG QUANT DEQ\n");
    return 2;
  }
  try {
    const auto orig = lowbit::safetensors_reader::open(argv[1]);
    const auto quant = lowbit::safetensors_reader::open(argv[2]);
    const auto deq = lowbit::safetensors_reader::open(argv[3]);
    const auto groups = lowbit::find_quantized_weights(quant);
    if (deq.tensors().size() != orig.tensors().size())
      fail("tensor count " + std::to_string(deq.tensors().size()) + " != " + std::to_string(orig.tensors().size()));
    std::size_t n_quant = 0, n_exact = 0;
    double worst = 0.0;
    for (const auto& t : orig.tensors()) {
      const auto* d = deq.find(t.name);
      if (!d) {
        fail("'" + t.name + "' missing from the dequantized file");
        continue;
      }
      if (d->shape != t.shape) fail("'" + t.name + "' shape changed");
      const lowbit::quantized_weight_info* g = nullptr;
      for (const auto& x : groups)
        if (x.name == t.name) g = &x;
      if (!g) {
        if (d->type != t.type || d->nbytes != t.nbytes || std::memcmp(d->data, t.data, t.nbytes) != 0)
          fail("'" + t.name + "' was not quantized but did not come back bit for bit");
        ++n_exact;
        continue;
      }
      ++n_quant;
      if (d->type != t.type) fail("'" + t.name + "' came back as " + d->dtype_string + ", not " + t.dtype_string);
      lowbit::loaded_quantized lq = lowbit::load_quantized(quant, t.name);
      const lowbit::quantized_view qv = lq.tensor.view();
      const auto& l = lq.tensor.layout;
      const std::vector<float> w = floats(t), y = floats(*d);
      const double hg = half_gap(l.fmt);
      for (int64_t b = 0; b < l.n_blocks(); ++b) {
        const int64_t s = b * l.block_size, e = std::min<int64_t>(l.n, s + l.block_size);
        double m = 0.0;
        for (int64_t i = s; i < e; ++i) m = std::max(m, std::fabs(double(w[std::size_t(i)])));
        const double sb = lowbit::cpu::block_scale(qv, b);
        if (!l.nested && sb != m) fail("'" + t.name + "' block " + std::to_string(b) + ": stored absmax != block absmax");
        if (l.nested && std::fabs(sb - m) > 0.0071 * double(lq.tensor.nested_absmax[std::size_t(b / 256)]) + 1e-7 * m)
          fail("'" + t.name + "' block " + std::to_string(b) + ": nested scale too far from the block absmax");
        for (int64_t i = s; i < e; ++i) {
          const double wi = w[std::size_t(i)], di = y[std::size_t(i)];
          const double bound = hg * m + std::fabs(m - sb) + std::fabs(di) * (1.0 / 256.0) + 1e-6 * m;
          const double err = std::fabs(wi - di);
          if (m > 0) worst = std::max(worst, err / m);
          if (!(err <= bound))
            fail("'" + t.name + "' element " + std::to_string(i) + ": |" + std::to_string(wi) + " - " +
                 std::to_string(di) + "| exceeds the bound " + std::to_string(bound));
        }
      }
    }
    if (n_quant == 0) fail("no quantized weights found in " + std::string(argv[2]));
    std::printf("check: %zu quantized weights checked against the bound (worst |w-d|/absmax %.4f), "
                "%zu tensors checked for exactness, %d failures\n",
                n_quant, worst, n_exact, failures);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "check: %s\n", e.what());
    return 1;
  }
  return failures ? 1 : 0;
}
