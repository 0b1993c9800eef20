// tests/fuzz/make_seeds.cpp
// Writes the fuzzer's seed corpus into a directory: small valid safetensors
// files (every dtype, metadata, empty and scalar tensors, unaligned tensors,
// NF4 / FP4 / int8 quantized weights with and without nested scales), each
// under libFuzzer's -max_len of 4096 bytes. Generated at run time so the
// repository holds no binary files and the seeds track the writer.
#include <lowbit/cpu/quantize.hpp>
#include <lowbit/io/bnb_quant_state.hpp>
#include <lowbit/io/safetensors.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  int count = 0;
  auto save = [&](const std::string& name, const lowbit::safetensors_writer& w) {
    const std::vector<uint8_t> bytes = w.to_bytes();
    if (bytes.size() > 4096) {
      std::fprintf(stderr, "seed %s is %zu bytes, over -max_len\n", name.c_str(), bytes.size());
      std::exit(1);
    }
    w.write(dir + "/seed-" + name + ".safetensors");
    ++count;
  };
  try {
    std::vector<uint8_t> raw(256);
    for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint8_t(i * 37 + 11);

    save("empty", lowbit::safetensors_writer{});
    {
      lowbit::safetensors_writer w;
      const lowbit::dtype all[] = {lowbit::dtype::f64, lowbit::dtype::f32, lowbit::dtype::f16, lowbit::dtype::bf16,
                                   lowbit::dtype::i64, lowbit::dtype::i32, lowbit::dtype::i16, lowbit::dtype::i8,
                                   lowbit::dtype::u8,  lowbit::dtype::boolean};
      int k = 0;
      for (lowbit::dtype t : all) w.add("t" + std::to_string(k++), t, {2, 3}, raw.data());
      w.set_metadata("format", "pt");
      save("dtypes", w);
    }
    {
      lowbit::safetensors_writer w;
      w.add("odd", lowbit::dtype::u8, {3}, raw.data());
      w.add("unaligned", lowbit::dtype::f32, {4}, raw.data());
      w.add("scalar", lowbit::dtype::f16, {}, raw.data());
      w.add("empty", lowbit::dtype::bf16, {0, 7}, nullptr);
      w.add("rank8", lowbit::dtype::i8, {1, 1, 1, 1, 1, 1, 2, 2}, raw.data());
      save("shapes", w);
    }
    std::vector<float> x(300);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i) * 0.7) * (1.0 + double(i % 13)));
    struct q {
      lowbit::format f;
      int64_t n;
      int bs;
      bool nested;
    };
    for (const q& c : {q{lowbit::format::nf4, 300, 64, true}, q{lowbit::format::nf4, 75, 32, false},
                       q{lowbit::format::fp4, 131, 64, false}, q{lowbit::format::int4, 64, 32, true},
                       q{lowbit::format::int8, 100, 32, false}}) {
      lowbit::quantized_tensor t(lowbit::make_layout(c.f, c.n, c.bs, c.nested), {c.n});
      lowbit::cpu::quantize(lowbit::make_flat_view(x.data(), c.n), t.view());
      lowbit::safetensors_writer w;
      w.add("bias", lowbit::dtype::f32, {3}, x.data());
      lowbit::save_quantized(w, "layer.weight", t, lowbit::dtype::bf16);
      save(std::string(lowbit::format_name(c.f)) + "-" + std::to_string(c.n) + (c.nested ? "-dq" : ""), w);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_make_seeds: %s\n", e.what());
    return 1;
  }
  std::printf("fuzz_make_seeds: wrote %d seeds to %s\n", count, dir.c_str());
  return 0;
}
