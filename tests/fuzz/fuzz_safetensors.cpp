// tests/fuzz/fuzz_safetensors.cpp
// libFuzzer target for the safetensors reader and the quantized-weight loader
// on top of it. Each input is parsed from memory as a whole file
// (safetensors_reader::parse); every byte of every tensor it accepts is read,
// so AddressSanitizer catches any pointer the validation let out of bounds;
// then every quantized weight found is loaded and dequantized. Rejections
// must be lowbit::error; any other exception, crash, leak or undefined
// behaviour is a finding.
#include <lowbit/cpu/quantize.hpp>
#include <lowbit/io/bnb_quant_state.hpp>
#include <lowbit/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t sum = 0;
  try {
    const lowbit::safetensors_reader r = lowbit::safetensors_reader::parse(data, size, "fuzz input");
    for (const lowbit::safetensors_tensor& t : r.tensors()) {
      for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
      sum += uint64_t(t.numel()) + t.shape_string().size();
      if (t.shape.size() <= size_t(lowbit::max_rank) && t.is_aligned()) sum += uint64_t(t.view().numel());
    }
    for (const auto& kv : r.metadata()) sum += kv.first.size() + kv.second.size();
    for (const lowbit::quantized_weight_info& info : lowbit::find_quantized_weights(r)) {
      try {
        lowbit::loaded_quantized q = lowbit::load_quantized(r, info.name);
        const int64_t n = q.tensor.layout.n;
        std::vector<float> out(static_cast<size_t>(n));
        lowbit::cpu::dequantize(q.tensor.view(), lowbit::make_flat_view(out.data(), n));
        for (float v : out) sum += uint64_t(v != v);
      } catch (const lowbit::error&) {
      }
    }
  } catch (const lowbit::error&) {
  }
  volatile uint64_t sink = sum;
  (void)sink;
  return 0;
}
